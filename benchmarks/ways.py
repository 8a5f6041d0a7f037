"""The way of one send to its receipt, and of one replay to its delivery: which of
surelay's modules run on it, on how many threads, and how often the work passes from
one thread to another (a hand-off). Run:

    .venv/bin/python benchmarks/ways.py

Measured with a profiler on every thread (`sys.setprofile`, `threading.setprofile`)
while one message takes the way, in a runtime already warm (its first send done).
Storage and supervision are counted apart: every way crosses them.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from surelay import Envelope, PermanentError, RetryPolicy, Runtime, RuntimeConfig

APART = ("surelay.storage", "surelay.supervision")


class Way:
    """Calls into surelay's modules, with the thread each ran on, while recording."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []
        self.recording = False
        self._lock = threading.Lock()

    def profile(self, frame: FrameType, event: str, _arg: Any) -> None:
        if not self.recording or event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if module.startswith("surelay"):
            with self._lock:
                self.calls.append((threading.get_ident(), module))

    @contextmanager
    def record(self) -> Iterator[None]:
        self.calls.clear()
        self.recording = True
        try:
            yield
        finally:
            self.recording = False

    def report(self, title: str) -> None:
        modules = list(dict.fromkeys(module for _, module in self.calls))
        own = [m for m in modules if not m.startswith(APART)]
        changes = sum(
            1
            for before, after in zip(self.calls, self.calls[1:], strict=False)
            if before[0] != after[0]
        )
        threads = len({ident for ident, _ in self.calls})
        print(
            f"{title}: {len(own)} modules ({len(modules)} with storage and supervision), "
            f"{threads} threads, {changes} hand-offs"
        )
        print("   " + ", ".join(m.removeprefix("surelay.") for m in own))


def main() -> None:
    way = Way()
    failing = [False]

    def transport(_envelope: Envelope) -> None:
        if failing[0]:
            raise PermanentError("refused, to make a dead letter")

    sys.setprofile(way.profile)
    threading.setprofile(way.profile)
    try:
        with (
            tempfile.TemporaryDirectory() as path,
            Runtime.open(
                path,
                transports={"t": transport},
                config=RuntimeConfig(retry=RetryPolicy(max_attempts=1)),
            ) as rt,
        ):
            rt.send("t", b"warm", key="w").wait(10)
            with way.record():
                rt.send("t", b"x", key="k").wait(10)
            way.report("a send, to its receipt")
            failing[0] = True
            rt.send("t", b"y", key="d").wait(10)
            failing[0] = False
            assert rt.flush(10)
            (letter,) = rt.dead_letters.list()
            with way.record():
                rt.dead_letters.replay(ids=[letter.id])  # returns once it is done
            way.report("a replay, to its delivery")
    finally:
        sys.setprofile(None)
        threading.setprofile(None)


if __name__ == "__main__":
    main()
