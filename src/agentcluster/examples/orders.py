"""An order pipeline of five cooperating agents: what ``agentcluster demo`` runs.

Theory of operation. Orders enter at the desk and flow from stage to stage as signals;
each stage is one agent that owns its piece of state and tells the next stage what to
do, so no agent ever reads another's state::

    driver --orders.order.place--> desk --call risk.order.screen--> risk
    desk --inventory.stock.reserve--> inventory --billing.payment.charge--> billing
    billing --shipping.parcel.dispatch--> shipping --orders.order.confirm--> desk
    inventory / billing --orders.order.reject--> desk      (out of stock, card declined)
    billing --inventory.stock.release--> inventory          (give back a declined order)
    desk --orders.order.confirmed / rejected--> the node's bus (where the driver listens)

The desk screens every order with a ``call`` to the risk agent (it needs the answer
before going on); every other hop is an ``emit`` directive, released only after the
sending action succeeded.

Failure is part of the run. Malformed orders fail validation at the desk and end up in
the dead letters. The payment gateway, an external service the billing agent talks to,
is flaky: on a few requests chosen by the seed its connection breaks and it raises
``GatewayCrashed``, which ``Billing.crash_on`` lists, so the billing agent crashes
instead of failing one action. Its supervisor restarts it with its last good state. That
state is what makes the order finish: billing first records a payment intent
(``billing.payment.charge``) and only then captures it in a separate action, so an
intent whose capture crashed is still in the restored state, and ``Billing.mount``
captures it again. Captures are idempotent (an intent is removed in the same state
change that books the money), so no order is charged twice.

``run_demo`` drives a few thousand orders through the pipeline on one ``LocalNode`` and
checks the invariants listed in ``DemoReport.invariants``: every order ends confirmed or
rejected, the gateway charged exactly the confirmed amounts, stock never went negative
(the inventory's state schema refuses it) and the stock consumed equals the quantities
confirmed. Everything but the timings is a function of the seed.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, Field, NonNegativeInt, field_validator

from agentcluster.agent import Action, Agent, LocalNode
from agentcluster.clock import SystemClock
from agentcluster.core.signal import Signal
from agentcluster.telemetry import EventRecorder, Telemetry

__all__ = [
    "CATALOG",
    "Billing",
    "DemoReport",
    "GatewayCrashed",
    "Invariant",
    "Inventory",
    "OrderDesk",
    "PaymentGateway",
    "Risk",
    "Shipping",
    "run_demo",
]

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Product:
    name: str
    price_cents: int
    weight: float
    """How often the product appears in generated orders (relative)."""
    stock_per_order: float
    """Initial stock per order in the run; the rarer ones sell out part-way."""


CATALOG: dict[str, Product] = {
    "kb-mech": Product("Mechanical keyboard", 8_900, 3.0, 1.2),
    "mouse-pro": Product("Wireless mouse", 4_900, 4.0, 1.5),
    "usb-hub": Product("USB-C hub", 2_900, 3.0, 1.2),
    "monitor-27": Product("27-inch monitor", 27_900, 2.0, 0.3),
    "webcam-hd": Product("HD webcam", 6_900, 2.0, 0.35),
    "headset": Product("Headset", 9_900, 2.0, 0.9),
}

OK_CARD = "tok_visa"
DECLINED_CARD = "tok_chargeDeclined"


class GatewayCrashed(Exception):
    """The payment gateway's connection broke mid-request; nothing was charged."""


class PaymentGateway:
    """A stand-in for an external payment service, shared by every billing restart.

    Its connection breaks on the capture requests numbered in ``crash_on_requests``
    (1-based, counted over the whole run). Captures are keyed by order id: a second
    capture of the same order is refused and counted in ``duplicates``.
    """

    def __init__(self, crash_on_requests: set[int] | frozenset[int] = frozenset()) -> None:
        self.crash_on_requests = frozenset(crash_on_requests)
        self.requests = 0
        self.crashes = 0
        self.duplicates = 0
        self.captured: dict[str, int] = {}

    def capture(self, order_id: str, card: str, amount_cents: int) -> bool:
        """True when the money moved, False when the card was declined."""
        self.requests += 1
        if self.requests in self.crash_on_requests:
            self.crashes += 1
            raise GatewayCrashed(f"connection reset while capturing {order_id}")
        if card == DECLINED_CARD:
            return False
        if order_id in self.captured:
            self.duplicates += 1
            return True
        self.captured[order_id] = amount_cents
        return True

    @property
    def charged_cents(self) -> int:
        return sum(self.captured.values())


# --- what travels between the stages --------------------------------------------------


class Line(BaseModel):
    sku: str
    qty: int = Field(gt=0)

    @field_validator("sku")
    @classmethod
    def _known(cls, sku: str) -> str:
        if sku not in CATALOG:
            raise ValueError(f"unknown sku {sku!r}")
        return sku


class OrderRef(BaseModel):
    order_id: str


class PlaceParams(BaseModel):
    order_id: str
    customer: str
    card: str
    lines: list[Line] = Field(min_length=1)


class ReserveParams(BaseModel):
    order_id: str
    card: str
    amount_cents: int = Field(gt=0)
    lines: list[Line]


class ReleaseParams(BaseModel):
    order_id: str
    lines: list[Line]


class ConfirmParams(BaseModel):
    order_id: str
    amount_cents: int
    tracking: str


class RejectParams(BaseModel):
    order_id: str
    reason: str


class DispatchParams(BaseModel):
    order_id: str
    amount_cents: int
    lines: list[Line]


class ScreenParams(BaseModel):
    customer: str
    amount_cents: int


def _lines(lines: list[Line]) -> list[dict[str, Any]]:
    return [line.model_dump() for line in lines]


# --- the desk: where orders enter and end ---------------------------------------------


class PlaceOrder(Action):
    """Take an order: price it, screen it for fraud, and ask the inventory for stock."""

    Params = PlaceParams

    async def run(self, params: PlaceParams, ctx: Any) -> Any:
        amount = sum(CATALOG[line.sku].price_cents * line.qty for line in params.lines)
        verdict = await ctx.call(
            "risk", "risk.order.screen", {"customer": params.customer, "amount_cents": amount}
        )
        placed = ctx.set(placed=ctx.state.placed + 1)
        if verdict["flagged"]:
            rejected = Counter(ctx.state.rejected)
            rejected["fraud_suspected"] += 1
            outcome = {"order_id": params.order_id, "reason": "fraud_suspected"}
            return outcome, [
                placed,
                ctx.set(rejected=dict(rejected)),
                ctx.emit("orders.order.rejected", outcome),
            ]
        reserve = {
            "order_id": params.order_id,
            "card": params.card,
            "amount_cents": amount,
            "lines": _lines(params.lines),
        }
        return {"order_id": params.order_id, "amount_cents": amount}, [
            placed,
            ctx.emit("inventory.stock.reserve", reserve, target="inventory"),
        ]


class ConfirmOrder(Action):
    """The order is paid and on its way: book it and announce it on the bus."""

    Params = ConfirmParams

    async def run(self, params: ConfirmParams, ctx: Any) -> Any:
        return None, [
            ctx.set(
                confirmed=ctx.state.confirmed + 1,
                revenue_cents=ctx.state.revenue_cents + params.amount_cents,
            ),
            ctx.emit("orders.order.confirmed", params.model_dump()),
        ]


class RejectOrder(Action):
    """A later stage turned the order down: count the reason and announce it."""

    Params = RejectParams

    async def run(self, params: RejectParams, ctx: Any) -> Any:
        rejected = Counter(ctx.state.rejected)
        rejected[params.reason] += 1
        return None, [
            ctx.set(rejected=dict(rejected)),
            ctx.emit("orders.order.rejected", params.model_dump()),
        ]


class OrderDesk(Agent):
    class State(BaseModel):
        placed: int = 0
        confirmed: int = 0
        rejected: dict[str, int] = {}
        revenue_cents: int = 0

    routes = {
        "orders.order.place": PlaceOrder,
        "orders.order.confirm": ConfirmOrder,
        "orders.order.reject": RejectOrder,
    }
    capabilities = ["orders"]


# --- risk: answers calls --------------------------------------------------------------


class ScreenOrder(Action):
    """Flag large orders from watch-listed customers."""

    Params = ScreenParams

    async def run(self, params: ScreenParams, ctx: Any) -> Any:
        state = ctx.state
        flagged = params.customer in state.watchlist and params.amount_cents >= state.limit_cents
        return {"flagged": flagged}, ctx.set(
            screened=state.screened + 1, flagged=state.flagged + int(flagged)
        )


class Risk(Agent):
    class State(BaseModel):
        watchlist: list[str] = []
        limit_cents: int = 10_000
        screened: int = 0
        flagged: int = 0

    routes = {"risk.order.screen": ScreenOrder}
    capabilities = ["risk"]


# --- inventory ------------------------------------------------------------------------


class ReserveStock(Action):
    """Take every line of the order from stock, or none of them."""

    Params = ReserveParams

    async def run(self, params: ReserveParams, ctx: Any) -> Any:
        state = ctx.state
        stock = dict(state.stock)
        for line in params.lines:
            if stock.get(line.sku, 0) < line.qty:
                reject = {"order_id": params.order_id, "reason": "out_of_stock"}
                return False, [
                    ctx.set(out_of_stock=state.out_of_stock + 1),
                    ctx.emit("orders.order.reject", reject, target="orders"),
                ]
            stock[line.sku] -= line.qty
        return True, [
            ctx.set(stock=stock, reserved=state.reserved + 1),
            ctx.emit("billing.payment.charge", params.model_dump(), target="billing"),
        ]


class ReleaseStock(Action):
    """Put back what a declined order had reserved."""

    Params = ReleaseParams

    async def run(self, params: ReleaseParams, ctx: Any) -> Any:
        stock = dict(ctx.state.stock)
        for line in params.lines:
            stock[line.sku] = stock.get(line.sku, 0) + line.qty
        return None, ctx.set(stock=stock, released=ctx.state.released + 1)


class Inventory(Agent):
    class State(BaseModel):
        stock: dict[str, NonNegativeInt] = {}
        reserved: int = 0
        released: int = 0
        out_of_stock: int = 0

    routes = {
        "inventory.stock.reserve": ReserveStock,
        "inventory.stock.release": ReleaseStock,
    }
    capabilities = ["inventory"]


# --- billing: crashes now and then, and recovers from its state ------------------------


class PaymentIntent(BaseModel):
    card: str
    amount_cents: int
    lines: list[Line]


class ChargeOrder(Action):
    """Record the intent to charge, then capture it in a separate step."""

    Params = ReserveParams

    async def run(self, params: ReserveParams, ctx: Any) -> Any:
        intent = PaymentIntent(
            card=params.card, amount_cents=params.amount_cents, lines=params.lines
        )
        return None, [
            ctx.set(pending={**ctx.state.pending, params.order_id: intent}),
            ctx.enqueue(CapturePayment, {"order_id": params.order_id}),
        ]


class CapturePayment(Action):
    """Move the money through the gateway; a pending intent is captured at most once."""

    Params = OrderRef

    async def run(self, params: OrderRef, ctx: Any) -> Any:
        state = ctx.state
        intent = state.pending.get(params.order_id)
        if intent is None:
            return None  # captured already, before a restart re-queued it
        approved = ctx.agent.gateway.capture(params.order_id, intent.card, intent.amount_cents)
        pending = {k: v for k, v in state.pending.items() if k != params.order_id}
        lines = _lines(intent.lines)
        if approved:
            dispatch = {
                "order_id": params.order_id,
                "amount_cents": intent.amount_cents,
                "lines": lines,
            }
            return True, [
                ctx.set(
                    pending=pending,
                    captured=state.captured + 1,
                    captured_cents=state.captured_cents + intent.amount_cents,
                ),
                ctx.emit("shipping.parcel.dispatch", dispatch, target="shipping"),
            ]
        release = {"order_id": params.order_id, "lines": lines}
        reject = {"order_id": params.order_id, "reason": "card_declined"}
        return False, [
            ctx.set(pending=pending, declined=state.declined + 1),
            ctx.emit("inventory.stock.release", release, target="inventory"),
            ctx.emit("orders.order.reject", reject, target="orders"),
        ]


class Billing(Agent):
    """Charges orders. ``gateway`` is bound per run by ``billing_with``."""

    class State(BaseModel):
        pending: dict[str, PaymentIntent] = {}
        captured: int = 0
        captured_cents: int = 0
        declined: int = 0
        recovered: int = 0

    actions = [CapturePayment]
    routes = {"billing.payment.charge": ChargeOrder}
    capabilities = ["billing"]
    crash_on = (GatewayCrashed,)
    gateway: ClassVar[PaymentGateway] = PaymentGateway()

    def mount(self, ctx: Any) -> Any:
        """After a restart, capture again every intent whose capture did not finish."""
        pending = list(ctx.state.pending)
        if not pending:
            return None
        return None, [
            ctx.set(recovered=ctx.state.recovered + len(pending)),
            *(ctx.enqueue(CapturePayment, {"order_id": order_id}) for order_id in pending),
        ]


def billing_with(gateway: PaymentGateway) -> type[Billing]:
    """A ``Billing`` agent class bound to ``gateway`` (an outside resource, not state)."""
    return type("Billing", (Billing,), {"gateway": gateway, "__module__": __name__})


# --- shipping -------------------------------------------------------------------------


class DispatchParcel(Action):
    """Hand the parcel to the carrier and tell the desk the order is done."""

    Params = DispatchParams

    async def run(self, params: DispatchParams, ctx: Any) -> Any:
        state = ctx.state
        tracking = f"TRK{state.shipped + 1:06d}"
        confirm = {
            "order_id": params.order_id,
            "amount_cents": params.amount_cents,
            "tracking": tracking,
        }
        return tracking, [
            ctx.set(
                shipped=state.shipped + 1,
                units=state.units + sum(line.qty for line in params.lines),
            ),
            ctx.emit("orders.order.confirm", confirm, target="orders"),
        ]


class Shipping(Agent):
    class State(BaseModel):
        shipped: int = 0
        units: int = 0

    routes = {"shipping.parcel.dispatch": DispatchParcel}
    capabilities = ["shipping"]


# --- the run --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stage:
    """One agent's share of the work, for the report."""

    agent: str
    received: int
    passed: int
    turned_down: int
    note: str = ""


@dataclass(frozen=True, slots=True)
class Invariant:
    """A property the run must have; ``detail`` says what was measured."""

    name: str
    held: bool
    detail: str


@dataclass(frozen=True)
class DemoReport:
    """What ``run_demo`` saw; ``ok`` when every invariant held."""

    seed: int
    submitted: int
    malformed: int
    placed: int
    confirmed: int
    rejected: dict[str, int]
    revenue_cents: int
    charged_cents: int
    stock_start: dict[str, int]
    stock_left: dict[str, int]
    units_confirmed: dict[str, int]
    stages: list[Stage]
    crashes: int
    restarts: int
    crash_log: list[tuple[str, str]]
    recovered_payments: int
    dead_letters: dict[str, int]
    signals: int
    elapsed: float
    invariants: list[Invariant] = field(default_factory=list)

    @property
    def violations(self) -> list[str]:
        return [f"{i.name}: {i.detail}" for i in self.invariants if not i.held]

    @property
    def ok(self) -> bool:
        return all(i.held for i in self.invariants)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def signals_per_second(self) -> float:
        return self.signals / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        verdict = "invariants hold" if self.ok else f"{len(self.violations)} invariant(s) broken"
        return (
            f"{self.submitted} orders ({self.malformed} malformed): "
            f"{self.confirmed} confirmed, {self.rejected_total} rejected, "
            f"{self.placed - self.confirmed - self.rejected_total} lost; "
            f"revenue ${self.revenue_cents / 100:,.2f}; "
            f"{self.crashes} crashes, {self.restarts} restarts; "
            f"{self.signals} signals in {self.elapsed:.2f}s "
            f"({self.signals_per_second:,.0f}/s); {verdict}"
        )


def _state(node: LocalNode, agent_id: str, model: type[M]) -> M:
    state = node.state(agent_id)
    assert isinstance(state, model)
    return state


@dataclass(frozen=True, slots=True)
class _Order:
    order_id: str
    customer: str
    card: str
    lines: tuple[tuple[str, int], ...]
    malformed: bool


def _generate(orders: int, rng: random.Random) -> list[_Order]:
    skus = list(CATALOG)
    weights = [CATALOG[sku].weight for sku in skus]
    out = []
    for i in range(orders):
        wanted: dict[str, int] = {}
        for sku in rng.choices(skus, weights, k=rng.choice((1, 1, 1, 2, 2, 3))):
            wanted[sku] = rng.randint(1, 3)
        lines = list(wanted.items())
        malformed = rng.random() < 0.01
        if malformed:
            sku, _ = lines[0]
            lines[0] = (sku, 0) if rng.random() < 0.5 else ("no-such-sku", 1)
        out.append(
            _Order(
                order_id=f"ord-{i + 1:05d}",
                customer=f"cus-{rng.randrange(500):03d}",
                card=DECLINED_CARD if rng.random() < 0.04 else OK_CARD,
                lines=tuple(lines),
                malformed=malformed,
            )
        )
    return out


async def run_demo(orders: int = 3000, seed: int = 7, *, timeout: float = 60.0) -> DemoReport:
    """Drive ``orders`` orders through the pipeline on one node and check the invariants."""
    if orders < 1:
        raise ValueError("orders must be at least 1")
    rng = random.Random(seed)
    generated = _generate(orders, rng)
    customers = sorted({o.customer for o in generated})
    watchlist = sorted(rng.sample(customers, max(1, len(customers) // 50)))
    stock_start = {sku: round(orders * p.stock_per_order) for sku, p in CATALOG.items()}
    n_crashes = min(5, max(2, orders // 600))
    window = max(n_crashes + 1, orders // 2)
    gateway = PaymentGateway({rng.randrange(1, window) for _ in range(n_crashes)})

    telemetry = Telemetry()
    actions = 0

    def count_action(event: Any, measurements: Any, metadata: Any) -> None:
        nonlocal actions
        actions += 1

    telemetry.attach(("agentcluster", "action", "completed"), count_action)
    lifecycle = EventRecorder(maxlen=1000)
    telemetry.attach(("agentcluster", "agent", "crashed"), lifecycle)

    outcomes: dict[str, list[dict[str, Any]]] = {}
    expected = sum(1 for o in generated if not o.malformed)
    done = asyncio.Event()

    def record(signal: Signal) -> None:
        outcomes.setdefault(signal.data["order_id"], []).append(
            {"type": signal.type, **signal.data}
        )
        if len(outcomes) >= expected:
            done.set()

    clock = SystemClock()
    async with LocalNode("demo", telemetry=telemetry, seed=str(seed)) as node:
        node.bus.subscribe("orders.order.confirmed", record)
        node.bus.subscribe("orders.order.rejected", record)
        await node.start_agent(Shipping, "shipping")
        # The gateway breaks a few times within seconds: allow more restarts than the
        # default 3 in 5 s before the supervisor gives up on billing.
        await node.start_agent(
            billing_with(gateway), "billing", restart="permanent", max_restarts=10
        )
        await node.start_agent(Inventory, "inventory", state={"stock": stock_start})
        await node.start_agent(Risk, "risk", state={"watchlist": watchlist})
        await node.start_agent(OrderDesk, "orders")

        started = clock.monotonic()
        for order in generated:
            data = {
                "order_id": order.order_id,
                "customer": order.customer,
                "card": order.card,
                "lines": [{"sku": sku, "qty": qty} for sku, qty in order.lines],
            }
            await node.cast("orders", Signal("orders.order.place", data, subject=order.order_id))
        if expected:
            try:
                async with asyncio.timeout(timeout):
                    await done.wait()
            except TimeoutError:
                pass
        elapsed = clock.monotonic() - started

        desk = _state(node, "orders", OrderDesk.State)
        inventory = _state(node, "inventory", Inventory.State)
        billing = _state(node, "billing", Billing.State)
        risk = _state(node, "risk", Risk.State)
        shipping = _state(node, "shipping", Shipping.State)
        dead_letters = dict(sorted(node.dead_letters.by_reason.items()))
        crashes, restarts = node.crashes, node.restarts

    units: Counter[str] = Counter()
    by_id = {o.order_id: o for o in generated}
    confirmed_cents = 0
    for order_id, seen in outcomes.items():
        if seen[0]["type"] == "orders.order.confirmed":
            confirmed_cents += seen[0]["amount_cents"]
            for sku, qty in by_id[order_id].lines:
                units[sku] += qty
    stock_left = dict(inventory.stock)
    rejected = dict(sorted(desk.rejected.items()))
    malformed = orders - expected

    lost = [o.order_id for o in generated if not o.malformed and o.order_id not in outcomes]
    twice = sorted(k for k, v in outcomes.items() if len(v) > 1)
    other_letters = sum(n for reason, n in dead_letters.items() if reason != "validation")
    consumed = {sku: stock_start[sku] - stock_left.get(sku, 0) for sku in stock_start}
    sold = {sku: units.get(sku, 0) for sku in stock_start}
    negative = {sku: n for sku, n in stock_left.items() if n < 0}
    invariants = [
        Invariant(
            "every order ends confirmed or rejected",
            not lost
            and not twice
            and desk.placed == expected
            and desk.confirmed + sum(rejected.values()) == desk.placed,
            f"{len(lost)} never finished (e.g. {lost[:3]}), {len(twice)} finished twice; "
            f"desk placed {desk.placed} of {expected} well-formed orders, "
            f"confirmed {desk.confirmed}, rejected {sum(rejected.values())}",
        ),
        Invariant(
            "dead letters: the malformed orders and the crashed captures only",
            dead_letters.get("validation", 0) == malformed
            and dead_letters.get("crashed", 0) == crashes
            and other_letters == crashes,
            f"{malformed} malformed orders; dead letters {dead_letters}",
        ),
        Invariant(
            "money charged == sum of confirmed orders",
            gateway.charged_cents == billing.captured_cents == desk.revenue_cents
            and confirmed_cents == desk.revenue_cents
            and not gateway.duplicates
            and not billing.pending,
            f"gateway charged {gateway.charged_cents}, billing booked "
            f"{billing.captured_cents}, desk booked {desk.revenue_cents}, confirmed orders "
            f"add up to {confirmed_cents}; {gateway.duplicates} double captures, "
            f"{len(billing.pending)} intents left",
        ),
        Invariant("stock never negative", not negative, f"negative stock: {negative}"),
        Invariant(
            "stock consumed == confirmed quantities",
            consumed == sold,
            f"stock consumed {consumed}, units confirmed {sold}",
        ),
        Invariant(
            "every crash was followed by a restart",
            crashes == gateway.crashes == restarts,
            f"gateway broke {gateway.crashes} times; node saw {crashes} crashes, "
            f"{restarts} restarts",
        ),
    ]

    stages = [
        Stage("orders", orders, desk.placed, malformed, "malformed orders are dead-lettered"),
        Stage("risk", risk.screened, risk.screened - risk.flagged, risk.flagged, "flagged"),
        Stage(
            "inventory",
            inventory.reserved + inventory.out_of_stock,
            inventory.reserved,
            inventory.out_of_stock,
            f"out of stock; {inventory.released} reservations released",
        ),
        Stage(
            "billing",
            billing.captured + billing.declined,
            billing.captured,
            billing.declined,
            f"declined; {billing.recovered} captures redone after a crash",
        ),
        Stage("shipping", shipping.shipped, shipping.shipped, 0, f"{shipping.units} units"),
    ]
    crash_log = [
        (str(r.metadata.get("agent_id")), f"{r.metadata.get('error_type')}: {r.metadata['error']}")
        for r in lifecycle.events()
    ]
    return DemoReport(
        seed=seed,
        submitted=orders,
        malformed=malformed,
        placed=desk.placed,
        confirmed=desk.confirmed,
        rejected=rejected,
        revenue_cents=desk.revenue_cents,
        charged_cents=gateway.charged_cents,
        stock_start=stock_start,
        stock_left=stock_left,
        units_confirmed=sold,
        stages=stages,
        crashes=crashes,
        restarts=restarts,
        crash_log=crash_log,
        recovered_payments=billing.recovered,
        dead_letters=dead_letters,
        signals=actions,
        elapsed=elapsed,
        invariants=invariants,
    )
