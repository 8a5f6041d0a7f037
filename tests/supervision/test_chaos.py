"""Chaos: crashes on every 7th message while four threads ask; nothing goes unanswered."""

from __future__ import annotations

import threading
from typing import Any

from surelay.supervision import Actor, ChildSpec, Supervisor

from .workers import WAIT, Boom


class Flaky(Actor):
    """Crashes on every 7th message it handles (counted across incarnations)."""

    def __init__(self, counter: list[int], lock: threading.Lock) -> None:
        super().__init__()
        self.counter = counter
        self.lock = lock

    def on_receive(self, message: Any) -> Any:
        with self.lock:
            self.counter[0] += 1
            n = self.counter[0]
        if n % 7 == 0:
            raise Boom(f"message {n}")
        return message


def test_every_ask_is_answered_under_crashes() -> None:
    lock = threading.Lock()
    counters = {f"w{i}": [0] for i in range(4)}
    sup = Supervisor.start(
        [ChildSpec(name, Flaky, args=(counter, lock)) for name, counter in counters.items()],
        intensity=10_000,
        period=1.0,
    )
    refs = [sup.child(name) for name in counters]
    outcomes = {"answered": 0, "crashed": 0}
    outcome_lock = threading.Lock()

    def client(offset: int) -> None:
        for n in range(500):
            ref = refs[(n + offset) % 4]
            try:
                assert ref.ask(("msg", offset, n), WAIT) == ("msg", offset, n)
                kind = "answered"
            except Boom:
                kind = "crashed"
            with outcome_lock:
                outcomes[kind] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert not any(t.is_alive() for t in threads)
        assert outcomes["answered"] + outcomes["crashed"] == 2000
        assert outcomes["crashed"] == sum(c[0] // 7 for c in counters.values())
        assert sum(info.restarts for info in sup.which_children()) == outcomes["crashed"]
    finally:
        sup.stop(WAIT)
