"""Real ``nats-server`` processes for tests, multi-process cluster tests and benchmarks.

``NatsServer`` runs one server with JetStream on ``127.0.0.1`` only; ``NatsCluster`` runs
N of them routed to each other as one JetStream cluster. Each server gets a directory that
holds its config file (``nats.conf``), its log (``nats-server.log``, appended across
restarts, quoted when a start fails) and its JetStream store (``jetstream/``), so a server
that is killed and started again keeps its data and rejoins with the same ports.

Readiness is polled against a deadline — the client port accepts, ``/healthz`` answers ok
and, for a cluster, every server sees the same JetStream meta leader — never a fixed sleep.
Every process is signalled by its PID; those still running when the interpreter exits
are killed by an ``atexit`` hook, but callers stop them explicitly (``stop`` or ``with``).

No pytest here: the fixtures in ``tests/conftest.py`` wrap these classes.

::

    with NatsCluster(tmp_dir, size=3) as cluster:
        conn = await connect(NatsConfig(servers=cluster.urls))
        leader = cluster.stream_leader("KV_nodes")
        cluster.kill(cluster.index_of(leader))
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agentcluster.clock import SystemClock
from agentcluster.testing.ports import LOOPBACK, free_port, free_ports
from agentcluster.testing.processes import ProcessRegistry

__all__ = [
    "INSTALL_HINT",
    "NatsCluster",
    "NatsServer",
    "NatsServerError",
    "NatsServerMissing",
    "find_nats_server",
    "free_port",
    "free_ports",
    "running_pids",
]

INSTALL_HINT = (
    "nats-server is not installed: `apt-get install -y nats-server` "
    "(or put a nats-server binary on PATH)"
)

_SEARCH_DIRS = ("/usr/sbin", "/usr/local/bin", "/usr/bin")
_POLL = 0.02
_LOG_NAME = "nats-server.log"
_CONF_NAME = "nats.conf"
_PORT_RETRIES = 3

_clock = SystemClock()


class NatsServerMissing(RuntimeError):
    """No ``nats-server`` binary was found; the message says how to install one."""

    def __init__(self, message: str = INSTALL_HINT) -> None:
        super().__init__(message)


class NatsServerError(RuntimeError):
    """A server did not start, or did not become ready in time; carries its log tail."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        text = message if not log_tail else f"{message}\n--- server log (tail) ---\n{log_tail}"
        super().__init__(text)
        self.log_tail = log_tail


def find_nats_server() -> str | None:
    """The ``nats-server`` binary: on ``PATH`` first, then in the usual system directories."""
    found = shutil.which("nats-server")
    if found:
        return found
    for directory in _SEARCH_DIRS:
        candidate = os.path.join(directory, "nats-server")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _require_binary(binary: str | None) -> str:
    found = binary or find_nats_server()
    if found is None:
        raise NatsServerMissing()
    return found


# --- the atexit safety net ---------------------------------------------------------------

_servers = ProcessRegistry()
_track = _servers.track
_untrack = _servers.untrack


def running_pids() -> list[int]:
    """PIDs of the servers this process started that have not been stopped yet."""
    return _servers.running_pids()


# --- HTTP monitoring (loopback only, never through a proxy) ------------------------------

_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get_json(port: int, path: str, timeout: float = 1.0) -> tuple[int, Any]:
    """GET ``http://127.0.0.1:<port><path>``; (status, decoded JSON or None)."""
    url = f"http://{LOOPBACK}:{port}{path}"
    try:
        with _http.open(url, timeout=timeout) as resp:
            status: int = resp.status
            body = resp.read()
    except urllib.error.HTTPError as exc:
        status = exc.code
        body = exc.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def _port_accepts(port: int, timeout: float = 0.25) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def _quote(value: str) -> str:
    return json.dumps(value)


# --- one server -------------------------------------------------------------------------


class NatsServer:
    """One ``nats-server`` with JetStream, listening on ``127.0.0.1`` only.

    ``directory`` holds the config, the log and the JetStream store; when omitted a
    temporary one is made and removed on ``__exit__``. Ports default to free ones, chosen
    once: ``restart`` reuses them. Auth is optional: ``user``/``password`` or ``token``
    (``url`` carries no credentials; ``url_with_credentials`` does). With ``cluster_name``
    and ``routes`` the server is a cluster member (``NatsCluster`` builds those).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        name: str = "nats-0",
        binary: str | None = None,
        port: int | None = None,
        monitor_port: int | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        jetstream: bool = True,
        extra_config: str = "",
        startup_timeout: float = 20.0,
    ) -> None:
        if token is not None and (user is not None or password is not None):
            raise ValueError("use either user/password or token, not both")
        if (user is None) != (password is None):
            raise ValueError("user and password go together")
        self.binary = _require_binary(binary)
        self._own_dir = directory is None
        self.directory = Path(
            tempfile.mkdtemp(prefix="nats-server-") if directory is None else directory
        )
        self.name = name
        self._auto_ports = port is None and monitor_port is None and cluster_port is None
        self.port = port if port is not None else free_port()
        self.monitor_port = monitor_port if monitor_port is not None else free_port()
        self.user = user
        self.password = password
        self.token = token
        self.cluster_name = cluster_name
        if cluster_name is not None and cluster_port is None:
            cluster_port = free_port()
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.jetstream = jetstream
        self.extra_config = extra_config
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._started_once = False
        self._expected_down = True

    # --- addresses and files ---

    @property
    def url(self) -> str:
        """The client URL, without credentials."""
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def url_with_credentials(self) -> str:
        if self.token is not None:
            return f"nats://{self.token}@{LOOPBACK}:{self.port}"
        if self.user is not None:
            return f"nats://{self.user}:{self.password}@{LOOPBACK}:{self.port}"
        return self.url

    @property
    def monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self.monitor_port}"

    @property
    def route_url(self) -> str | None:
        """The URL other cluster members route to, or ``None`` outside a cluster."""
        if self.cluster_port is None:
            return None
        return f"nats-route://{LOOPBACK}:{self.cluster_port}"

    @property
    def store_dir(self) -> Path:
        """Where JetStream keeps its data (nats-server appends ``jetstream/``)."""
        return self.directory / "jetstream"

    @property
    def config_path(self) -> Path:
        return self.directory / _CONF_NAME

    @property
    def log_path(self) -> Path:
        return self.directory / _LOG_NAME

    # --- process state ---

    @property
    def pid(self) -> int | None:
        """The PID of the running process, or ``None`` when not running."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None
        return proc.pid

    @property
    def is_running(self) -> bool:
        return self.pid is not None

    @property
    def returncode(self) -> int | None:
        """The exit status of the last process once it has exited."""
        return None if self._proc is None else self._proc.poll()

    def config_text(self) -> str:
        lines = [
            f"server_name: {_quote(self.name)}",
            f"listen: {_quote(f'{LOOPBACK}:{self.port}')}",
            f"http: {_quote(f'{LOOPBACK}:{self.monitor_port}')}",
            "logtime: true",
        ]
        if self.jetstream:
            lines += ["jetstream {", f"  store_dir: {_quote(str(self.directory))}", "}"]
        if self.token is not None:
            lines += ["authorization {", f"  token: {_quote(self.token)}", "}"]
        elif self.user is not None and self.password is not None:
            lines += [
                "authorization {",
                f"  user: {_quote(self.user)}",
                f"  password: {_quote(self.password)}",
                "}",
            ]
        if self.cluster_name is not None:
            routes = ", ".join(_quote(r) for r in self.routes)
            lines += [
                "cluster {",
                f"  name: {_quote(self.cluster_name)}",
                f"  listen: {_quote(f'{LOOPBACK}:{self.cluster_port}')}",
                f"  routes: [{routes}]",
                "}",
            ]
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    # --- lifecycle ---

    def spawn(self) -> None:
        """Write the config and start the process; return at once (see ``wait_ready``)."""
        if self.is_running:
            raise NatsServerError(f"{self.name} is already running (pid {self.pid})")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self._proc = proc
        self._started_once = True
        self._expected_down = False
        _track(proc)

    def start(self, *, wait: bool = True, timeout: float | None = None) -> Self:
        """Start the server and (by default) wait until it is ready.

        On the first start with ports chosen here, a port taken meanwhile by another
        process is replaced by a fresh one and the start retried.
        """
        first = not self._started_once
        for attempt in range(_PORT_RETRIES):
            self.spawn()
            if not wait:
                return self
            try:
                self.wait_ready(timeout)
                return self
            except NatsServerError:
                port_clash = self._port_clash()
                self._reap()
                if not (first and self._auto_ports and port_clash) or attempt == _PORT_RETRIES - 1:
                    raise
                self.reassign_ports()
        raise AssertionError("unreachable")  # pragma: no cover

    def reassign_ports(self) -> None:
        """Pick fresh ports (only before the first successful start makes sense)."""
        self.port, self.monitor_port = free_ports(2)
        if self.cluster_name is not None:
            self.cluster_port = free_port()

    def _port_clash(self) -> bool:
        return "address already in use" in self.log_tail(since_start=True).lower()

    def wait_ready(self, timeout: float | None = None, *, meta_leader: bool = False) -> None:
        """Poll until the client port accepts and ``/healthz`` answers ok.

        With ``meta_leader`` also until ``/jsz`` names a JetStream meta leader. Raises
        ``NatsServerError`` with the log tail if the process exits or the deadline passes.
        """
        limit = self.startup_timeout if timeout is None else timeout
        deadline = _clock.monotonic() + limit
        last = "not polled yet"
        while True:
            proc = self._proc
            if proc is None:
                raise NatsServerError(f"{self.name} was never started")
            code = proc.poll()
            if code is not None:
                raise NatsServerError(
                    f"{self.name} exited with status {code} while starting",
                    self.log_tail(since_start=True),
                )
            last = self._readiness(meta_leader)
            if not last:
                return
            if _clock.monotonic() >= deadline:
                raise NatsServerError(
                    f"{self.name} not ready within {limit}s ({last})",
                    self.log_tail(since_start=True),
                )
            time.sleep(_POLL)

    def _readiness(self, meta_leader: bool) -> str:
        """What is still missing before the server is ready; ``""`` when ready."""
        if not _port_accepts(self.port):
            return f"client port {self.port} not accepting"
        try:
            status, body = _get_json(self.monitor_port, "/healthz")
        except OSError as exc:
            return f"monitor port {self.monitor_port}: {exc}"
        if status != 200:
            return f"/healthz {status}: {body}"
        if meta_leader and self.jetstream and not self.meta_leader():
            return "no JetStream meta leader"
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, wait up to ``timeout``, then SIGKILL. Idempotent."""
        self._expected_down = True
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    proc.send_signal(signal.SIGKILL)
        self._reap()

    def kill(self) -> None:
        """SIGKILL by PID (a crash: no shutdown, no flush) and reap. Idempotent."""
        self._expected_down = True
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        _untrack(proc)

    def restart(
        self, *, kill: bool = False, wait: bool = True, timeout: float | None = None
    ) -> Self:
        """Stop (SIGTERM, or SIGKILL with ``kill``) and start again: same ports, same store."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.spawn()
        if wait:
            try:
                self.wait_ready(timeout)
            except NatsServerError:
                self._reap()
                raise
        return self

    # --- monitoring ---

    def monitor(self, path: str, timeout: float = 1.0) -> Any:
        """GET a monitoring endpoint (``/varz``, ``/jsz?streams=true`` …) as decoded JSON."""
        status, body = _get_json(self.monitor_port, path, timeout)
        if status != 200:
            raise NatsServerError(f"{self.name} {path}: HTTP {status}: {body}")
        return body

    def healthy(self) -> bool:
        """``/healthz`` answers ok right now."""
        try:
            status, _ = _get_json(self.monitor_port, "/healthz")
        except OSError:
            return False
        return status == 200

    def jsz(self, query: str = "") -> dict[str, Any]:
        path = "/jsz" + (f"?{query}" if query else "")
        body = self.monitor(path)
        return body if isinstance(body, dict) else {}

    def meta_leader(self) -> str | None:
        """The JetStream meta leader this server sees (its own name when standalone)."""
        try:
            info = self.jsz()
        except (OSError, NatsServerError):
            return None
        meta = info.get("meta_cluster")
        if meta is None:
            # Not clustered: a standalone JetStream server is its own meta leader.
            return self.name if info.get("config") else None
        leader = meta.get("leader")
        return str(leader) if leader else None

    def meta_cluster_size(self) -> int:
        """How many servers this server's JetStream meta group counts (0 if unknown)."""
        try:
            meta = self.jsz().get("meta_cluster") or {}
        except (OSError, NatsServerError):
            return 0
        size = meta.get("cluster_size")
        if isinstance(size, int):
            return size
        return 1 + len(meta.get("replicas") or [])

    def stream_info(self, stream: str) -> dict[str, Any] | None:
        """This server's view of ``stream`` from ``/jsz?accounts=true&streams=true``."""
        info = self.jsz("accounts=true&streams=true")
        for account in info.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream:
                    return dict(detail)
        return None

    def log_tail(self, max_bytes: int = 6000, *, since_start: bool = False) -> str:
        """The end of the server's log (only this run's part with ``since_start``)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                floor = self._log_offset if since_start else 0
                fh.seek(max(floor, size - max_bytes))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # --- context manager ---

    def __enter__(self) -> Self:
        if not self.is_running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running else "stopped"
        return f"<NatsServer {self.name} {self.url} {state}>"


# --- a cluster --------------------------------------------------------------------------


class NatsCluster:
    """``size`` JetStream servers routed to each other as one cluster on ``127.0.0.1``.

    Server ``i`` is named ``<prefix><i>`` and lives in ``<directory>/<name>``. ``start``
    returns once every server is healthy and all agree on a JetStream meta leader.
    ``kill(i)`` / ``stop_server(i)`` take one down; ``restart(i)`` brings it back with its
    ports and store, so replicated data it held survives.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        size: int = 3,
        *,
        name: str | None = None,
        server_prefix: str = "n",
        binary: str | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one server")
        self.binary = _require_binary(binary)
        self._own_dir = directory is None
        self.directory = Path(
            tempfile.mkdtemp(prefix="nats-cluster-") if directory is None else directory
        )
        self.name = name or f"agentcluster-test-{secrets.token_hex(4)}"
        self.size = size
        self.startup_timeout = startup_timeout
        self.servers: list[NatsServer] = [
            NatsServer(
                self.directory / f"{server_prefix}{i}",
                name=f"{server_prefix}{i}",
                binary=self.binary,
                port=0,  # placeholders: real ports come from _assign_ports
                monitor_port=0,
                cluster_port=0,
                user=user,
                password=password,
                token=token,
                cluster_name=self.name,
                startup_timeout=startup_timeout,
            )
            for i in range(size)
        ]
        self._assign_ports()
        self._started_once = False

    def _assign_ports(self) -> None:
        ports = free_ports(3 * self.size)
        for i, server in enumerate(self.servers):
            server.port, server.monitor_port, server.cluster_port = ports[3 * i : 3 * i + 3]
        for server in self.servers:
            server.routes = [
                route
                for other in self.servers
                if other is not server and (route := other.route_url) is not None
            ]

    # --- addresses ---

    @property
    def urls(self) -> list[str]:
        """Every server's client URL (no credentials), server 0 first."""
        return [s.url for s in self.servers]

    @property
    def url(self) -> str:
        """All client URLs joined by commas, as ``nats-server``/``nats`` CLIs take them."""
        return ",".join(self.urls)

    def __getitem__(self, index: int) -> NatsServer:
        return self.servers[index]

    def __iter__(self) -> Iterator[NatsServer]:
        return iter(self.servers)

    def __len__(self) -> int:
        return self.size

    def index_of(self, server_name: str) -> int:
        for i, server in enumerate(self.servers):
            if server.name == server_name:
                return i
        raise KeyError(server_name)

    @property
    def running(self) -> list[NatsServer]:
        return [s for s in self.servers if s.is_running]

    # --- lifecycle ---

    def start(self, timeout: float | None = None) -> Self:
        """Start every server; return once all are healthy and agree on a meta leader."""
        first = not self._started_once
        for attempt in range(_PORT_RETRIES):
            for server in self.servers:
                if not server.is_running:
                    server.spawn()
            self._started_once = True
            try:
                self.wait_ready(timeout, full_size=True)
                return self
            except NatsServerError:
                clash = any(s._port_clash() for s in self.servers)
                self.stop()
                if not (first and clash) or attempt == _PORT_RETRIES - 1:
                    raise
                self._assign_ports()
        raise AssertionError("unreachable")  # pragma: no cover

    def wait_ready(self, timeout: float | None = None, *, full_size: bool = False) -> None:
        """Until every running server is healthy (``/healthz``: JetStream current with the
        meta leader) and all name the same meta leader. Servers that are down are not
        waited for. With ``full_size`` (the first start) also until every server's meta
        group counts all ``size`` servers, i.e. the cluster has formed."""
        limit = self.startup_timeout if timeout is None else timeout
        deadline = _clock.monotonic() + limit
        while True:
            missing = self._missing(full_size)
            if not missing:
                return
            if _clock.monotonic() >= deadline:
                tails = "\n".join(
                    f"=== {s.name} ===\n{s.log_tail(3000, since_start=True)}" for s in self.servers
                )
                raise NatsServerError(
                    f"cluster {self.name} not ready within {limit}s: {missing}\n"
                    f"meta views: {self.meta_views()}",
                    tails,
                )
            time.sleep(_POLL)

    def meta_views(self) -> dict[str, Any]:
        """Each running server's ``/jsz`` ``meta_cluster`` block and health, for diagnostics."""
        views: dict[str, Any] = {}
        for server in self.running:
            try:
                meta = server.jsz().get("meta_cluster")
            except (OSError, NatsServerError) as exc:
                meta = repr(exc)
            views[server.name] = {"meta": meta, "healthy": server.healthy()}
        return views

    def _missing(self, full_size: bool) -> str:
        leaders: set[str | None] = set()
        running = 0
        for server in self.servers:
            proc = server._proc
            if proc is None:
                continue
            code = proc.poll()
            if code is not None:
                if not server._expected_down:
                    raise NatsServerError(
                        f"{server.name} exited with status {code}",
                        server.log_tail(since_start=True),
                    )
                continue
            running += 1
            why = server._readiness(meta_leader=False)
            if why:
                return f"{server.name}: {why}"
            if full_size and server.meta_cluster_size() < self.size:
                return f"{server.name}: meta group smaller than {self.size}"
            leaders.add(server.meta_leader())
        if running == 0:
            return "no server running"
        if None in leaders:
            return "no JetStream meta leader yet"
        if len(leaders) > 1:
            return f"servers disagree on the meta leader: {sorted(str(x) for x in leaders)}"
        return ""

    def stop(self) -> None:
        """Stop every server (SIGTERM, then SIGKILL after a timeout). Idempotent."""
        for server in self.servers:
            server._expected_down = True
            if server.is_running and server._proc is not None:
                with contextlib.suppress(OSError):
                    server._proc.send_signal(signal.SIGTERM)
        for server in self.servers:
            server.stop()

    def kill(self, index: int) -> None:
        """SIGKILL server ``index`` (a crash)."""
        self.servers[index].kill()

    def stop_server(self, index: int) -> None:
        """SIGTERM server ``index`` (a clean shutdown)."""
        self.servers[index].stop()

    def restart(self, index: int, *, wait: bool = True, timeout: float | None = None) -> NatsServer:
        """Start server ``index`` again (stopping it first if running): same ports, store.

        With ``wait`` returns once it is healthy, i.e. caught up with the meta leader.
        """
        server = self.servers[index]
        server.stop()
        server.spawn()
        if wait:
            try:
                server.wait_ready(timeout if timeout is not None else self.startup_timeout)
            except NatsServerError:
                server._reap()
                raise
        return server

    # --- JetStream views ---

    def meta_leader(self) -> str | None:
        """The meta leader as seen by the first running server that knows one."""
        for server in self.running:
            leader = server.meta_leader()
            if leader:
                return leader
        return None

    def stream_leader(self, stream: str) -> str | None:
        """The running server that leads ``stream`` (``KV_<bucket>`` for a key-value
        bucket): one that reports itself as leader while no other running server names
        someone else. ``None`` during an election or while views still disagree."""
        named = {
            name: view.get("leader") or None for name, view in self.stream_replicas(stream).items()
        }
        claimants = [name for name, leader in named.items() if leader == name]
        if len(claimants) != 1:
            return None
        (leader,) = claimants
        if any(other not in (None, leader) for other in named.values()):
            return None
        return leader

    def stream_replicas(self, stream: str) -> dict[str, dict[str, Any]]:
        """Each running server's view of ``stream``'s cluster block, by server name."""
        views: dict[str, dict[str, Any]] = {}
        for server in self.running:
            try:
                detail = server.stream_info(stream)
            except (OSError, NatsServerError):
                continue
            if detail is not None:
                views[server.name] = dict(detail.get("cluster") or {})
        return views

    # --- context manager ---

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __repr__(self) -> str:
        up = ", ".join(f"{s.name}:{'up' if s.is_running else 'down'}" for s in self.servers)
        return f"<NatsCluster {self.name} [{up}]>"
