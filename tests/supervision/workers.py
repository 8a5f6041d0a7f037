"""Test actors and helpers for the supervision suite (real threads, no sleeps)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pykka import ActorDeadError

from surelay.supervision import Actor, ChildSpec, CrashReport, Ref, Supervisor, SupervisorRef

WAIT = 10.0  # seconds any single wait may take before the test fails


class Boom(Exception):
    """The crash our test actors raise on purpose."""


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Journal:
    """What the workers did, shared with the test."""

    events: list[tuple[str, str]] = field(default_factory=list)
    starts: Counter[str] = field(default_factory=Counter)
    failing_starts: Counter[str] = field(default_factory=Counter)
    crashes: list[tuple[str, Any]] = field(default_factory=list)
    handled: list[tuple[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, who: str, what: str) -> None:
        with self.lock:
            self.events.append((who, what))

    def of(self, what: str) -> list[str]:
        with self.lock:
            return [who for who, w in self.events if w == what]


@dataclass(frozen=True)
class Gate:
    """Blocks the actor handling it until `release` is set (and says it arrived)."""

    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class Worker(Actor):
    """Messages: 'crash', 'exit', 'incarnation', ('echo', x), ('log', x), Gate."""

    def __init__(self, journal: Journal, name: str) -> None:
        super().__init__()
        self.journal = journal
        self.name = name
        with journal.lock:
            journal.starts[name] += 1
            self.incarnation = journal.starts[name]

    def on_start(self) -> None:
        with self.journal.lock:
            if self.journal.failing_starts[self.name] > 0:
                self.journal.failing_starts[self.name] -= 1
                raise Boom(f"{self.name} refuses to start")
        self.journal.record(self.name, "start")

    def on_stop(self) -> None:
        self.journal.record(self.name, "stop")

    def on_restart(self, crash: CrashReport) -> None:
        with self.journal.lock:
            self.journal.crashes.append((self.name, crash.message))

    def on_receive(self, message: Any) -> Any:
        if message == "crash" or (isinstance(message, tuple) and message[0] == "crash"):
            raise Boom(self.name)
        if message == "exit":
            self.stop()
            return "exiting"
        if message == "incarnation":
            return self.incarnation
        if isinstance(message, Gate):
            message.arrived.set()
            message.release.wait(WAIT)
            return "released"
        if isinstance(message, tuple) and message[0] == "echo":
            return message[1]
        if isinstance(message, tuple) and message[0] == "log":
            with self.journal.lock:
                self.journal.handled.append((self.name, message[1]))
            return None
        raise AssertionError(f"unexpected message {message!r}")

    def ping(self) -> int:
        """For proxy tests."""
        return self.incarnation


def worker(journal: Journal, name: str, **spec: Any) -> ChildSpec:
    return ChildSpec(name, Worker, args=(journal, name), **spec)


def exit_normally(ref: Ref) -> None:
    """Make a child stop itself and wait until its supervisor has handled the exit.

    The child's `stop()` queues a stop behind the reply; an ask sent after it is answered
    by the next incarnation or failed when the slot closes: either way, after the
    supervisor handled the exit.
    """
    assert ref.ask("exit", WAIT) == "exiting"
    sync(ref)


def sync(ref: Ref) -> int | None:
    """The incarnation now serving `ref`, or None if it is stopped for good."""
    try:
        return int(ref.ask("incarnation", WAIT))
    except ActorDeadError:
        return None


def crash(ref: Ref) -> None:
    """Crash the child through an ask: when it raises, the supervisor has the report."""
    try:
        ref.ask("crash", WAIT)
    except Boom:
        return
    raise AssertionError("the child did not crash")


@contextmanager
def running(*children: ChildSpec, **flags: Any) -> Iterator[SupervisorRef]:
    sup = Supervisor.start(children, **flags)
    try:
        yield sup
    finally:
        sup.stop(WAIT)


# OTP's restart types: (restart, how the child ends, is it restarted?). The pure rule
# (test_rules.py) and the running supervisor (test_restart_types.py) are both held to it.
RESTART_TYPES = [
    ("permanent", "normal", True),
    ("permanent", "crash", True),
    ("transient", "normal", False),
    ("transient", "crash", True),
    ("temporary", "normal", False),
    ("temporary", "crash", False),
]
