"""Shared helpers for runtime tests: a hand-moved clock and recording transports."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from surelay import Envelope, Runtime, RuntimeConfig


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `predicate` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        threading.Event().wait(0.002)


class Clock:
    """Epoch seconds moved by hand (thread-safe)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self._now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class Recorder:
    """A transport that records every attempt and runs `behaviour` (which may raise)."""

    def __init__(self, behaviour: Callable[[Envelope], None] | None = None) -> None:
        self.attempts: list[Envelope] = []
        self.delivered: list[Envelope] = []
        self._behaviour = behaviour
        self._cond = threading.Condition()

    def __call__(self, envelope: Envelope) -> None:
        with self._cond:
            self.attempts.append(envelope)
            self._cond.notify_all()
        if self._behaviour is not None:
            self._behaviour(envelope)
        with self._cond:
            self.delivered.append(envelope)
            self._cond.notify_all()

    def wait_attempts(self, count: int, timeout: float = 10.0) -> list[Envelope]:
        """Block until at least `count` attempts were made; fails the test otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.attempts) < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"only {len(self.attempts)} of {count} attempts made"
                self._cond.wait(remaining)
            return list(self.attempts)

    def payloads(self, key: str | None = None) -> list[bytes]:
        with self._cond:
            return [e.payload for e in self.delivered if key is None or e.key == key]


class Gate:
    """A transport behaviour that blocks until opened."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self.entered = threading.Event()

    def __call__(self, _envelope: Envelope) -> None:
        self.entered.set()
        assert self._open.wait(30), "gate never opened"

    def open(self) -> None:
        self._open.set()


def open_runtime(
    path: Path, transports: dict[str, Callable[[Envelope], None]], **config: object
) -> Runtime:
    return Runtime.open(path, transports=transports, config=RuntimeConfig(**config))  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def system_chromium() -> str:  # noqa: RET503  # (pytest.skip and fail raise)
    """The system's Chromium for the browser tests; without one the calling module is
    skipped, unless SURELAY_BROWSER_TESTS=required (as in CI), where that is a failure."""
    import os  # noqa: PLC0415
    import shutil  # noqa: PLC0415

    import pytest  # noqa: PLC0415

    found = next(
        (path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None
    )
    if found is not None:
        return found
    if os.environ.get("SURELAY_BROWSER_TESTS") == "required":
        pytest.fail(
            "SURELAY_BROWSER_TESTS=required but no chromium on PATH (apt-get install chromium)",
            pytrace=False,
        )
    pytest.skip(
        "no system Chromium: install it (apt-get install chromium) to run the browser tests "
        "(.ci/run does, and requires them)",
        allow_module_level=True,
    )
