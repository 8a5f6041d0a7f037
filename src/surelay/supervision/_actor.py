"""`Actor`: a pykka `ThreadingActor` whose failures are reported, never swallowed.

pykka stops an actor on an exception in a `tell` but only returns it to the caller of an
`ask`, and drains the inbox when the actor stops. Here:

- any unhandled exception in a handler, tell or ask, crashes the incarnation; an ask's
  caller also receives it;
- the mailbox belongs to the child, not the incarnation: a crash leaves queued messages
  for the next incarnation (see `_mailbox.py`);
- how the incarnation ended (an `Exit`) is reported to its supervisor *before* the caller
  of the last ask is answered, so a caller that saw the crash knows the supervisor has
  the report queued.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pykka
from pykka import ActorDeadError
from pykka._envelope import Envelope
from pykka.messages import _ActorStop

from surelay.supervision._mailbox import InboxView
from surelay.supervision._slot import Slot

if TYPE_CHECKING:
    from surelay.supervision._ref import Ref

__all__ = ["NO_MESSAGE", "Actor", "CrashReport", "Exit"]

logger = logging.getLogger("surelay.supervision")

NO_MESSAGE: Any = type("NoMessage", (), {"__repr__": lambda self: "NO_MESSAGE"})()
"""`CrashReport.message` when the crash happened outside a message handler."""


@dataclass(frozen=True, slots=True)
class CrashReport:
    """Why the previous incarnation crashed, handed to `Actor.on_restart`.

    `message` is the message being handled at the crash (the only one lost to the actor),
    or `NO_MESSAGE` if it crashed in `on_start` or `on_restart`.
    """

    error: BaseException
    message: Any


@dataclass(frozen=True, slots=True)
class Exit:
    """How one incarnation ended. `kind`: `normal` (it stopped itself), `shutdown` (its
    supervisor took the mailbox lease away) or `crash`."""

    generation: int
    kind: Literal["normal", "shutdown", "crash"]
    crash: CrashReport | None = None


ExitHook = Callable[["Actor", Exit], None]


class Actor(pykka.ThreadingActor):
    """Base class for supervised actors: implement `on_receive` as in pykka.

    Started by a `Supervisor` (through a `ChildSpec`), an actor gets `self.ref`, the
    stable `Ref` of its child slot, which outlives this incarnation; `self.actor_ref` is
    pykka's ref for this incarnation only. Started alone with `MyActor.start()`, it
    behaves as a pykka actor that stops on any unhandled exception.

    Not in pykka's `ActorRegistry` when supervised: the supervisor owns its children, so
    `ActorRegistry.stop_all()` does not stop them (stop the supervisor instead).

    Its thread is a daemon thread (pykka's default is not): a tree never keeps the
    interpreter alive after the main thread ends; stop it to end it cleanly.
    """

    use_daemon_thread = True

    ref: Ref | None
    """The stable `Ref` of this child, or None for an actor started without a supervisor."""

    last_crash: CrashReport | None
    """Why the previous incarnation crashed, or None."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ref = None
        self.last_crash = None
        self._exit_requested = False
        self._current: Envelope[Any] | None = None
        self._start_done = threading.Event()
        self._start_error: BaseException | None = None
        self._done = threading.Event()
        # Standalone until a supervisor binds it: a private slot, closed at exit.
        slot = Slot(f"{type(self).__name__} ({self.actor_urn})", is_supervisor=False)
        self._bind(slot, 1, _close_own_slot, None, None)
        slot.mailbox.lease(1)

    def _bind(
        self,
        slot: Slot,
        generation: int,
        exit_hook: ExitHook,
        ref: Ref | None,
        crash: CrashReport | None,
    ) -> None:
        """Attach this (not yet started) incarnation to a child slot."""
        self._slot = slot
        self._mailbox = slot.mailbox
        self._generation = generation
        self._exit_hook = exit_hook
        self.ref = ref
        self.last_crash = crash
        self.actor_inbox = InboxView(slot.mailbox, generation)
        self._actor_ref = pykka.ActorRef(self)

    # -- hooks -------------------------------------------------------------------------

    def on_restart(self, crash: CrashReport) -> None:
        """Run in a new incarnation after `on_start` when the previous one crashed.

        `crash.message` is the message the old incarnation died on: the only message lost
        to the actor. Override to route it elsewhere (retry, dead letters). An exception
        here fails the restart, as one in `on_start` does.
        """

    def stop(self) -> None:
        """Stop after the messages already queued: a normal exit, so a transient child is
        not restarted (a permanent one is). Raises `ActorDeadError` if already stopped."""
        self._mailbox.put(Envelope(_ActorStop()))

    # -- the loop ----------------------------------------------------------------------

    def _await_start(self) -> None:
        """Wait for `on_start` (and `on_restart`) to finish; re-raise their failure."""
        self._start_done.wait()
        if self._start_error is not None:
            self._done.wait()
            raise self._start_error

    def _actor_loop(self) -> None:
        try:
            self.on_start()
            if self.last_crash is not None:
                self.on_restart(self.last_crash)
        except BaseException as error:  # a failed start is reported to whoever started it
            logger.error("%s failed to start", self, exc_info=error)
            self._start_error = error
            self._finish()
            self._done.set()
            self._start_done.set()
            return
        self._start_done.set()
        exit_, last_reply, result = self._run()
        self._finish()
        self._report(exit_)
        if last_reply is not None and last_reply.reply_to is not None:
            with contextlib.suppress(queue.Full):  # answered: we were abandoned
                if exit_.crash is not None:
                    failure = exit_.crash.error
                    last_reply.reply_to.set_exception(
                        exc_info=(type(failure), failure, failure.__traceback__)
                    )
                else:
                    last_reply.reply_to.set(result)

    def _run(self) -> tuple[Exit, Envelope[Any] | None, Any]:
        """Handle messages until told to stop or crashed.

        Returns the exit, the envelope whose reply waits until the exit is reported,
        and that reply's value.
        """
        mailbox = self._mailbox
        generation = self._generation
        handle = self._handle_receive
        while True:
            envelope = mailbox.get(generation)
            if envelope is None:
                self._call_on_stop()
                return Exit(generation, "shutdown"), None, None
            self._current = envelope
            message = envelope.message
            try:
                if isinstance(message, _ActorStop):
                    self._exit_requested = True
                    result = None
                else:
                    result = handle(message)
            except BaseException as error:
                crash = CrashReport(error, message)
                logger.error("Unhandled exception in %s", self, exc_info=error)
                try:
                    self.on_failure(type(error), error, error.__traceback__)
                except Exception:
                    logger.exception("on_failure of %s failed", self)
                return Exit(generation, "crash", crash), envelope, None
            if self._exit_requested:
                self._call_on_stop()
                return Exit(generation, "normal"), envelope, result
            self._current = None
            if envelope.reply_to is not None:
                with contextlib.suppress(queue.Full):  # answered: we were abandoned
                    envelope.reply_to.set(result)

    def _call_on_stop(self) -> None:
        try:
            self.on_stop()
        except Exception:
            logger.exception("on_stop of %s failed", self)

    def _finish(self) -> None:
        self.actor_stopped.set()
        pykka.ActorRegistry.unregister(self.actor_ref)

    def _report(self, exit_: Exit) -> None:
        try:
            self._exit_hook(self, exit_)
        except Exception:
            logger.exception("reporting the exit of %s failed", self)
        finally:
            self._done.set()

    def _abandon(self) -> None:
        """Called by a supervisor that gave up waiting for this incarnation to stop: the
        caller of the message it is stuck on is told instead of left waiting."""
        envelope = self._current
        if envelope is not None and envelope.reply_to is not None:
            error = ActorDeadError(f"{self} was abandoned: it did not stop in time")
            with contextlib.suppress(queue.Full):
                envelope.reply_to.set_exception(exc_info=(ActorDeadError, error, None))


def _close_own_slot(actor: Actor, exit_: Exit) -> None:
    """Exit hook of a standalone actor: nothing restarts it, so its mailbox closes."""
    actor._slot.close()
