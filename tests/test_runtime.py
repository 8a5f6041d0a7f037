"""The embedding API: send, receipts, retries, dead letters, dedup, order."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from surelay import (
    BreakerPolicy,
    Envelope,
    Guarantee,
    InvalidMessage,
    Outcome,
    PermanentError,
    Priority,
    RetryPolicy,
    Runtime,
    RuntimeClosed,
    TransientError,
    UnknownTransport,
)
from surelay.errors import StorageError
from surelay.storage import Store
from surelay.storage.records import OutboxEntry

from .helpers import Clock, Gate, Recorder, open_runtime, wait_until

FAST = RetryPolicy(base_delay=0.001, max_delay=0.002, jitter="none")


def outbox_entry(rt: Runtime, message_id: str) -> OutboxEntry:
    with rt._store.read() as txn:
        entry = rt._store.outbox.get(txn, message_id)
    assert entry is not None
    return entry


def test_send_delivers_the_envelope_as_api_md_describes(tmp_path: Path) -> None:
    clock = Clock()
    sink = Recorder()
    with open_runtime(tmp_path, {"sms": sink}, clock=clock) as rt:
        receipt = rt.send("sms", b"hi", key="user-1", headers={"x-a": "1"})
        assert receipt.wait(5) is Outcome.DELIVERED
        envelope = sink.delivered[0]
    assert envelope.message_id == receipt.message_id
    assert (envelope.transport, envelope.payload, envelope.key) == ("sms", b"hi", "user-1")
    assert envelope.idempotency_key == envelope.message_id
    assert envelope.priority is Priority.NORMAL
    # (a traceparent joins them when an OpenTelemetry SDK is installed)
    assert {k: v for k, v in envelope.headers.items() if k != "traceparent"} == {"x-a": "1"}
    assert (envelope.attempt, envelope.created_at) == (1, clock())


def test_retry_delays_follow_the_policy_and_are_persisted(tmp_path: Path) -> None:
    clock = Clock()
    times: list[float] = []

    def failing(envelope: Envelope) -> None:
        times.append(clock())
        raise TransientError("downstream busy")

    sink = Recorder(failing)
    policy = RetryPolicy(max_attempts=4, base_delay=10, multiplier=2, jitter="none")
    with open_runtime(tmp_path, {"t": sink}, clock=clock, retry=policy) as rt:
        receipt = rt.send("t", b"x")
        for n, delay in enumerate([10.0, 20.0, 40.0], start=1):
            sink.wait_attempts(n)
            wait_until(lambda: rt.stats().retry_pending == 1)
            wait_until(lambda n=n: outbox_entry(rt, receipt.message_id).envelope.attempt == n + 1)
            assert outbox_entry(rt, receipt.message_id).due_at == clock() + delay
            clock.advance(delay)
        assert receipt.wait(5) is Outcome.DEAD_LETTERED
        assert [t - times[0] for t in times] == [0, 10, 30, 70]
        (letter,) = rt.dead_letters.list()
        assert (letter.reason_class, letter.attempts, letter.error_type) == (
            "exhausted",
            4,
            "TransientError",
        )
        assert rt.stats().retried == 3


def test_immediate_retries_then_per_transport_policy(tmp_path: Path) -> None:
    clock = Clock()
    flaky = Recorder(lambda e: (_ for _ in ()).throw(ConnectionError("reset")))
    other = Recorder(lambda e: (_ for _ in ()).throw(ConnectionError("reset")))
    immediate = RetryPolicy(max_attempts=3, immediate_retries=2, base_delay=100, max_delay=100)
    with open_runtime(
        tmp_path,
        {"flaky": flaky, "other": other},
        clock=clock,
        retry=RetryPolicy(max_attempts=1),
        retry_per_transport={"flaky": immediate},
    ) as rt:
        first = rt.send("flaky", b"a")
        second = rt.send("other", b"b")
        assert first.wait(5) is Outcome.DEAD_LETTERED  # three attempts, no clock movement
        assert second.wait(5) is Outcome.DEAD_LETTERED
    assert [e.attempt for e in flaky.attempts] == [1, 2, 3]
    assert [e.attempt for e in other.attempts] == [1]


class Crash(BaseException):
    """Not an Exception: escapes the transport handling and crashes the sender."""


def test_dead_letters_carry_every_reason_class(tmp_path: Path) -> None:
    clock = Clock()

    def behaviour(envelope: Envelope) -> None:
        kind = envelope.payload
        if kind == b"permanent":
            raise PermanentError("HTTP 400: no such user")
        if kind == b"invalid":
            raise InvalidMessage("payload is not JSON")
        if kind == b"exhausted":
            raise TimeoutError("read timed out")
        if kind == b"crash":
            raise Crash("segfault-ish")
        if kind == b"classified":
            raise LookupError("no route")

    sink = Recorder(behaviour)
    sink.classify = lambda e: "permanent" if isinstance(e, LookupError) else "transient"  # type: ignore[attr-defined]
    with open_runtime(
        tmp_path, {"t": sink}, clock=clock, retry=RetryPolicy(max_attempts=1), message_ttl=60.0
    ) as rt:
        receipts = {
            kind: rt.send("t", kind.encode(), key=kind, headers={"h": "v"})
            for kind in ("permanent", "invalid", "exhausted", "crash", "classified")
        }
        for receipt in receipts.values():
            assert receipt.wait(10) is Outcome.DEAD_LETTERED
        letters = {d.key: d for d in rt.dead_letters.list(limit=10)}
    assert {k: d.reason_class for k, d in letters.items()} == {
        "permanent": "permanent",
        "invalid": "invalid",
        "exhausted": "exhausted",
        "crash": "crash",
        "classified": "permanent",
    }
    permanent = letters["permanent"]
    assert permanent.message_id == receipts["permanent"].message_id
    assert (permanent.transport, permanent.payload, permanent.headers["h"]) == (
        "t",
        b"permanent",
        "v",
    )
    assert permanent.error_type == "PermanentError"
    assert "no such user" in permanent.reason
    assert permanent.attempts == 1
    assert permanent.first_attempt_at == clock() == permanent.failed_at
    assert permanent.status == "dead" and permanent.replay_count == 0
    assert letters["crash"].error_type == "Crash"
    assert "crashed" in letters["crash"].reason
    assert letters["exhausted"].error_type == "TimeoutError"


def test_expired_messages_are_dead_lettered_without_an_attempt(tmp_path: Path) -> None:
    clock = Clock()
    sink = Recorder(lambda e: (_ for _ in ()).throw(ConnectionError("down")))
    policy = RetryPolicy(max_attempts=10, base_delay=30, jitter="none")
    with open_runtime(tmp_path, {"t": sink}, clock=clock, retry=policy, message_ttl=45.0) as rt:
        receipt = rt.send("t", b"x")
        sink.wait_attempts(1)
        wait_until(lambda: rt.stats().retry_pending == 1)
        clock.advance(30)  # second attempt at 30s, fails; the third would be at 90s,
        sink.wait_attempts(2)  # past the TTL (45s): expired at once, not parked till then
        assert receipt.wait(5) is Outcome.DEAD_LETTERED
        (letter,) = rt.dead_letters.list()
    assert letter.reason_class == "expired"
    assert letter.attempts == 2
    assert len(sink.attempts) == 2


def test_a_retry_after_past_the_ttl_dead_letters_expired_at_once(tmp_path: Path) -> None:
    """A receiver's Retry-After longer than what is left of the message's TTL does not
    park its key: the message is dead-lettered `expired` and the key's next one goes."""
    clock = Clock()

    def busy(envelope: Envelope) -> None:
        if envelope.payload == b"first":
            raise TransientError("503", retry_after=3600.0)

    sink = Recorder(busy)
    with open_runtime(tmp_path, {"t": sink}, clock=clock, message_ttl=60.0) as rt:
        first = rt.send("t", b"first", key="k")
        second = rt.send("t", b"second", key="k")
        assert first.wait(5) is Outcome.DEAD_LETTERED
        assert second.wait(5) is Outcome.DELIVERED
        (letter,) = rt.dead_letters.list()
    assert letter.reason_class == "expired" and letter.attempts == 1


def test_a_sender_crash_retries_the_message_once_then_dead_letters(tmp_path: Path) -> None:
    crashes: list[str] = []

    def crash_first_time(envelope: Envelope) -> None:
        if envelope.payload == b"once" and envelope.attempt == 1:
            crashes.append(envelope.message_id)
            raise Crash("first sight")

    sink = Recorder(crash_first_time)
    with open_runtime(tmp_path, {"t": sink}, retry=FAST) as rt:
        once = rt.send("t", b"once", key="k")
        after = rt.send("t", b"after", key="k")
        assert once.wait(10) is Outcome.DELIVERED
        assert after.wait(10) is Outcome.DELIVERED
        (sender,) = [c for c in rt.supervisor.child("senders").which_children() if c.restarts]  # type: ignore[attr-defined]
        assert sender.restarts == 1
    assert [e.attempt for e in sink.attempts if e.payload == b"once"] == [1, 2]
    assert sink.payloads("k") == [b"once", b"after"]


def test_a_transport_that_hangs_is_cut_off_and_retried(tmp_path: Path) -> None:
    release = threading.Event()

    def hang_first(envelope: Envelope) -> None:
        if envelope.attempt == 1:
            release.wait(30)

    sink = Recorder(hang_first)
    with open_runtime(
        tmp_path, {"slow": sink}, retry=FAST, ack_timeout_per_transport={"slow": 0.2}
    ) as rt:
        receipt = rt.send("slow", b"x")
        assert receipt.wait(10) is Outcome.DELIVERED
        assert [e.attempt for e in sink.attempts] == [1, 2]
        release.set()
    assert len(sink.delivered) == 2  # the abandoned call came back late; it was ignored


def test_breaker_holds_messages_without_spending_attempts(tmp_path: Path) -> None:
    clock = Clock()
    down = threading.Event()
    down.set()

    def flaky(envelope: Envelope) -> None:
        if down.is_set():
            raise ConnectionError("refused")

    sink = Recorder(flaky)
    healthy = Recorder()
    with open_runtime(
        tmp_path,
        {"flaky": sink, "healthy": healthy},
        clock=clock,
        retry=RetryPolicy(max_attempts=3, base_delay=1, max_delay=1, jitter="none"),
        breaker=BreakerPolicy(window=4, min_calls=4, failure_ratio=0.5, open_for=30),
    ) as rt:
        receipts = [rt.send("flaky", b"%d" % i, key=str(i)) for i in range(4)]
        sink.wait_attempts(4)
        wait_until(lambda: rt.stats().breakers["flaky"] == "open")
        assert rt.health()["breakers"]["flaky"] == {"ok": False, "state": "open"}
        late = rt.send("flaky", b"late", key="late")
        assert rt.send("healthy", b"fine").wait(5) is Outcome.DELIVERED  # others go on
        clock.advance(5)  # the four retries come due but the breaker is open: held, not tried
        wait_until(lambda: rt.stats().retry_pending == 5)
        assert len(sink.attempts) == 4
        down.clear()
        clock.advance(30)  # half-open: one probe, it succeeds, the rest follow
        for receipt in [*receipts, late]:
            assert receipt.wait(10) is Outcome.DELIVERED
        assert rt.stats().breakers["flaky"] == "closed"
    by_payload = {e.payload: e.attempt for e in sink.delivered}
    assert by_payload[b"late"] == 1  # waiting on the breaker spent no attempt
    assert all(by_payload[b"%d" % i] == 2 for i in range(4))


def test_duplicates_are_suppressed_across_a_restart_until_the_ttl(tmp_path: Path) -> None:
    clock = Clock()
    sink = Recorder()
    with open_runtime(tmp_path, {"t": sink}, clock=clock, dedup_ttl=100.0) as rt:
        assert rt.send("t", b"1", idempotency_key="order-7").wait(5) is Outcome.DELIVERED
        assert rt.send("t", b"2", idempotency_key="order-7").wait(5) is Outcome.DUPLICATE
    with open_runtime(tmp_path, {"t": sink}, clock=clock, dedup_ttl=100.0) as rt:
        assert rt.send("t", b"3", idempotency_key="order-7").wait(5) is Outcome.DUPLICATE
        clock.advance(101)
        assert rt.send("t", b"4", idempotency_key="order-7").wait(5) is Outcome.DELIVERED
        assert rt.stats().duplicates == 1
    assert sink.payloads() == [b"1", b"4"]


def test_the_sweeper_removes_expired_dedup_records(tmp_path: Path) -> None:
    clock = Clock()
    with open_runtime(tmp_path, {"t": Recorder()}, clock=clock, dedup_ttl=10.0) as rt:
        for i in range(5):
            rt.send("t", b"x", idempotency_key=f"k{i}").wait(5)
        assert rt._store.stats().dedup_records == 5
        clock.advance(11)  # past the TTL and the sweep interval (1 s for a 10 s TTL)
        wait_until(lambda: rt._store.stats().dedup_records == 0)


def test_per_key_order_holds_under_retries_with_four_partitions(tmp_path: Path) -> None:
    failed: set[tuple[str, int]] = set()

    def fail_some(envelope: Envelope) -> None:
        # Fail the first attempt of every third message, deterministically.
        number = int(envelope.payload)
        if number % 3 == 0 and (envelope.message_id, 1) not in failed:
            failed.add((envelope.message_id, 1))
            raise TransientError("try later")

    sink = Recorder(fail_some)
    keys = [f"account-{i}" for i in range(12)]
    with open_runtime(tmp_path, {"t": sink}, partitions=4, retry=FAST) as rt:
        sent: dict[str, list[bytes]] = {k: [] for k in keys}
        for n in range(600):
            key = keys[n % len(keys)]
            payload = b"%d" % n
            sent[key].append(payload)
            rt.send("t", payload, key=key)
        assert rt.flush(30)
        assert rt.stats().retried == 200
    for key in keys:
        assert sink.payloads(key) == sent[key], key


def _queued_behind_a_gate(
    tmp_path: Path,
    behaviour: Callable[[Envelope], None],
    messages: list[dict[str, object]],
    *,
    idempotency_keys_delivered: tuple[str, ...] = (),
) -> tuple[Recorder, list[Outcome | None]]:
    """Send `messages` (to transport "t") while the only partition is blocked, so its
    next batch holds whole runs of each key; then let it go."""
    gate = Gate()

    def blocked_first(envelope: Envelope) -> None:
        if envelope.payload == b"block":
            gate(envelope)
        else:
            behaviour(envelope)

    sink = Recorder(blocked_first)
    with open_runtime(tmp_path, {"t": sink}, partitions=1, retry=FAST) as rt:
        for earlier in idempotency_keys_delivered:
            assert rt.send("t", b"earlier", idempotency_key=earlier).wait(5) is Outcome.DELIVERED
        rt.send("t", b"block", key="blocker")
        assert gate.entered.wait(5)
        receipts = rt.send_batch([{"transport": "t", **m} for m in messages])
        gate.open()
        assert rt.flush(10)
        senders = rt.supervisor.child("senders").which_children()  # type: ignore[attr-defined]
        assert sum(c.restarts for c in senders) == 0  # no sender tripped over a run
        return sink, [r.wait(0) for r in receipts]


def test_a_keys_run_in_one_batch_stops_at_a_failure_and_keeps_order(tmp_path: Path) -> None:
    failed: set[bytes] = set()

    def fail_once(envelope: Envelope) -> None:
        if envelope.payload in (b"a3", b"b0") and envelope.payload not in failed:
            failed.add(envelope.payload)
            raise TransientError("not yet")
        if envelope.payload == b"a6":
            raise PermanentError("rejected")

    messages: list[dict[str, object]] = [
        {"payload": b"%s%d" % (k, i), "key": k.decode()} for i in range(10) for k in (b"a", b"b")
    ]
    sink, outcomes = _queued_behind_a_gate(tmp_path, fail_once, messages)
    for key in ("a", "b"):
        calls = [e.payload for e in sink.attempts if e.key == key]
        expected = [b"%s%d" % (key.encode(), i) for i in range(10)]
        failing = b"a3" if key == "a" else b"b0"
        retried = expected.index(failing) + 1
        # Nothing behind the failed message was called before its retry succeeded.
        assert calls == [*expected[:retried], *expected[retried - 1 :]]
    assert outcomes.count(Outcome.DEAD_LETTERED) == 1
    assert outcomes[messages.index({"payload": b"a6", "key": "a"})] is Outcome.DEAD_LETTERED
    assert outcomes.count(Outcome.DELIVERED) == 19


def test_duplicates_inside_a_keys_run_end_duplicate_in_order(tmp_path: Path) -> None:
    messages: list[dict[str, object]] = [
        {"payload": b"1", "key": "k", "idempotency_key": "x"},
        {"payload": b"2", "key": "k", "idempotency_key": "x"},  # same run, same key
        {"payload": b"3", "key": "k"},
        {"payload": b"4", "key": "j"},
        {"payload": b"5", "key": "j", "idempotency_key": "x"},  # another key's run
        {"payload": b"6", "key": "j"},
        {"payload": b"7", "key": "i"},
        {"payload": b"8", "key": "i", "idempotency_key": "y"},  # delivered before the run
        {"payload": b"9", "key": "i"},
    ]
    sink, outcomes = _queued_behind_a_gate(
        tmp_path, lambda e: None, messages, idempotency_keys_delivered=("y",)
    )
    assert outcomes == [Outcome.DELIVERED, Outcome.DUPLICATE, Outcome.DELIVERED] * 3
    assert sink.payloads("k") == [b"1", b"3"]
    assert sink.payloads("j") == [b"4", b"6"]
    assert sink.payloads("i") == [b"7", b"9"]


def test_priorities_are_served_by_weight_without_starving_low(tmp_path: Path) -> None:
    gate = Gate()
    first = threading.Event()

    def block_first(envelope: Envelope) -> None:
        if envelope.payload == b"block":
            gate(envelope)
        first.set()

    sink = Recorder(block_first)
    # one call slot: the order of the calls is the order in which the slot is given
    with open_runtime(tmp_path, {"t": sink}, partitions=1, concurrency=1) as rt:
        rt.send("t", b"block", key="blocker")
        assert gate.entered.wait(5)
        batch = []
        for priority in (Priority.LOW, Priority.NORMAL, Priority.HIGH):
            for i in range(20):
                batch.append(
                    {
                        "transport": "t",
                        "payload": priority.value.encode(),
                        "key": f"{priority.value}{i}",
                        "priority": priority,
                    }
                )
        rt.send_batch(batch)
        gate.open()
        assert rt.flush(10)
    order = [p.decode() for p in sink.payloads()[1:]]
    assert order[:10].count("high") == 6 and order[:10].count("normal") == 3
    assert order[:10].count("low") == 1  # LOW gets its share from the first round
    assert order.index("low") < order.index("high") + 10


def test_batch_is_all_or_nothing_and_names_the_bad_index(tmp_path: Path) -> None:
    with open_runtime(tmp_path, {"t": Recorder()}) as rt:
        good = {"transport": "t", "payload": b"ok"}
        cases = [
            ([good, {"transport": "t", "payload": "text"}], InvalidMessage, "messages[1]"),
            ([good, good, {"transport": "nope", "payload": b""}], UnknownTransport, "messages[2]"),
            ([{"transport": "t"}], InvalidMessage, "messages[0]: missing 'payload'"),
            ([good, {"transport": "t", "payload": b"", "colour": 1}], InvalidMessage, "colour"),
            ([good, "not a mapping"], InvalidMessage, "messages[1]"),
            ([good] * 1001, InvalidMessage, "max_batch=1000"),
        ]
        for batch, error, text in cases:
            with pytest.raises(error, match=text.replace("[", r"\[").replace("]", r"\]")):
                rt.send_batch(batch)  # type: ignore[arg-type]
        assert rt.stats().accepted == 0
        assert rt._store.stats().outbox_pending == 0
        assert rt.send_batch([]) == []
        receipts = rt.send_batch([good, {**good, "key": "k", "priority": Priority.HIGH}])
        assert [r.wait(5) for r in receipts] == [Outcome.DELIVERED] * 2


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"transport": "fax"}, UnknownTransport, "unknown transport 'fax'"),
        ({"payload": "text"}, InvalidMessage, "payload must be bytes"),
        ({"payload": b"x" * 65}, InvalidMessage, "over max_payload_bytes=64"),
        ({"headers": {"a": 1}}, InvalidMessage, "header 'a' must be a str"),
        ({"headers": {"bad name": "v"}}, InvalidMessage, "HTTP token"),
        ({"headers": {"a": "x\r\nInjected: 1"}}, InvalidMessage, "CR, LF"),
        ({"headers": ["a"]}, InvalidMessage, "headers must be a mapping"),
        ({"key": ""}, InvalidMessage, "key must be a non-empty str"),
        ({"key": 7}, InvalidMessage, "key must be"),
        ({"idempotency_key": "k" * 2000}, InvalidMessage, "over 1024"),
        ({"priority": "high"}, InvalidMessage, "priority must be a surelay.Priority"),
    ],
)
def test_every_bad_input_raises_its_named_error_and_accepts_nothing(
    tmp_path: Path, kwargs: dict[str, object], error: type[Exception], text: str
) -> None:
    with open_runtime(tmp_path, {"sms": Recorder()}, max_payload_bytes=64) as rt:
        args = {"transport": "sms", "payload": b"ok", **kwargs}
        with pytest.raises(error, match=text):
            rt.send(args.pop("transport"), args.pop("payload"), **args)  # type: ignore[arg-type]
        assert rt.stats().accepted == 0
        assert rt._store.stats().outbox_pending == 0


def test_closed_runtime_refuses_and_close_is_idempotent(tmp_path: Path) -> None:
    rt = open_runtime(tmp_path, {"t": Recorder()})
    rt.close()
    rt.close()
    with pytest.raises(RuntimeClosed):
        rt.send("t", b"x")


def test_bad_transports_and_config_are_refused_at_open(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be a mapping of name to callable"):
        Runtime.open(tmp_path, transports=["t"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'t' must be callable"):
        Runtime.open(tmp_path, transports={"t": "http://x"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="RuntimeConfig"):
        Runtime.open(tmp_path, transports={"t": Recorder()}, config={"partitions": 2})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty string"):
        Runtime.open("", transports={"t": Recorder()})
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "app.db").write_bytes(b"someone else's")
    with pytest.raises(StorageError, match="not empty and is not a surelay data directory"):
        Runtime.open(tmp_path / "theirs", transports={"t": Recorder()})
    assert [p.name for p in (tmp_path / "theirs").iterdir()] == ["app.db"]


def test_the_outbox_is_recovered_in_key_order_with_retry_times_kept(tmp_path: Path) -> None:
    clock = Clock()
    down = Recorder(lambda e: (_ for _ in ()).throw(ConnectionError("down")))
    policy = RetryPolicy(max_attempts=5, base_delay=50, jitter="none")
    rt = open_runtime(tmp_path, {"t": down}, clock=clock, retry=policy)
    sent = [rt.send("t", b"%d" % n, key=f"k{n % 3}") for n in range(9)]
    down.wait_attempts(3)  # each key's head failed once; the rest wait behind it
    wait_until(lambda: rt.stats().retry_pending == 3)
    rt.close(timeout=0.5)
    assert all(r.wait(0) is None for r in sent)

    up = Recorder()
    with open_runtime(tmp_path, {"t": up}, clock=clock, retry=policy) as rt:
        wait_until(lambda: rt.stats().retry_pending == 3)  # heads wait for their due time
        assert up.attempts == []
        clock.advance(50)
        assert rt.flush(10)
        assert rt._store.stats().outbox_pending == 0
    for k in range(3):
        assert up.payloads(f"k{k}") == [b"%d" % n for n in range(k, 9, 3)]
    assert {e.attempt for e in up.delivered if int(e.payload) < 3} == {2}


def test_best_effort_skips_the_outbox_but_keeps_dead_letters(tmp_path: Path) -> None:
    gate = Gate()
    sink = Recorder(lambda e: gate(e) if e.payload == b"slow" else None)
    bad = Recorder(lambda e: (_ for _ in ()).throw(PermanentError("no")))
    with open_runtime(tmp_path, {"t": sink, "bad": bad}, guarantee=Guarantee.BEST_EFFORT) as rt:
        slow = rt.send("t", b"slow")
        assert gate.entered.wait(5)
        assert rt._store.stats().outbox_pending == 0
        gate.open()
        assert slow.wait(5) is Outcome.DELIVERED
        assert rt.send("bad", b"x").wait(5) is Outcome.DEAD_LETTERED
        assert rt.send("t", b"y", idempotency_key="slow-1").wait(5) is Outcome.DELIVERED
        assert rt.send("t", b"y", idempotency_key="slow-1").wait(5) is Outcome.DUPLICATE
    with Store.open(tmp_path) as store, store.read() as txn:
        assert [d.payload for d in store.dead_letters.list(txn)] == [b"x"]


def test_transactional_outbox_dispatches_only_after_commit(tmp_path: Path) -> None:
    sink = Recorder()
    with open_runtime(tmp_path, {"t": sink}) as rt:
        orders = rt.table("orders")
        with rt.transaction() as txn:
            txn.put(b"o-1", b"paid", db=orders)
            committed = rt.send("t", b"order paid", txn=txn)
            assert not sink.attempts
        assert committed.wait(5) is Outcome.DELIVERED

        class Abort(Exception):
            pass

        with pytest.raises(Abort), rt.transaction() as txn:
            txn.put(b"o-2", b"paid", db=orders)
            aborted = rt.send("t", b"never", txn=txn)
            raise Abort
        assert aborted.wait(0.2) is None
        assert rt.flush(5)
        with rt._store.read() as txn:
            assert txn.get(b"o-1", db=orders) == b"paid"
            assert txn.get(b"o-2", db=orders) is None
        with pytest.raises(InvalidMessage, match="txn must be"):
            rt.send("t", b"x", txn=txn)
    assert sink.payloads() == [b"order paid"]


def test_flush_times_out_while_a_retry_waits_and_stats_say_why(tmp_path: Path) -> None:
    clock = Clock()
    sink = Recorder(lambda e: (_ for _ in ()).throw(TransientError("busy", retry_after=60)))
    with open_runtime(tmp_path, {"t": sink}, clock=clock, retry=RetryPolicy(base_delay=1)) as rt:
        rt.send("t", b"x")
        sink.wait_attempts(1)
        assert rt.flush(0.1) is False
        stats = rt.stats()
        assert (stats.accepted, stats.in_flight, stats.retry_pending, stats.outbox_pending) == (
            1,
            1,
            1,
            1,
        )
        with rt._store.read() as txn:
            (entry,) = rt._store.outbox.scan(txn)
        assert entry.due_at == clock() + 60  # Retry-After beats the shorter policy delay
        health = rt.health()
        assert health["ok"] is True
        assert health["actors"]["senders/sender-0"]["status"] == "running"


def test_sends_from_many_threads_all_end(tmp_path: Path) -> None:
    sink = Recorder()
    with open_runtime(tmp_path, {"t": sink}) as rt:
        receipts: list[object] = []

        def worker(n: int) -> None:
            receipts.extend(rt.send("t", b"%d" % i, key=f"{n}-{i % 5}") for i in range(100))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert rt.flush(30)
        assert rt.stats().delivered == 800
    assert len(sink.delivered) == 800


def test_bad_arguments_to_flush_and_table_and_a_closed_runtimes_dead_letters(
    tmp_path: Path,
) -> None:
    rt = Runtime.open(tmp_path / "d", transports={"t": Recorder()})
    with pytest.raises(ValueError, match="timeout must be seconds >= 0 or None, got '5'"):
        rt.flush("5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="table name must be a non-empty str, got 123"):
        rt.table(123)  # type: ignore[arg-type]
    rt.close()
    with pytest.raises(RuntimeClosed, match="open it again"):
        rt.dead_letters.list()
    with pytest.raises(RuntimeClosed):
        rt.dead_letters.get("x")
