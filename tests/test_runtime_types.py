"""Message types: kept in the envelope and the dead letter, and choosing the retry policy
and ack timeout before the transport's settings."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from surelay import Envelope, Outcome, RetryPolicy, Runtime, RuntimeConfig, TransientError
from tests.helpers import Recorder


def always_busy(_envelope: Envelope) -> None:
    raise TransientError("busy")


def test_the_types_retry_policy_wins_over_the_transports(tmp_path: Path) -> None:
    recorder = Recorder(always_busy)
    fast = RetryPolicy(max_attempts=2, base_delay=0, jitter="none")
    config = RuntimeConfig(
        retry=RetryPolicy(max_attempts=9, base_delay=0, jitter="none"),
        retry_per_transport={"t": RetryPolicy(max_attempts=4, base_delay=0, jitter="none")},
        retry_per_type={"otp": fast},
    )
    with Runtime.open(tmp_path, transports={"t": recorder}, config=config) as rt:
        typed = rt.send("t", b"code", key="a", type="otp")
        plain = rt.send("t", b"mail", key="b", type="newsletter")  # a type without a policy
        assert typed.wait(10) is Outcome.DEAD_LETTERED
        assert plain.wait(10) is Outcome.DEAD_LETTERED
        tries = {key: [e for e in recorder.attempts if e.key == key] for key in "ab"}
        assert len(tries["a"]) == 2 and len(tries["b"]) == 4
        assert {e.type for e in tries["a"]} == {"otp"}
        letters = {d.message_id: d for d in rt.dead_letters.list()}
        assert letters[typed.message_id].type == "otp"
        assert letters[typed.message_id].attempts == 2


def test_the_types_ack_timeout_cuts_off_its_calls_on_threads_and_on_the_loop(
    tmp_path: Path,
) -> None:
    release = threading.Event()

    def hangs(envelope: Envelope) -> None:
        if envelope.type == "quick" and envelope.attempt == 1:
            release.wait(30)

    async def ahangs(envelope: Envelope) -> None:
        if envelope.type == "quick" and envelope.attempt == 1:
            await asyncio.sleep(30)

    config = RuntimeConfig(
        ack_timeout=60.0,
        ack_timeout_per_type={"quick": 0.2},
        retry=RetryPolicy(base_delay=0, jitter="none"),
    )
    for name, transport in (("threads", hangs), ("loop", ahangs)):
        with Runtime.open(tmp_path / name, transports={"t": transport}, config=config) as rt:
            slow = rt.send("t", b"x", key="k", type="quick")
            # cut off at 0.2 s, not 60: retried, and the second attempt returns
            assert slow.wait(10) is Outcome.DELIVERED
            assert rt.stats().retried == 1
            assert rt.send("t", b"y", type="other").wait(10) is Outcome.DELIVERED
    release.set()
