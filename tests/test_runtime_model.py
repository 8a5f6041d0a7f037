"""The whole runtime against a sequential model: random sends over a few keys, each
carrying a script of what its transport attempts answer, with clean restarts between
them and a circuit breaker that trips and recovers along the way. However the senders,
the retry timer, the breaker and the restarts interleave, each message ends as its
key's line would end it if run one message at a time: delivered, dead-lettered
(`permanent` or `exhausted`) after exactly the scripted attempts, or a duplicate that
is never attempted; and each key's attempts come in acceptance order."""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surelay import (
    BreakerPolicy,
    Envelope,
    Outcome,
    PermanentError,
    Receipt,
    RetryPolicy,
    Runtime,
    TransientError,
)

from .helpers import open_runtime

KEYS = ("a", "b", "c")
POLICY = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.002, jitter="none")
# A breaker that trips often and recovers fast: while it is open a message waits
# without spending attempts, so the model below holds whether or not it tripped.
BREAKER = BreakerPolicy(window=4, min_calls=4, failure_ratio=0.5, open_for=0.005)


@dataclass(frozen=True)
class Send:
    key: str
    script: str
    """Attempt n answers `script[n - 1]`: "T" a transient error, "P" a permanent one;
    an attempt past the script's end is delivered."""
    idempotency: int | None
    """None: the message's own id; n: the idempotency key `<key>-n`, shared with the
    other messages of its key that name n (dedup is per key: see the README)."""

    def idempotency_key(self) -> str | None:
        return None if self.idempotency is None else f"{self.key}-{self.idempotency}"


def answer(script: str, attempt: int) -> str:
    """What attempt `attempt` (from 1) of a message with `script` answers: "T", "P" or
    "ok" (the transport below and the model read scripts the same way)."""
    return script[attempt - 1] if attempt <= len(script) else "ok"


RESTART = "restart"

sends = st.builds(
    Send,
    st.sampled_from(KEYS),
    st.text("TP", max_size=3),
    st.none() | st.integers(0, 2),
)
scenarios = st.lists(sends | st.just(RESTART), min_size=1, max_size=25)


@dataclass(frozen=True)
class Expected:
    outcome: Outcome
    reason_class: str | None
    attempts: int


def model(messages: list[Send]) -> list[Expected]:
    """Each message's end, run one at a time in acceptance order."""
    delivered: set[str] = set()
    out = []
    for send in messages:
        shared = send.idempotency_key()
        if shared is not None and shared in delivered:
            out.append(Expected(Outcome.DUPLICATE, None, 0))
            continue
        for attempt in range(1, POLICY.max_attempts + 1):
            reply = answer(send.script, attempt)
            if reply == "ok":
                if shared is not None:
                    delivered.add(shared)
                out.append(Expected(Outcome.DELIVERED, None, attempt))
                break
            if reply == "P":
                out.append(Expected(Outcome.DEAD_LETTERED, "permanent", attempt))
                break
        else:
            out.append(Expected(Outcome.DEAD_LETTERED, "exhausted", POLICY.max_attempts))
    return out


class Scripted:
    """A transport that answers each attempt as the message's script says, and records
    every attempt in the order the transport saw them."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def __call__(self, envelope: Envelope) -> None:
        with self._lock:
            self.attempts.append((envelope.message_id, envelope.attempt))
        reply = answer(envelope.payload.decode().split(":")[1], envelope.attempt)
        if reply == "T":
            raise TransientError(f"scripted: attempt {envelope.attempt}")
        if reply == "P":
            raise PermanentError(f"scripted: attempt {envelope.attempt}")


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios)
def test_every_message_ends_as_the_sequential_model_says(steps: list[Send | str]) -> None:
    transport = Scripted()
    messages: list[Send] = []
    ids: list[str] = []
    last_receipts: dict[int, Receipt] = {}  # the final runtime's; earlier ones end on close
    with tempfile.TemporaryDirectory() as path:

        def start() -> Runtime:
            return open_runtime(Path(path), {"t": transport}, retry=POLICY, breaker=BREAKER)

        rt = start()
        try:
            for step in steps:
                if isinstance(step, str):
                    rt.close()
                    rt, last_receipts = start(), {}
                    continue
                payload = f"{len(messages)}:{step.script}".encode()
                receipt = rt.send(
                    "t", payload, key=step.key, idempotency_key=step.idempotency_key()
                )
                last_receipts[len(messages)] = receipt
                messages.append(step)
                ids.append(receipt.message_id)
            assert rt.flush(30)
            stats = rt.stats()
            dead = {d.message_id: d for d in rt.dead_letters.list(limit=1000)}
        finally:
            rt.close()

    assert (stats.outbox_pending, stats.in_flight) == (0, 0)
    index = {message_id: i for i, message_id in enumerate(ids)}
    made: dict[int, list[int]] = {i: [] for i in range(len(ids))}
    for message_id, attempt in transport.attempts:
        made[index[message_id]].append(attempt)

    for i, expected in enumerate(model(messages)):
        assert made[i] == list(range(1, expected.attempts + 1)), (i, messages[i])
        letter = dead.get(ids[i])
        if expected.outcome is Outcome.DEAD_LETTERED:
            assert letter is not None, (i, messages[i])
            assert (letter.reason_class, letter.attempts) == (
                expected.reason_class,
                expected.attempts,
            )
        else:
            assert letter is None, (i, messages[i], letter)
        if i in last_receipts:
            assert last_receipts[i].wait(5) is expected.outcome, (i, messages[i])

    for key in KEYS:  # a key's attempts come message by message, in acceptance order
        order = [index[m] for m, _ in transport.attempts if messages[index[m]].key == key]
        assert order == sorted(order), key
