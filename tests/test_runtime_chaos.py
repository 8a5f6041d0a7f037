"""Chaos: transports that fail and senders that crash on 5% of attempts each."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

import pytest

from surelay import Envelope, Outcome, RetryPolicy, TransientError

from .helpers import open_runtime


class SenderCrash(BaseException):
    """Escapes the transport handling, so it crashes the sender."""


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_every_accepted_message_ends_delivered_or_dead_lettered(tmp_path: Path, kind: str) -> None:
    rng = random.Random(2024)
    lock = threading.Lock()
    delivered: list[str] = []

    def chaotic(envelope: Envelope) -> None:
        with lock:
            roll = rng.random()
        if roll < 0.05:
            raise TransientError("chaos: transient")
        if roll < 0.10:
            raise SenderCrash("chaos: crash")
        with lock:
            delivered.append(envelope.message_id)

    async def async_chaotic(envelope: Envelope) -> None:
        await asyncio.sleep(0)
        chaotic(envelope)

    transport = async_chaotic if kind == "async" else chaotic
    policy = RetryPolicy(max_attempts=6, base_delay=0.001, max_delay=0.005)
    with open_runtime(tmp_path, {"t": transport}, retry=policy, partitions=4) as rt:  # type: ignore[dict-item]
        receipts = []
        for start in range(0, 3000, 250):
            receipts += rt.send_batch(
                [
                    {"transport": "t", "payload": b"x", "key": f"k{i % 40}"}
                    for i in range(start, start + 250)
                ]
            )
        receipts += [rt.send("t", b"y", key=f"k{i % 40}") for i in range(500)]
        assert rt.flush(60) is True
        outcomes = [r.wait(0) for r in receipts]
        stats = rt.stats()
        restarts = sum(c.restarts for c in rt.supervisor.child("senders").which_children())  # type: ignore[attr-defined]
        letters = rt.dead_letters.list(limit=10_000)
    assert set(outcomes) <= {Outcome.DELIVERED, Outcome.DEAD_LETTERED}
    assert outcomes.count(Outcome.DELIVERED) == len(set(delivered)) == stats.delivered
    assert outcomes.count(Outcome.DEAD_LETTERED) == len(letters) == stats.dead_lettered
    assert stats.accepted == 3500 and stats.in_flight == 0 and stats.outbox_pending == 0
    assert restarts > 50  # the senders really crashed, and were restarted each time
    assert {d.reason_class for d in letters} <= {"crash", "exhausted"}
