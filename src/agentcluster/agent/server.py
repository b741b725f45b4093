"""The agent server: one agent's bounded mailbox and the task that serves it.

Theory of operation. A running agent is an ``AgentServer``: a bounded deque (the mailbox)
and, while there is work, one asyncio task that takes items one at a time, routes each
signal through the agent's route trie, runs the matching actions and applies what they
return. The task starts on the first signal and ends after a quiet spell, so an idle
agent costs a few hundred bytes and no task.

Items in the mailbox are bare ``Signal`` objects for ``cast``/``send`` (no wrapper on the
hot path), ``_Call`` objects carrying the caller's future, and ``_Instruction`` objects for
actions the agent enqueued or scheduled itself.

Timeouts cost nothing per action: one watchdog timer per server is armed for the running
action's deadline and, when it fires, either interrupts the action (cancelling the task at
its ``await``, then un-cancelling it) or re-arms itself for the action that runs now.
Synchronous actions run in the node's worker pool; they cannot be interrupted, so on
timeout ``ctx.cancelled`` turns true, the caller gets ``ActionTimeout`` at once, and the
agent waits for the thread before taking its next signal — its actions never overlap.

Failure handling: an action that raises (after its retries and ``compensate``) answers the
caller with ``ActionFailed`` and changes nothing, because directives are applied only after
success. Exceptions listed in ``Agent.crash_on``, and failures of lifecycle hooks, crash
the agent instead: its supervisor decides whether it restarts — with its last good state
and its mailbox intact — or stops.

Every agent answers a call of ``PING`` (``agentcluster.agent.ping``) itself, without a
route: the reply comes from the serving task when it reaches the ping in the mailbox, so
an agent whose mailbox is stuck behind a hung action does not answer. The health
monitor's ``deep`` check pings a sample of each node's agents this way. A ping changes
nothing, so a persistent agent's answer is not held for a snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from agentcluster.agent.action import Action, split_outcome
from agentcluster.agent.agent import Agent, RouteEntry, ScheduleEntry, apply_changes
from agentcluster.agent.context import Context
from agentcluster.agent.directives import (
    Directive,
    Emit,
    Enqueue,
    RegisterAction,
    RemoveAction,
    Schedule,
    SetState,
    Spawn,
    Stop,
    StopChild,
    Unschedule,
)
from agentcluster.agent.sensor import Sensor, SensorHost
from agentcluster.core.signal import Signal
from agentcluster.core.supervision import ExitKind
from agentcluster.errors import (
    ActionFailed,
    ActionTimeout,
    ActionValidationError,
    AgentClusterError,
    AgentCrashed,
    AgentExists,
    AgentStopped,
    ConfigurationError,
    DeliveryError,
    MailboxFull,
    NoRoute,
    SignalExpired,
)

if TYPE_CHECKING:
    from agentcluster.agent.node import LocalNode
    from agentcluster.agent.supervisor import Supervisor

__all__ = ["PING", "AgentServer"]

PING = "agentcluster.agent.ping"
"""The signal type every agent answers by itself (module docstring)."""

log = logging.getLogger("agentcluster.agent")

_NEVER = float("inf")


_STATUS_IDLE = "idle"
_STATUS_RUNNING = "running"
_STATUS_STOPPING = "stopping"
_STATUS_STOPPED = "stopped"
_STATUS_FAILED = "failed"


class _Call:
    __slots__ = ("abandoned", "ctx", "future", "signal")

    def __init__(self, signal: Signal, future: asyncio.Future[Any]) -> None:
        self.signal = signal
        self.future = future
        self.abandoned = False
        self.ctx: Context | None = None


class _Instruction:
    __slots__ = ("action", "params", "signal")

    def __init__(self, action: str, params: Any, signal: Signal | None) -> None:
        self.action = action
        self.params = params
        self.signal = signal


class _Control:
    """A lifecycle request processed between two signals: restart, or crash."""

    __slots__ = ("error", "kind")

    def __init__(self, kind: str, error: BaseException | None = None) -> None:
        self.kind = kind
        self.error = error


class _Interrupted(Exception):
    """Raised inside the server when the watchdog or an abandoning caller interrupted."""


class _Crash(Exception):
    """Wraps an error that must crash the agent rather than fail one action."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class AgentServer:
    __slots__ = (
        "_action_deadline",
        "_busy_signal",
        "_current",
        "_interrupt",
        "_loop",
        "_mailbox",
        "_pending",
        "_running",
        "_sensors",
        "_space_waiters",
        "_stop_reason",
        "_task",
        "_waiter",
        "_watchdog",
        "_watchdog_due",
        "agent",
        "capabilities",
        "children",
        "keeper",
        "mailbox_size",
        "node",
        "parent_id",
        "status",
        "supervisor",
    )

    def __init__(
        self,
        node: LocalNode,
        agent: Agent,
        *,
        mailbox_size: int,
        capabilities: tuple[str, ...],
        parent_id: str | None = None,
    ) -> None:
        self.node = node
        self.agent = agent
        self.mailbox_size = mailbox_size
        self.capabilities = capabilities
        self.parent_id = parent_id
        self.status = _STATUS_IDLE
        self.supervisor: Supervisor | None = None
        self.children: Supervisor | None = None
        self.keeper: Any = None
        """A persistent agent's ``cluster.keeper.AgentKeeper``: its effects are staged there
        and released once a snapshot covering them commits."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mailbox: deque[Any] | None = None
        self._pending: deque[_Instruction | _Control] | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self._space_waiters: deque[asyncio.Future[None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop_reason: str | None = None
        self._current: Any = None
        self._busy_signal: Signal | None = None
        self._action_deadline: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_due = _NEVER
        self._running: Context | None = None
        self._interrupt: str | None = None
        self._sensors: list[Sensor] | None = None

    @property
    def id(self) -> str:
        return self.agent.id

    @property
    def mailbox_depth(self) -> int:
        mailbox = self._mailbox
        return len(mailbox) if mailbox is not None else 0

    @property
    def settled(self) -> bool:
        """Nothing in the mailbox and nothing running: what a hand-off waits for."""
        return not self._mailbox and not self._pending and self._current is None

    @property
    def alive(self) -> bool:
        return self.status in (_STATUS_IDLE, _STATUS_RUNNING)

    # --- delivery -----------------------------------------------------------------

    def offer(self, item: Any) -> bool:
        """Put an item in the mailbox if there is room; False when it is full."""
        mailbox = self._mailbox
        if mailbox is None:
            mailbox = self._mailbox = deque()
        elif len(mailbox) >= self.mailbox_size:
            return False
        mailbox.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(False)
        elif self._task is None:
            self._start_task()
        return True

    async def put(self, item: Any, deadline: float) -> None:
        """Put an item in the mailbox, waiting for room until ``deadline`` (loop time)."""
        if not self.alive:
            raise AgentStopped(f"agent {self.id!r} is {self.status}", agent_id=self.id)
        if self.offer(item):
            return
        loop = self._loop or asyncio.get_running_loop()
        waiters = self._space_waiters
        if waiters is None:
            waiters = self._space_waiters = deque()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise MailboxFull(
                    f"mailbox of agent {self.id!r} stayed full ({self.mailbox_size} signals)",
                    agent_id=self.id,
                    node_id=self.node.node_id,
                )
            fut: asyncio.Future[None] = loop.create_future()
            waiters.append(fut)
            try:
                async with asyncio.timeout(remaining):
                    await fut
            except TimeoutError:
                pass
            finally:
                if not fut.done():
                    fut.cancel()
            if not self.alive:
                raise AgentStopped(f"agent {self.id!r} is {self.status}", agent_id=self.id)
            if self.offer(item):
                return

    def _wake_space_waiter(self) -> None:
        waiters = self._space_waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _start_task(self) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._mailbox is None:
            self._mailbox = deque()
        self.status = _STATUS_RUNNING
        self._task = loop.create_task(self._serve())

    def abandon(self, call: _Call) -> None:
        """The caller gave up: interrupt the call if it is running, skip it if queued."""
        call.abandoned = True
        if self._current is call and call.ctx is not None:
            call.ctx._cancelled = True
            if self._action_deadline is not None and self._interrupt is None:
                self._interrupt = "abandoned"
                if self._task is not None:
                    self._task.cancel()

    # --- the serving loop ---------------------------------------------------------

    async def _serve(self) -> None:
        loop = self._loop
        assert loop is not None
        mailbox = self._mailbox
        assert mailbox is not None
        try:
            while True:
                if self._stop_reason is not None:
                    break
                pending = self._pending
                item: Any
                if pending:
                    item = pending.popleft()
                elif mailbox:
                    item = mailbox.popleft()
                    if self._space_waiters:
                        self._wake_space_waiter()
                else:
                    waiter = self._waiter = loop.create_future()
                    timer = loop.call_later(self.node.hibernate_after, _hibernate, waiter)
                    try:
                        hibernate = await waiter
                    finally:
                        timer.cancel()
                        self._waiter = None
                    if hibernate and not mailbox and not self._pending:
                        break
                    continue
                if self.node._gate is not None and not self.agent.runs_while_paused:
                    await self.node.wait_unpaused()
                    if self._stop_reason is not None:
                        mailbox.appendleft(item)
                        break
                self._current = item
                try:
                    if type(item) is Signal:
                        await self._handle_signal(item, None)
                    else:
                        await self._handle(item)
                except _Crash as crash:
                    self._current = None
                    self._fail_crashed_item(item, crash.error)
                    if self.keeper is not None:
                        self.keeper.note(item)
                    if not await self._crashed(crash.error):
                        return
                    continue
                finally:
                    self._current = None
                if self.keeper is not None:
                    self.keeper.note(item)
        finally:
            self._task = None
            if self.status == _STATUS_RUNNING:
                self.status = _STATUS_IDLE
        if self._stop_reason is not None and self.status != _STATUS_STOPPED:
            await self._finish(self._stop_reason)

    async def _handle(self, item: Any) -> None:
        kind = type(item)
        if kind is Signal:
            await self._handle_signal(item, None)
        elif kind is _Call:
            if item.abandoned or item.future.done():
                return
            await self._handle_signal(item.signal, item)
        elif kind is _Control:
            if item.kind == "restart":
                await self.restart("sibling_restart")
            else:
                raise _Crash(item.error or RuntimeError("crash requested"))
        else:
            await self._handle_instruction(item)

    async def _handle_signal(self, signal: Signal, call: _Call | None) -> None:
        node = self.node
        deadline = signal.deadline
        if deadline is not None and node.clock.monotonic() > deadline:
            self._fail_delivery(
                signal,
                call,
                SignalExpired(
                    f"signal {signal.type!r} expired before agent {self.id!r} ran it",
                    agent_id=self.id,
                    node_id=node.node_id,
                ),
            )
            return
        if signal.type == PING:
            if call is not None and not call.future.done():
                call.future.set_result({"agent_id": self.id, "mailbox": len(self._mailbox or ())})
            return
        entries = self.agent.route(signal.type)
        if not entries:
            self._fail_delivery(
                signal,
                call,
                NoRoute(
                    f"agent {self.id!r} has no route for signal type {signal.type!r}",
                    agent_id=self.id,
                    node_id=node.node_id,
                ),
            )
            return
        first = True
        for entry in entries:
            try:
                ctx = self._context(entry, signal)
                if first and call is not None:
                    call.ctx = ctx
                if entry.is_action:
                    result = await self._run_action(entry.target, signal.data, ctx)  # type: ignore[arg-type]
                else:
                    result = await self._run_handler(entry, signal, ctx)
            except _Crash:
                raise
            except AgentClusterError as error:
                if first:
                    self._fail_action(signal, call, error)
            else:
                if first and call is not None and not call.future.done():
                    if self.keeper is not None:
                        self.keeper.hold_reply(call.future, result, call.signal.id)
                    else:
                        call.future.set_result(result)
            first = False

    async def _handle_instruction(self, item: _Instruction) -> None:
        action = self.agent.action_named(item.action)
        if action is None:
            log.error(
                "agent %r has no action %r to run (enqueued or scheduled)", self.id, item.action
            )
            return
        entry = RouteEntry(action, self.agent.action_namespace(action), True, action.name)
        signal = item.signal or Signal(f"agentcluster.instruction.{action.name}", item.params)
        try:
            await self._run_action(action, item.params, self._context(entry, signal))
        except AgentClusterError as error:
            self._fail_action(signal, None, error)

    def _fail_crashed_item(self, item: Any, error: BaseException) -> None:
        """The item whose action crashed the agent: its caller is told, a cast dead-lettered."""
        if isinstance(item, _Control):
            return
        signal = item if type(item) is Signal else item.signal
        if signal is None:
            signal = Signal(f"agentcluster.instruction.{item.action}", item.params)
        crashed = AgentCrashed(
            signal.type,
            type(error).__name__,
            str(error),
            agent_id=self.id,
            node_id=self.node.node_id,
        )
        if type(item) is _Call:
            if not item.future.done():
                item.future.set_exception(crashed)
        else:
            self.node.dead_letter(signal, crashed, self.id)

    def _fail_delivery(self, signal: Signal, call: _Call | None, error: DeliveryError) -> None:
        self.node.dead_letter(signal, error, self.id)
        if call is not None and not call.future.done():
            call.future.set_exception(error)

    def _fail_action(self, signal: Signal, call: _Call | None, error: AgentClusterError) -> None:
        if call is not None:
            if not call.future.done():
                call.future.set_exception(error)
        else:
            self.node.dead_letter(signal, error, self.id)

    # --- running one action -------------------------------------------------------

    def _context(self, entry: RouteEntry, signal: Signal) -> Context:
        agent = self.agent
        ns = entry.namespace
        return Context(
            agent,
            agent.state if ns is None else agent.skill_states[ns],
            signal,
            entry.target if entry.is_action else None,  # type: ignore[arg-type]
            ns,
            self.node,
        )

    async def _run_handler(self, entry: RouteEntry, signal: Signal, ctx: Context) -> Any:
        """A route to a plain function or method rather than an Action class."""
        agent = self.agent
        target = entry.target
        handler: Any = getattr(agent, target) if isinstance(target, str) else target
        try:
            outcome = handler(signal, ctx)
            if inspect.isawaitable(outcome):
                outcome = await self._guarded(outcome, ctx, agent.action_timeout)
        except (_Crash, _Interrupted, asyncio.CancelledError):
            raise
        except AgentClusterError as error:
            await self._on_error(error, ctx)
            raise
        except Exception as error:
            await self._on_error(error, ctx)
            if agent.crash_on and isinstance(error, agent.crash_on):
                raise _Crash(error) from error
            raise _action_failed(entry.label, error, self) from error
        result, directives = split_outcome(outcome)
        await self._apply(directives, ctx, entry.label)
        return result

    async def _run_action(self, action: type[Action], data: Any, ctx: Context) -> Any:
        agent = self.agent
        compiled = agent._compiled
        try:
            params = action.validate_params(data)
        except ActionValidationError as error:
            await self._on_error(error, ctx)
            raise
        if compiled.has_before:
            await self._hook(agent.on_before_run, action, params, ctx)
        timeout = action.timeout if action.timeout is not None else agent.action_timeout
        policy = action.retry
        instance = action._instance or action.instance()
        telemetry = self.node.telemetry
        started = self.node.clock.monotonic() if telemetry.enabled else 0.0
        attempt = 1
        self._running = ctx
        while True:
            ctx.attempt = attempt
            try:
                if not action._is_async:
                    outcome = await self._in_thread(instance.run, params, ctx, timeout)
                else:
                    # _guarded, inlined: one coroutine frame less on the hot path.
                    self._enter_action(timeout)
                    try:
                        outcome = await instance.run(params, ctx)
                    except asyncio.CancelledError:
                        if self._interrupt is None:
                            raise
                        self._interrupted(timeout)
                    finally:
                        self._action_deadline = None
                directives: Sequence[Directive]
                if type(outcome) is tuple and len(outcome) == 2 and type(outcome[1]) is SetState:
                    result, directives = outcome[0], (outcome[1],)
                else:
                    result, directives = split_outcome(outcome)
                if action.Result is not None:
                    result = action.validate_result(result)
                break
            except (asyncio.CancelledError, _Crash):
                raise
            except _Interrupted:
                raise ActionFailed(
                    action.name, "Cancelled", "the caller gave up", agent_id=self.id
                ) from None
            except Exception as error:
                if (
                    isinstance(error, ActionValidationError)
                    or (agent.crash_on and isinstance(error, agent.crash_on))
                    or not policy.should_retry(attempt)
                    or ctx._cancelled
                ):
                    await self._final_failure(action, params, ctx, error)
                delay = policy.delay(attempt, self.node.random)
                deadline = ctx.signal.deadline if ctx.signal is not None else None
                if deadline is not None and self.node.clock.monotonic() + delay > deadline:
                    await self._final_failure(action, params, ctx, error)
                await asyncio.sleep(delay)
                attempt += 1
        if compiled.has_after:
            await self._hook(agent.on_after_run, action, result, ctx)
        if directives:
            try:
                await self._apply(directives, ctx, action.name)
            except AgentClusterError as error:
                await self._on_error(error, ctx)
                raise
        if telemetry.enabled:
            telemetry.emit(
                ("agentcluster", "action", "completed"),
                {"duration": self.node.clock.monotonic() - started, "attempts": attempt},
                {"agent_id": self.id, "action": action.name, "node_id": self.node.node_id},
            )
        return result

    async def _hook(self, hook: Any, action: type[Action], value: Any, ctx: Context) -> None:
        """on_before_run / on_after_run: raising fails the action, which changes nothing."""
        try:
            await _maybe_await(hook(action, value, ctx))
        except (asyncio.CancelledError, _Crash):
            raise
        except Exception as error:
            await self._on_error(error, ctx)
            if self.agent.crash_on and isinstance(error, self.agent.crash_on):
                raise _Crash(error) from error
            if isinstance(error, AgentClusterError):
                raise
            raise _action_failed(f"{action.name} ({hook.__name__})", error, self) from error

    async def _final_failure(
        self, action: type[Action], params: Any, ctx: Context, error: Exception
    ) -> NoReturn:
        if action._compensate_is_async is not None:
            try:
                if action._compensate_is_async:
                    await action.instance().compensate(params, ctx, error)
                else:
                    await self._in_thread(
                        lambda p, c: action.instance().compensate(p, c, error),
                        params,
                        ctx,
                        self.agent.action_timeout,
                    )
            except Exception:
                log.exception("compensate of %s failed in agent %r", action.name, self.id)
        await self._on_error(error, ctx)
        if self.agent.crash_on and isinstance(error, self.agent.crash_on):
            raise _Crash(error) from error
        if isinstance(error, AgentClusterError):
            raise error
        raise _action_failed(action.name, error, self) from error

    async def _on_error(self, error: BaseException, ctx: Context) -> None:
        if self.agent._compiled.has_error:
            try:
                await _maybe_await(self.agent.on_error(error, ctx))
            except Exception as hook_error:
                raise _Crash(hook_error) from hook_error

    async def _guarded(self, awaitable: Any, ctx: Context, timeout: float | None) -> Any:
        """Await an action's coroutine under the watchdog."""
        self._enter_action(timeout)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self._interrupt is None:
                raise
            self._interrupted(timeout)
        finally:
            self._action_deadline = None

    def _enter_action(self, timeout: float | None) -> None:
        """Mark an action as running, and make sure the watchdog fires by its deadline.

        Without a timeout the deadline is infinite but still marks "in an action", so a
        caller that gives up can interrupt it.
        """
        if timeout is None:
            self._action_deadline = _NEVER
            return
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        due = self._action_deadline = loop.time() + timeout
        if due < self._watchdog_due:
            self._arm_watchdog(loop, due)

    def _interrupted(self, timeout: float | None) -> NoReturn:
        """Turn the watchdog's or an abandoning caller's cancellation into an error."""
        reason = self._interrupt
        self._interrupt = None
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        if reason == "timeout":
            raise ActionTimeout(
                f"action timed out after {timeout}s in agent {self.id!r}", agent_id=self.id
            ) from None
        raise _Interrupted(reason) from None

    def _arm_watchdog(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog_due = due
        self._watchdog = loop.call_at(due, self._on_watchdog)

    def _on_watchdog(self) -> None:
        self._watchdog = None
        self._watchdog_due = _NEVER
        deadline = self._action_deadline
        if deadline is None or deadline == _NEVER:
            return
        loop = self._loop
        assert loop is not None
        if loop.time() >= deadline:
            if self._interrupt is None and self._task is not None:
                ctx = self._running
                if ctx is not None:
                    ctx._cancelled = True
                self._interrupt = "timeout"
                self._task.cancel()
        else:
            self._arm_watchdog(loop, deadline)

    async def _in_thread(self, fn: Any, params: Any, ctx: Context, timeout: float | None) -> Any:
        """Run a synchronous action in the worker pool; never let two overlap."""
        loop = self._loop or asyncio.get_running_loop()
        future = asyncio.wrap_future(self.node.worker_pool.submit(fn, params, ctx), loop=loop)
        done, _ = await asyncio.wait((future,), timeout=timeout)
        if done:
            result = future.result()
            if ctx._cancelled:
                raise _Interrupted("abandoned")  # the caller gave up: the late result is void
            return result
        ctx._cancelled = True
        error = ActionTimeout(
            f"synchronous action timed out after {timeout}s in agent {self.id!r}",
            agent_id=self.id,
        )
        current = self._current
        if type(current) is _Call and not current.future.done():
            current.future.set_exception(error)
        assert timeout is not None
        done, _ = await asyncio.wait((future,), timeout=timeout)
        if not done:
            self.node.overrun_threads += 1
            self.node.telemetry.emit(
                ("agentcluster", "action", "thread_overrun"),
                {"seconds": 2 * timeout},
                {"agent_id": self.id, "node_id": self.node.node_id},
            )
            log.error("a synchronous action of agent %r still runs after %ss", self.id, 2 * timeout)
            await asyncio.wait((future,))
        with contextlib.suppress(Exception):
            future.result()
        raise error

    # --- directives -----------------------------------------------------------------

    async def _apply(self, directives: Sequence[Directive], ctx: Context, label: str) -> None:
        agent = self.agent
        if len(directives) == 1:
            only = directives[0]
            if type(only) is SetState and only.namespace is None:
                agent.state = apply_changes(agent.state, only.changes, label)
                return
        # State changes are validated all together before anything happens, so a bad
        # change fails the whole action and nothing of it is applied.
        new_state = None
        new_skills: dict[str, Any] = {}
        for d in directives:
            if type(d) is SetState:
                if d.namespace is None:
                    new_state = apply_changes(new_state or agent.state, d.changes, label)
                else:
                    ns = d.namespace
                    base = new_skills.get(ns) or agent.skill_states[ns]
                    new_skills[ns] = apply_changes(base, d.changes, label)
            elif not isinstance(d, Directive):
                raise ConfigurationError(f"{label} returned {d!r}, which is not a directive")
            else:
                self._check(d, label)
        if new_state is not None:
            agent.state = new_state
        if new_skills:
            agent.skill_states.update(new_skills)
        for d in directives:
            kind = type(d)
            if kind is SetState:
                continue
            if kind is Emit:
                if self.keeper is not None:
                    self.keeper.hold_emit(d.signal)  # type: ignore[attr-defined]
                else:
                    self.node.emit_from(self.id, d.signal)  # type: ignore[attr-defined]
            elif kind is Enqueue:
                pending = self._pending
                if pending is None:
                    pending = self._pending = deque()
                name = self._resolve_action(d.action, label)  # type: ignore[attr-defined]
                pending.append(_Instruction(name, d.params, None))  # type: ignore[attr-defined]
            elif kind is Schedule:
                self._schedule(d, label)  # type: ignore[arg-type]
            elif kind is Unschedule:
                entry = agent.schedules.pop(d.key, None)  # type: ignore[attr-defined]
                if entry is not None and entry.handle is not None:
                    entry.handle.cancel()
            elif kind is Spawn:
                await self.node._spawn_child(self, d)  # type: ignore[arg-type]
            elif kind is StopChild:
                await self.node._stop_child(self, d.id)  # type: ignore[attr-defined]
            elif kind is RegisterAction:
                agent.register_action(d.action, d.pattern, d.priority)  # type: ignore[attr-defined]
            elif kind is RemoveAction:
                agent.remove_action(d.action)  # type: ignore[attr-defined]
            elif kind is Stop:
                self._stop_reason = d.reason  # type: ignore[attr-defined]

    def _check(self, d: Directive, label: str) -> None:
        """Refuse, before anything is applied, a directive that cannot be carried out."""
        node = self.node
        if isinstance(d, Enqueue | Schedule):
            self._resolve_action(d.action, label)
        elif isinstance(d, StopChild):
            child = node._agents.get(d.id)
            if child is None or child.parent_id != self.id:
                raise ConfigurationError(f"{label}: agent {self.id!r} has no child {d.id!r}")
        elif isinstance(d, Spawn):
            if d.id is not None:
                holder = node._agents.get(d.id)
                if holder is not None and holder.alive and holder.parent_id != self.id:
                    raise AgentExists(
                        f"{label}: cannot spawn {d.id!r}: another agent holds that id",
                        agent_id=d.id,
                        node_id=node.node_id,
                    )
        elif isinstance(d, RegisterAction):
            existing = self.agent.action_named(d.action.name)
            if existing is not None and existing is not d.action:
                raise ConfigurationError(
                    f"{label}: agent {self.id!r} already has an action named {d.action.name!r}"
                )

    def _resolve_action(self, action: type[Action] | str, label: str) -> str:
        name = action if isinstance(action, str) else action.name
        if self.agent.action_named(name) is None:
            raise ConfigurationError(f"{label}: agent {self.id!r} has no action {name!r}")
        return name

    def _schedule(self, d: Schedule, label: str) -> None:
        if d.after < 0 or (d.every is not None and d.every <= 0):
            raise ConfigurationError(f"{label}: schedule needs after >= 0 and every > 0")
        agent = self.agent
        name = self._resolve_action(d.action, label)
        key = d.key or f"{name}:{self.node.new_id()}"
        old = agent.schedules.pop(key, None)
        if old is not None and old.handle is not None:
            old.handle.cancel()
        entry = ScheduleEntry(
            key=key,
            action=name,
            params=dict(d.params) if d.params is not None else None,
            due=self.node.clock.monotonic() + d.after,
            every=d.every,
        )
        agent.schedules[key] = entry
        self._arm(entry)

    def _arm(self, entry: ScheduleEntry) -> None:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        delay = max(0.0, entry.due - self.node.clock.monotonic())
        entry.handle = loop.call_later(delay, self._fire_schedule, entry)

    def _fire_schedule(self, entry: ScheduleEntry) -> None:
        agent = self.agent
        if agent.schedules.get(entry.key) is not entry or not self.alive:
            return
        item = _Instruction(entry.action, entry.params, None)
        if entry.every is not None:
            entry.due = self.node.clock.monotonic() + entry.every
            self._arm(entry)
        else:
            del agent.schedules[entry.key]
        if not self.offer(item):
            self.node.dead_letter(
                Signal(f"agentcluster.instruction.{entry.action}", entry.params),
                MailboxFull(
                    f"mailbox of agent {self.id!r} was full when schedule {entry.key!r} fired",
                    agent_id=self.id,
                ),
                self.id,
            )

    # --- lifecycle ----------------------------------------------------------------

    async def activate(self) -> None:
        """Mount the agent, start its sensors and arm its schedules (start and restart)."""
        self._loop = asyncio.get_running_loop()
        agent = self.agent
        compiled = agent._compiled
        if compiled.has_mount:
            ctx = Context(agent, agent.state, None, None, None, self.node)
            outcome = await _maybe_await(agent.mount(ctx))
            _, directives = split_outcome(outcome)
            await self._apply(directives, ctx, f"{type(agent).__name__}.mount")
        for entry in agent.schedules.values():
            if entry.handle is None:
                self._arm(entry)
        if compiled.sensors:
            self._sensors = []
            host = SensorHost(agent.id, self.node, self._sensor_emit, lambda: self.mailbox_depth)
            for template in compiled.sensors:
                sensor = template.bind()
                await sensor.start(host)
                self._sensors.append(sensor)

    def _sensor_emit(self, signal: Signal) -> None:
        if not self.alive or not self.offer(signal):
            self.node.dead_letter(
                signal,
                MailboxFull(f"mailbox of agent {self.id!r} is full", agent_id=self.id)
                if self.alive
                else AgentStopped(f"agent {self.id!r} is {self.status}", agent_id=self.id),
                self.id,
            )

    async def _deactivate(self, reason: str) -> None:
        for entry in self.agent.schedules.values():
            if entry.handle is not None:
                entry.handle.cancel()
                entry.handle = None
        sensors, self._sensors = self._sensors, None
        for sensor in sensors or ():
            try:
                await sensor.stop()
            except Exception:
                log.exception("sensor of agent %r failed to stop", self.id)
        if self.agent._compiled.has_shutdown:
            try:
                await _maybe_await(self.agent.shutdown(reason))
            except Exception:
                log.exception("shutdown hook of agent %r failed", self.id)

    async def restart(self, reason: str = "restart") -> None:
        """Rebuild the agent from its last good state and mount it again."""
        if self.status in (_STATUS_STOPPED, _STATUS_FAILED):
            self.status = _STATUS_IDLE
            self._stop_reason = None
        else:
            await self._deactivate(reason)
        old = self.agent
        agent = type(old)(old.id, old.state)
        agent.skill_states = dict(old.skill_states)
        agent.schedules = {k: _copy_schedule(e) for k, e in old.schedules.items()}
        agent._router, agent._actions, agent._namespaces = (
            old._router,
            old._actions,
            old._namespaces,
        )
        self.agent = agent
        await self.activate()

    async def _crashed(self, error: BaseException) -> bool:
        """Hand a crash to the supervisor; True when the agent carries on."""
        self.node._crashed(self, error)
        supervisor = self.supervisor
        carry_on = False
        if supervisor is not None:
            carry_on = await supervisor.child_exited(self.id, ExitKind.CRASH, error)
        if not carry_on and self.status not in (_STATUS_STOPPED, _STATUS_FAILED):
            # Not restarted (a temporary agent, or no supervisor): it is gone for good.
            await self._finish("crash", failed=supervisor is None)
        return carry_on

    def request_control(self, kind: str, error: BaseException | None = None) -> None:
        """Restart (or crash) between two signals, ahead of anything queued."""
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        pending.appendleft(_Control(kind, error))
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(False)
        elif self._task is None and self.alive:
            self._start_task()

    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)

    async def stop(self, reason: str = "shutdown", timeout: float = 5.0) -> None:
        """Stop after the current action; what is still queued is dead-lettered."""
        if self.status in (_STATUS_STOPPED, _STATUS_FAILED):
            return
        self._stop_reason = reason
        task = self._task
        if task is not None and task is not asyncio.current_task():
            self.request_stop(reason)
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.status not in (_STATUS_STOPPED, _STATUS_FAILED):
            await self._finish(reason)

    async def _finish(self, reason: str, *, failed: bool = False) -> None:
        if self.status in (_STATUS_STOPPED, _STATUS_FAILED):
            return
        self.status = _STATUS_STOPPING
        if self.children is not None:
            await self.children.shutdown()
        await self._deactivate(reason)
        self.status = _STATUS_FAILED if failed else _STATUS_STOPPED
        # An agent that stopped itself: a permanent one comes back (OTP semantics), with
        # its mailbox intact; anything else leaves its supervisor.
        if (
            reason == "normal"
            and self.supervisor is not None
            and not failed
            and await self.supervisor.child_exited(self.id, ExitKind.NORMAL, None)
        ):
            return
        error = AgentStopped(f"agent {self.id!r} stopped ({reason})", agent_id=self.id)
        for source in (self._pending or (), self._mailbox or ()):
            for item in source:
                if type(item) is _Call:
                    if not item.future.done():
                        item.future.set_exception(error)
                    continue
                if isinstance(item, _Control):
                    continue
                signal = item if type(item) is Signal else item.signal
                if signal is not None:
                    self.node.dead_letter(signal, error, self.id)
        if self._mailbox:
            self._mailbox.clear()
        if self._pending:
            self._pending.clear()
        for fut in self._space_waiters or ():
            if not fut.done():
                fut.set_result(None)
        self.node._stopped(self, reason, failed)
        if self._stop_reason is None:
            self._stop_reason = reason

    def __repr__(self) -> str:
        return f"<AgentServer {self.id!r} {self.status} depth={self.mailbox_depth}>"


def _hibernate(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(True)


def _copy_schedule(entry: ScheduleEntry) -> ScheduleEntry:
    return ScheduleEntry(entry.key, entry.action, entry.params, entry.due, entry.every)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _action_failed(label: str, error: BaseException, server: AgentServer) -> ActionFailed:
    retryable = error.retryable if isinstance(error, AgentClusterError) else False
    return ActionFailed(
        label,
        type(error).__name__,
        str(error),
        agent_id=server.id,
        node_id=server.node.node_id,
        retryable=retryable,
    )
