"""`Ref` and `SupervisorRef`: handles that stay valid across restarts.

A `Ref` points at a child slot, not at an actor: sends go to the slot's mailbox, which the
current incarnation (or the next one, during a restart) reads. Like pykka's `ActorRef` it
holds no actor state; unlike it, it survives restarts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from pykka import ActorDeadError, ActorProxy, Future
from pykka._envelope import Envelope
from pykka._threading import ThreadingFuture

from surelay.supervision._protocol import (
    CountChildren,
    DeleteChild,
    GetChild,
    Reply,
    RestartChild,
    StartChild,
    Stop,
    TerminateChild,
    WhichChildren,
)

if TYPE_CHECKING:
    from pykka import ActorRef

    from surelay.supervision._actor import Actor
    from surelay.supervision._slot import Slot
    from surelay.supervision._spec import ChildInfo, ChildSpec

__all__ = ["Ref", "SupervisorRef"]


class Ref:
    """A stable handle to a supervised child.

    Messages queued while the child crashes or restarts are handled by the next
    incarnation, in order. Only once the child is stopped for good (terminated, not
    restarted, or its supervisor gone) do `tell` and `ask` raise `pykka.ActorDeadError`.
    """

    __slots__ = ("_mailbox", "_slot")

    def __init__(self, slot: Slot) -> None:
        self._slot = slot
        self._mailbox = slot.mailbox

    @property
    def id(self) -> str:
        """The child's id in its supervisor."""
        return self._slot.id

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._slot.id!r}>"

    def tell(self, message: Any) -> None:
        """Queue `message` for the child without waiting."""
        self._mailbox.put(Envelope(message))

    def ask(self, message: Any, timeout: float | None = None, *, block: bool = True) -> Any:
        """Send `message` and wait up to `timeout` seconds for the reply.

        Raises the handler's exception (which also crashed the child), `pykka.Timeout`, or
        `pykka.ActorDeadError` if the child is stopped for good before it answers. With
        `block=False`, returns a `pykka.Future` instead.
        """
        future: Future[Any] = ThreadingFuture()
        self._mailbox.put(Envelope(message, reply_to=future))
        if block:
            return future.get(timeout=timeout)
        return future

    def proxy(self) -> ActorProxy[Any]:
        """A pykka `ActorProxy` whose calls go through this ref (and so survive restarts)."""
        return ActorProxy(actor_ref=cast("ActorRef[Any]", self))

    def queued(self) -> int:
        """How many messages wait in the child's mailbox (a depth gauge, not a promise)."""
        return len(self._mailbox)

    def is_alive(self) -> bool:
        """False once the child is stopped for good; True while running or restarting."""
        return not self._mailbox.closed

    # -- what pykka's ActorProxy reads from its ref --------------------------------------

    def _actor_weakref(self) -> Actor | None:
        if self._mailbox.closed:
            return None
        return self._slot.actor

    @property
    def actor_class(self) -> type[Any]:
        actor = self._slot.actor
        return type(actor) if actor is not None else object


class SupervisorRef(Ref):
    """A stable handle to a supervisor: administer its children, or stop it.

    Errors follow OTP: `KeyError` for an unknown child id, `ValueError` for a child that
    is running (or restarting) where it must be stopped, or an id that already exists.
    """

    __slots__ = ()

    def _call(self, request: Any, timeout: float | None = None) -> Any:

        reply = self.ask(request, timeout)
        assert isinstance(reply, Reply)
        if reply.error is not None:
            raise reply.error
        return reply.value

    def child(self, id: str) -> Ref:
        """The stable ref of child `id` (a `SupervisorRef` for a nested supervisor)."""

        return cast(Ref, self._call(GetChild(id)))

    def start_child(self, spec: ChildSpec) -> Ref:
        """Add and start a child; `ValueError` if its id exists, `ChildStartError` if its
        `on_start` fails (the spec is then not added)."""

        return cast(Ref, self._call(StartChild(spec)))

    def terminate_child(self, id: str) -> None:
        """Stop a child and keep its spec (a temporary child's spec is removed). Its ref
        raises `ActorDeadError` until `restart_child`; messages queued for it are failed.
        Terminating a stopped child does nothing."""

        self._call(TerminateChild(id))

    def restart_child(self, id: str) -> Ref:
        """Start a terminated child again; its old ref works again. `ValueError` if it runs."""

        return cast(Ref, self._call(RestartChild(id)))

    def delete_child(self, id: str) -> None:
        """Remove a stopped child's spec; `ValueError` if it is running or restarting."""

        self._call(DeleteChild(id))

    def which_children(self, timeout: float | None = None) -> list[ChildInfo]:
        """Every child in start order, with status and restart count (`pykka.Timeout`
        if the supervisor does not answer within `timeout` seconds)."""

        return cast("list[ChildInfo]", self._call(WhichChildren(), timeout))

    def count_children(self) -> dict[str, int]:
        """`specs`, `active` (running), `supervisors` and `workers` counts."""

        return cast("dict[str, int]", self._call(CountChildren()))

    def stop(self, timeout: float | None = None) -> None:
        """Stop every child in reverse start order, then the supervisor.

        Waits up to `timeout` seconds (`pykka.Timeout` after that). Stopping a stopped
        supervisor does nothing. A nested supervisor stopped this way exits normally, so
        its parent restarts it if it is permanent (as in OTP).
        """

        try:
            self.ask(Stop(), timeout)
        except ActorDeadError:
            return
