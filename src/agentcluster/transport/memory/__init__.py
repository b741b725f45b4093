"""The in-process ``memory`` backend: every node in one process, NATS semantics, faults.

``MemoryTransport`` is the shared substrate (the "server"); ``await transport.connect(name)``
gives each logical node a ``MemoryConnection`` implementing ``transport.interface.Connection``.
``transport.faults`` (a ``Faults``) injects the failures measured on a real nats-server,
reproducibly for a given seed. Module map: ``hub`` the substrate, ``connection`` a node's
link, ``router`` and ``subscription`` core messages, ``delayline`` order-keeping delays,
``store``/``kv``/``watch``/``streamdata``/``stream``/``consumer``/``objects`` the store,
``admin`` creating and deleting stores, ``gate`` where store faults act, ``faults`` the
switchboard.
"""

from typing import TYPE_CHECKING

from agentcluster.transport.memory.connection import MemoryConnection
from agentcluster.transport.memory.faults import FaultRecord, Faults
from agentcluster.transport.memory.hub import MemoryTransport

__all__ = ["FaultRecord", "Faults", "MemoryConnection", "MemoryTransport"]

if TYPE_CHECKING:
    from agentcluster.transport import interface
    from agentcluster.transport.memory.consumer import MemoryConsumer, MemoryDelivery
    from agentcluster.transport.memory.kv import MemoryKeyValue
    from agentcluster.transport.memory.objects import MemoryObjectStore
    from agentcluster.transport.memory.stream import MemoryStream
    from agentcluster.transport.memory.subscription import MemorySubscription
    from agentcluster.transport.memory.watch import MemoryWatcher

    def _implements(
        conn: MemoryConnection,
        sub: MemorySubscription,
        kv: MemoryKeyValue,
        watcher: MemoryWatcher,
        stream: MemoryStream,
        consumer: MemoryConsumer,
        delivery: MemoryDelivery,
        objects: MemoryObjectStore,
    ) -> tuple[
        interface.Connection,
        interface.Subscription,
        interface.KeyValue,
        interface.Watcher,
        interface.Stream,
        interface.Consumer,
        interface.Delivery,
        interface.ObjectStore,
    ]:
        """Never called: mypy checks here that each class implements its protocol."""
        return conn, sub, kv, watcher, stream, consumer, delivery, objects
