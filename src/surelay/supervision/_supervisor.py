"""`Supervisor`: Erlang/OTP supervision for surelay actors.

A supervisor is an `Actor` whose messages are its children's exit reports and the admin
requests of `SupervisorRef`; handling them one at a time in its own thread is what makes
the OTP rules simple to keep: start order, reverse-order shutdown, restart strategies,
restart intensity, and escalation to the parent by crashing.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from pykka import ActorDeadError

from surelay.supervision._actor import NO_MESSAGE, Actor, CrashReport, Exit
from surelay.supervision._protocol import (
    ChildExited,
    CountChildren,
    DeleteChild,
    GetChild,
    Reply,
    RestartChild,
    RestartDue,
    StartChild,
    Stop,
    TerminateChild,
    WhichChildren,
)
from surelay.supervision._ref import SupervisorRef
from surelay.supervision._rules import (
    ExitKind,
    backoff_delay,
    record_restart,
    restart_group,
    should_restart,
)
from surelay.supervision._slot import Slot
from surelay.supervision._spec import (
    ChildInfo,
    ChildSpec,
    SupervisorFlags,
    check_specs,
)

__all__ = ["ChildStartError", "RestartIntensityExceeded", "Supervisor"]

logger = logging.getLogger("surelay.supervision")


class ChildStartError(RuntimeError):
    """A child's `on_start` (or its factory) failed; the cause is chained."""

    def __init__(self, child_id: str, error: BaseException) -> None:
        super().__init__(f"child {child_id!r} failed to start: {error!r}")
        self.child_id = child_id


class RestartIntensityExceeded(RuntimeError):
    """A supervisor gave up: more than `intensity` restarts within `period` seconds."""


_ADMIN = (GetChild, StartChild, TerminateChild, RestartChild, DeleteChild)


class Supervisor(Actor):
    """Starts children in order, restarts them by the OTP rules, stops them in reverse.

    Use `Supervisor.start(...)` for a root supervisor and `Supervisor.spec(...)` to nest
    one as a child. `clock` (monotonic seconds) drives the restart-intensity window and
    the backoff reset; `rng` drives backoff jitter. Both exist so tests need not sleep.
    """

    def __init__(
        self,
        children: Sequence[ChildSpec] = (),
        *,
        strategy: str = "one_for_one",
        intensity: int = 3,
        period: float = 5.0,
        backoff: tuple[float, float] | None = None,
        auto_shutdown: str = "never",
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        self._flags = SupervisorFlags(strategy, intensity, period, backoff, auto_shutdown)
        self._initial = tuple(children)
        check_specs(self._flags, self._initial)
        self._name = name or "supervisor"
        self._clock = clock
        self._rng = rng or random.Random()
        self._order: list[str] = []
        self._history: tuple[float, ...] = ()
        self._tokens = itertools.count(1)
        self._pending: dict[str, int] = {}  # child id -> token of its scheduled restart
        self._crashes: dict[str, CrashReport] = {}  # crash handed to a delayed restart
        self._timers: dict[int, threading.Timer] = {}

    def __str__(self) -> str:
        return f"Supervisor {getattr(self, '_name', '?')!r}"

    @classmethod
    def start(  # type: ignore[override]  # a root supervisor, not pykka's Actor.start
        cls,
        children: Sequence[ChildSpec] = (),
        *,
        strategy: str = "one_for_one",
        intensity: int = 3,
        period: float = 5.0,
        backoff: tuple[float, float] | None = None,
        auto_shutdown: str = "never",
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> SupervisorRef:
        """Start a root supervisor and its children, in order; returns once all run.

        Raises `ValueError` for bad flags or specs (naming the field) and
        `ChildStartError` if a child fails to start (those started are stopped again).
        """
        supervisor = cls(
            children,
            strategy=strategy,
            intensity=intensity,
            period=period,
            backoff=backoff,
            auto_shutdown=auto_shutdown,
            name=name,
            clock=clock,
            rng=rng,
        )
        slot = Slot(name or "supervisor", is_supervisor=True)
        supervisor._bind(slot, 1, _close_root, slot.ref, None)
        slot.mailbox.lease(1)
        slot.actor = supervisor
        supervisor._start_actor_loop()
        supervisor._await_start()
        slot.status = "running"
        slot.running = 1
        return cast(SupervisorRef, slot.ref)

    @classmethod
    def spec(
        cls,
        id: str,
        children: Sequence[ChildSpec] = (),
        *,
        restart: str = "permanent",
        shutdown: float | None = None,
        significant: bool = False,
        **flags: Any,
    ) -> ChildSpec:
        """A `ChildSpec` for a nested supervisor; `flags` are `Supervisor.start`'s.

        `shutdown` defaults to None (wait for the whole subtree), as OTP does.
        """
        known = {"strategy", "intensity", "period", "backoff", "auto_shutdown", "name"}
        known |= {"clock", "rng"}
        unknown = sorted(set(flags) - known)
        if unknown:
            raise ValueError(f"unknown supervisor flag(s) {unknown} for child {id!r}")
        plain = {k: v for k, v in flags.items() if k not in {"name", "clock", "rng"}}
        check_specs(SupervisorFlags(**plain), tuple(children))
        flags.setdefault("name", id)
        return ChildSpec(
            id,
            cls,
            kwargs={"children": tuple(children), **flags},
            restart=restart,
            shutdown=shutdown,
            significant=significant,
        )

    # -- life cycle ----------------------------------------------------------------------

    def on_start(self) -> None:
        slots = self._slot.children
        wanted = {spec.id for spec in self._initial}
        for stale in [i for i in slots if i not in wanted]:  # dynamic children of a past life
            slots.pop(stale).close()
        for spec in self._initial:
            slot = slots.get(spec.id)
            if slot is None:
                slot = slots[spec.id] = Slot(spec.id, is_supervisor=_is_supervisor(spec))
            slot.spec = spec
            slot.mailbox.reopen()
            self._order.append(spec.id)
            try:
                self._start_slot(slot, None)
            except ChildStartError:
                self._terminate_all()
                raise

    def on_stop(self) -> None:
        self._terminate_all()

    def on_failure(self, *_exc_info: Any) -> None:
        self._terminate_all()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ChildExited):
            return self._on_child_exit(message)
        if isinstance(message, RestartDue):
            return self._on_restart_due(message.token)
        if isinstance(message, WhichChildren):
            return Reply(self._which_children())
        if isinstance(message, CountChildren):
            return Reply(self._count_children())
        if isinstance(message, Stop):
            self._exit_requested = True
            return Reply()
        if isinstance(message, _ADMIN):
            try:
                return Reply(self._admin(message))
            except (KeyError, ValueError, ChildStartError) as error:
                return Reply(error=error)
        raise TypeError(f"{self} got an unknown message {message!r}")

    # -- starting and stopping one child -------------------------------------------------

    def _start_slot(self, slot: Slot, crash: CrashReport | None) -> None:
        spec = slot.spec
        assert spec is not None
        try:
            actor = spec.factory(*spec.args, **spec.kwargs)
            if not isinstance(actor, Actor):
                raise TypeError(
                    f"factory of child {spec.id!r} returned {actor!r}, "
                    "not a surelay.supervision.Actor"
                )
        except Exception as error:
            logger.error("%s: factory of child %r failed", self, spec.id, exc_info=error)
            raise ChildStartError(spec.id, error) from error
        slot.generation += 1
        generation = slot.generation
        actor._bind(slot, generation, self._child_exit_hook(slot.id), slot.ref, crash)
        slot.mailbox.lease(generation)
        actor._start_actor_loop()
        try:
            actor._await_start()
        except BaseException as error:
            slot.mailbox.revoke()
            raise ChildStartError(spec.id, error) from error
        slot.actor = actor
        slot.running = generation
        slot.status = "running"
        slot.started_at = self._clock()

    def _child_exit_hook(self, child_id: str) -> Callable[[Actor, Exit], None]:
        own = self._slot.ref

        def report(_actor: Actor, exit_: Exit) -> None:
            if exit_.kind == "shutdown":
                return  # the supervisor asked for it and is already waiting on it
            with contextlib.suppress(ActorDeadError):  # gone: it stopped its children
                own.tell(ChildExited(child_id, exit_))

        return report

    def _shutdown_slot(self, slot: Slot) -> None:
        """Take the lease away and wait `shutdown` seconds for the incarnation to end."""
        actor = slot.actor
        slot.running = None
        slot.mailbox.revoke()
        if actor is None:
            return
        assert slot.spec is not None
        if not actor._done.wait(slot.spec.shutdown):
            logger.error(
                "%s: child %r did not stop within %ss and was abandoned; its thread runs on "
                "(Python threads cannot be killed) but takes no further messages",
                self,
                slot.id,
                slot.spec.shutdown,
            )
            actor._abandon()

    def _terminate_all(self) -> None:
        """Stop every child in reverse start order (their mailboxes stay: the parent
        decides whether this subtree comes back)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._pending.clear()
        slots = self._slot.children
        for child_id in reversed(self._order):
            slot = slots.get(child_id)
            if slot is not None and slot.running is not None:
                self._shutdown_slot(slot)
                slot.status = "stopped"

    def _remove(self, slot: Slot) -> None:
        slot.close()
        self._slot.children.pop(slot.id, None)
        self._order.remove(slot.id)
        self._pending.pop(slot.id, None)
        self._crashes.pop(slot.id, None)

    # -- exits and restarts --------------------------------------------------------------

    def _on_child_exit(self, message: ChildExited) -> None:
        slot = self._slot.children.get(message.id)
        exit_ = message.exit
        if slot is None or slot.running != exit_.generation:
            return  # an incarnation this supervisor already stopped or replaced
        slot.running = None
        assert slot.spec is not None
        kind: ExitKind = "crash" if exit_.kind == "crash" else "normal"
        if not should_restart(slot.spec.restart, kind):
            if slot.spec.restart == "temporary":
                self._remove(slot)
            else:
                slot.close()
            self._check_auto_shutdown(slot.spec)
            return
        self._restart(slot, exit_.crash)

    def _restart(self, slot: Slot, crash: CrashReport | None, *, now_ok: bool = True) -> None:
        """Restart `slot` (and its group) by the strategy, after the backoff delay.

        With `now_ok` false (a restart that just failed) even an undelayed restart goes
        through the mailbox, as OTP's try_again_restart does, so admin requests and
        other exits are handled in between.
        """
        now = self._clock()
        self._history, exceeded = record_restart(
            self._history, now, self._flags.intensity, self._flags.period
        )
        if exceeded:
            raise RestartIntensityExceeded(
                f"{self}: more than {self._flags.intensity} restart(s) within "
                f"{self._flags.period}s (last: child {slot.id!r}); stopping all children"
            )
        # Children an operator (or their own normal exit) stopped stay stopped.
        slots = self._slot.children
        group = [
            i
            for i in restart_group(self._flags.strategy, self._order, slot.id)
            if i == slot.id or slots[i].status != "stopped"
        ]
        for other_id in reversed(group):
            other = slots[other_id]
            if other is slot:
                continue
            if other.running is not None:
                self._shutdown_slot(other)
            if other.spec is not None and other.spec.restart == "temporary":
                self._remove(other)  # a temporary bystander is never restarted
        ids = [i for i in group if i in slots]
        for child_id in ids:
            slots[child_id].status = "restarting"
            slots[child_id].restarts += 1
        token = next(self._tokens)
        for child_id in ids:
            self._pending[child_id] = token
        if crash is not None:
            self._crashes[slot.id] = crash
        delay = self._backoff(slot, now)
        if delay <= 0 and now_ok:
            self._on_restart_due(token)
            return
        own = self._slot.ref
        if delay <= 0:
            own.tell(RestartDue(token))
            return

        def due() -> None:
            with contextlib.suppress(ActorDeadError):
                own.tell(RestartDue(token))

        timer = threading.Timer(delay, due)
        timer.daemon = True
        self._timers[token] = timer
        timer.start()

    def _backoff(self, slot: Slot, now: float) -> float:
        if self._flags.backoff is None:
            return 0.0
        low, high = self._flags.backoff
        if slot.started_at and now - slot.started_at >= high:
            slot.backoff_n = 0  # it ran max_s seconds without crashing
        slot.backoff_n += 1
        return backoff_delay(slot.backoff_n, low, high, self._rng.random())

    def _on_restart_due(self, token: int) -> None:
        self._timers.pop(token, None)
        slots = self._slot.children
        due = [i for i in self._order if self._pending.get(i) == token]
        for child_id in due:
            del self._pending[child_id]
        for index, child_id in enumerate(due):
            slot = slots[child_id]
            try:
                self._start_slot(slot, self._crashes.pop(child_id, None))
            except ChildStartError as error:
                # OTP's try_again_restart: count it and go again, by the same strategy;
                # the rest of this group waits for that restart.
                for later in due[index + 1 :]:
                    slots[later].status = "restarting"
                cause = error.__cause__ or error
                self._restart(slot, CrashReport(cause, NO_MESSAGE), now_ok=False)
                return

    def _check_auto_shutdown(self, spec: ChildSpec) -> None:
        if not spec.significant:
            return
        mode = self._flags.auto_shutdown
        if mode == "any_significant":
            self._exit_requested = True
        elif mode == "all_significant":
            alive = [
                s
                for s in self._slot.children.values()
                if s.spec is not None and s.spec.significant and s.status != "stopped"
            ]
            if not alive:
                self._exit_requested = True

    # -- admin ---------------------------------------------------------------------------

    def _admin(self, request: Any) -> Any:
        slots = self._slot.children
        if isinstance(request, StartChild):
            spec = request.spec
            if not isinstance(spec, ChildSpec):
                raise ValueError(f"start_child needs a ChildSpec, got {spec!r}")
            self._flags.check_child(spec)
            if spec.id in slots:
                raise ValueError(f"child {spec.id!r} already exists")
            added = Slot(spec.id, is_supervisor=_is_supervisor(spec), spec=spec)
            slots[spec.id] = added
            self._order.append(spec.id)
            try:
                self._start_slot(added, None)
            except ChildStartError:
                self._remove(added)
                raise
            return added.ref
        found = slots.get(request.id)
        if found is None:
            raise KeyError(f"{self} has no child {request.id!r}")
        slot = found
        if isinstance(request, GetChild):
            return slot.ref
        if isinstance(request, TerminateChild):
            if slot.running is not None:
                self._shutdown_slot(slot)
            self._pending.pop(slot.id, None)
            self._crashes.pop(slot.id, None)
            assert slot.spec is not None
            if slot.spec.restart == "temporary":
                self._remove(slot)
            else:
                slot.close()
            return None
        if slot.status != "stopped":
            raise ValueError(f"child {slot.id!r} is {slot.status}; terminate it first")
        if isinstance(request, RestartChild):
            slot.mailbox.reopen()
            try:
                self._start_slot(slot, None)
            except ChildStartError:
                slot.close()
                raise
            return slot.ref
        self._remove(slot)  # DeleteChild
        return None

    def _which_children(self) -> list[ChildInfo]:
        slots = self._slot.children
        return [ChildInfo(i, slots[i].status, slots[i].restarts, slots[i].ref) for i in self._order]

    def _count_children(self) -> dict[str, int]:
        slots = [self._slot.children[i] for i in self._order]
        supervisors = sum(1 for s in slots if isinstance(s.ref, SupervisorRef))
        return {
            "specs": len(slots),
            "active": sum(1 for s in slots if s.running is not None),
            "supervisors": supervisors,
            "workers": len(slots) - supervisors,
        }


def _is_supervisor(spec: ChildSpec) -> bool:
    """A child built by a `Supervisor` class is one (it gets a `SupervisorRef`)."""
    return isinstance(spec.factory, type) and issubclass(spec.factory, Supervisor)


def _close_root(actor: Actor, exit_: Exit) -> None:
    """Exit hook of a root supervisor: nothing restarts it, so its subtree closes."""
    actor._slot.close()
