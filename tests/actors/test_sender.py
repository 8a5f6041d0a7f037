"""The Sender's decisions, from its endpoint record alone: a real store, tracker and
engines, the retry scheduler and dead-letter sink as stand-ins that keep what they are
told; no runtime."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from surelay.actors.dead_letter import Capture
from surelay.actors.sender import Deliver, PartitionState, Sender, SenderEndpoint
from surelay.actors.window import Orphans
from surelay.backlog import Schedule
from surelay.config import RetryPolicy, RuntimeConfig
from surelay.counters import Counters
from surelay.delivery import Engines
from surelay.delivery.breakers import Breakers
from surelay.envelope import Envelope
from surelay.errors import PermanentError, TransientError
from surelay.peers import Peers
from surelay.receipts import Outcome, Receipt, Tracker
from surelay.storage.records import OutboxEntry
from surelay.storage.store import Store
from surelay.supervision import ChildSpec
from surelay.telemetry import Telemetry
from tests.actors.stand_ins import Inbox, tree
from tests.helpers import Clock, wait_until

WAIT = 10.0


@dataclass
class Bench:
    """One sender on a real store, with stand-ins for its peers."""

    store: Store
    tracker: Tracker
    counters: Counters
    calls: list[Envelope]
    told_retry: list[Any]
    told_sink: list[Any]
    state: PartitionState
    peers: Peers

    def accept(self, *envelopes: Envelope) -> list[Receipt]:
        """Accept into the outbox (as the way in does) and hand to the sender."""
        receipts = self.tracker.add([e.message_id for e in envelopes])
        entries = self.store.enqueue([(e, 0) for e in envelopes]).result(WAIT)
        self.peers.senders[0].tell(Deliver(tuple(entries)))
        return receipts

    def outbox(self) -> list[OutboxEntry]:
        with self.store.read() as txn:
            return [
                entry
                for seq, raw in self.store.outbox.window(
                    txn, 0, after=0, looked=100, max_bytes=1 << 20
                )[0]
                if (entry := self.store.outbox.decode(0, seq, raw)) is not None
            ]


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Callable[[Callable[[Envelope], None]], Bench]]:
    stops: list[Callable[[], None]] = []

    def make(transport: Callable[[Envelope], None]) -> Bench:
        clock = Clock()
        config = RuntimeConfig(
            partitions=1,
            clock=clock,
            retry=RetryPolicy(max_attempts=3, base_delay=5.0, max_delay=5.0, jitter="none"),
        )
        store = Store.open(tmp_path / "d", claim=True, clock=clock)
        telemetry = Telemetry()
        calls: list[Envelope] = []

        def calling(envelope: Envelope) -> None:
            calls.append(envelope)
            transport(envelope)

        transports = {"t": calling}
        breakers = Breakers(config.breaker, transports)
        engines = Engines(transports, config, breakers, telemetry)
        tracker = Tracker()
        counters = Counters(telemetry)
        peers = Peers(partitions=1, replay_partitions=1)
        endpoint = SenderEndpoint(
            config, store, transports, engines, tracker, counters, telemetry, Orphans(), peers
        )
        state = PartitionState(0)
        told_retry: list[Any] = []
        told_sink: list[Any] = []
        root = tree(
            ChildSpec("sender-0", Sender, args=(endpoint, state)),
            ChildSpec("retry", Inbox, args=(told_retry, threading.Event())),
            ChildSpec("dead_letters", Inbox, args=(told_sink, threading.Event())),
        )
        peers.attach(root)

        def stop() -> None:
            root.stop(timeout=WAIT)
            engines.stop(WAIT)
            telemetry.close()
            store.close()

        stops.append(stop)
        return Bench(store, tracker, counters, calls, told_retry, told_sink, state, peers)

    yield make
    for stop in stops:
        stop()


def message(message_id: str, key: str = "k", idempotency_key: str | None = None) -> Envelope:
    return Envelope(message_id, "t", b"x", key=key, idempotency_key=idempotency_key or "")


def test_a_delivered_message_leaves_the_outbox_and_its_receipt_says_delivered(
    bench: Callable[[Callable[[Envelope], None]], Bench],
) -> None:
    b = bench(lambda envelope: None)
    (receipt,) = b.accept(message("m1"))
    assert receipt.wait(WAIT) is Outcome.DELIVERED
    assert [e.message_id for e in b.calls] == ["m1"]
    assert b.outbox() == []
    with b.store.read() as txn:
        assert b.store.dedup.seen(txn, ["m1"], now=b.store.clock()) == {"m1"}
    assert b.counters.snapshot()["delivered"] == 1


def test_a_permanent_failure_is_handed_to_the_sink_once(
    bench: Callable[[Callable[[Envelope], None]], Bench],
) -> None:
    def refuse(envelope: Envelope) -> None:
        raise PermanentError("no such user")

    b = bench(refuse)
    b.accept(message("m1"))
    wait_until(lambda: bool(b.told_sink), WAIT)
    (capture,) = b.told_sink
    assert isinstance(capture, Capture)
    assert (capture.entry.envelope.message_id, capture.reason_class) == ("m1", "permanent")
    assert "no such user" in capture.reason
    assert capture.attempts == 1
    assert b.told_retry == []


def test_a_transient_failure_is_held_for_its_retry_with_the_next_attempt_written(
    bench: Callable[[Callable[[Envelope], None]], Bench],
) -> None:
    def fail(envelope: Envelope) -> None:
        raise TransientError("busy")

    b = bench(fail)
    b.accept(message("m1"))
    wait_until(lambda: bool(b.told_retry), WAIT)
    (schedule,) = b.told_retry
    assert isinstance(schedule, Schedule)
    assert schedule.entry.envelope.attempt == 2
    assert schedule.at == pytest.approx(schedule.entry.due_at)
    wait_until(lambda: [e.envelope.attempt for e in b.outbox()] == [2], WAIT)
    assert b.told_sink == []
    assert b.counters.snapshot()["retried"] == 1


def test_a_key_has_one_call_at_a_time_and_keeps_its_order(
    bench: Callable[[Callable[[Envelope], None]], Bench],
) -> None:
    gate = threading.Event()
    running: list[str] = []
    most = [0]
    lock = threading.Lock()

    def slow(envelope: Envelope) -> None:
        with lock:
            running.append(envelope.message_id)
            most[0] = max(most[0], len(running))
        gate.wait(WAIT)
        with lock:
            running.remove(envelope.message_id)

    b = bench(slow)
    receipts = b.accept(*(message(f"m{i}") for i in range(5)))
    wait_until(lambda: len(b.calls) == 1, WAIT)
    gate.set()
    assert [r.wait(WAIT) for r in receipts] == [Outcome.DELIVERED] * 5
    assert [e.message_id for e in b.calls] == [f"m{i}" for i in range(5)]
    assert most[0] == 1


def test_a_message_already_delivered_ends_as_a_duplicate_without_a_call(
    bench: Callable[[Callable[[Envelope], None]], Bench],
) -> None:
    b = bench(lambda envelope: None)
    (first,) = b.accept(message("m1", idempotency_key="order-7"))
    assert first.wait(WAIT) is Outcome.DELIVERED
    (second,) = b.accept(message("m2", key="other", idempotency_key="order-7"))
    assert second.wait(WAIT) is Outcome.DUPLICATE
    assert [e.message_id for e in b.calls] == ["m1"]
    assert b.outbox() == []
    assert b.counters.snapshot()["duplicates"] == 1
