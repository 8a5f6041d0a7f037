"""Replay of dead letters (`rt.dead_letters.replay`): dedup guard, order, rate, crashes."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest

from surelay import (
    DeadLetter,
    Envelope,
    Outcome,
    PermanentError,
    ReplayReport,
    RetryPolicy,
    Runtime,
    RuntimeClosed,
    TransientError,
)
from surelay.actors.replay import OFFER_GRACE, POLL, ReplayCoordinator
from surelay.errors import StorageError
from surelay.replay_jobs import Job, Replay
from surelay.routing import replay_partition
from surelay.sources import JetStreamSource
from surelay.storage.keys import new_id
from surelay.storage.records import ReplayRequest

from .helpers import Clock, Recorder, free_port, open_runtime


class Crash(BaseException):
    """Not an Exception: escapes the transport handling and crashes the actor calling it."""


class Downstream:
    """A transport that rejects everything until `healthy`, recording what got through."""

    def __init__(self) -> None:
        self.healthy = False
        self.reject: Callable[[Envelope], BaseException | None] = lambda e: PermanentError(
            "HTTP 400"
        )
        """What to raise while not healthy (None: deliver after all)."""
        self.recorder = Recorder(self._behave)

    def _behave(self, envelope: Envelope) -> None:
        if not self.healthy:
            error = self.reject(envelope)
            if error is not None:
                raise error

    @property
    def delivered(self) -> list[Envelope]:
        return self.recorder.delivered


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        threading.Event().wait(0.005)


def kill(rt: Runtime, count: int, **send: object) -> list[DeadLetter]:
    """Send `count` messages that the (unhealthy) downstream dead-letters."""
    receipts = [
        rt.send("t", f"m{i}".encode(), **send)  # type: ignore[arg-type]
        for i in range(count)
    ]
    for receipt in receipts:
        assert receipt.wait(10) is Outcome.DEAD_LETTERED
    return rt.dead_letters.list(limit=1000)


def test_replay_delivers_and_records_the_outcome(tmp_path: Path) -> None:
    down = Downstream()
    with open_runtime(tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1)) as rt:
        letters = kill(rt, 3, key="k", idempotency_key=None)
        assert rt.stats().dead_letters == 3
        down.healthy = True
        report = rt.dead_letters.replay()
        assert report == ReplayReport(requested=3, replayed=3, request_id=report.request_id)
        assert report.done
        stats = rt.stats()
        assert (stats.replayed, stats.dead_letters) == (3, 0)
        after = {d.id: d for d in rt.dead_letters.list(status="replayed")}
    assert [e.payload for e in down.delivered] == [b"m0", b"m1", b"m2"]
    for letter, envelope in zip(letters, down.delivered, strict=True):
        assert envelope.message_id == letter.message_id
        assert envelope.idempotency_key == letter.idempotency_key
        assert envelope.attempt == letter.attempts + 1
        replayed = after[letter.id]
        assert (replayed.status, replayed.replay_count) == ("replayed", 1)


def test_a_failed_replay_goes_back_to_dead_with_the_new_reason(tmp_path: Path) -> None:
    clock = Clock()
    down = Downstream()
    with open_runtime(
        tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1), clock=clock
    ) as rt:
        (letter,) = kill(rt, 1)
        clock.advance(60)
        down.reject = lambda e: TransientError("still down")
        report = rt.dead_letters.replay([letter.id])
        assert (report.requested, report.failed, report.replayed) == (1, 1, 0)
        again = rt.dead_letters.get(letter.id)
    assert again is not None
    assert (again.status, again.replay_count, again.attempts) == ("dead", 1, 2)
    assert again.reason_class == "exhausted"
    assert again.reason == "replay attempt failed: TransientError: still down"
    assert again.error_type == "TransientError"
    assert again.failed_at == clock() and again.first_attempt_at == letter.first_attempt_at


def test_a_key_delivered_meanwhile_is_not_sent_again(tmp_path: Path) -> None:
    down = Downstream()
    with open_runtime(tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1)) as rt:
        (letter,) = kill(rt, 1, idempotency_key="order-7")
        down.healthy = True
        assert rt.send("t", b"retyped", idempotency_key="order-7").wait(10) is Outcome.DELIVERED
        calls = len(down.recorder.attempts)
        report = rt.dead_letters.replay([letter.id])
        assert (report.skipped_duplicate, report.replayed) == (1, 0)
        assert len(down.recorder.attempts) == calls  # the transport was not called
        record = rt.dead_letters.get(letter.id)
    assert record is not None and record.status == "replayed"


def test_replaying_the_same_ids_twice_sends_each_once(tmp_path: Path) -> None:
    down = Downstream()
    with open_runtime(tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1)) as rt:
        letters = kill(rt, 5)
        ids = [d.id for d in letters]
        down.healthy = True
        first = rt.dead_letters.replay(ids)
        second = rt.dead_letters.replay(ids)
    assert (first.replayed, first.skipped_duplicate) == (5, 0)
    assert (second.replayed, second.skipped_duplicate) == (0, 5)
    assert sorted(e.payload for e in down.delivered) == [f"m{i}".encode() for i in range(5)]


def test_concurrent_replays_of_the_same_ids_send_each_once(tmp_path: Path) -> None:
    down = Downstream()
    with open_runtime(tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1)) as rt:
        ids = [d.id for d in kill(rt, 20, key=None)]
        down.healthy = True
        reports: list[ReplayReport] = []
        start = threading.Barrier(4)

        def replay() -> None:
            start.wait()
            reports.append(rt.dead_letters.replay(ids, timeout=20))

        threads = [threading.Thread(target=replay) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert len(reports) == 4
    assert sum(r.replayed for r in reports) == 20
    assert all(r.replayed + r.skipped_duplicate == 20 for r in reports)
    payloads = [e.payload for e in down.delivered]
    assert sorted(payloads) == sorted(f"m{i}".encode() for i in range(20))


def test_each_key_is_replayed_in_failure_order(tmp_path: Path) -> None:
    down = Downstream()
    with open_runtime(
        tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1), replay_partitions=4
    ) as rt:
        receipts = [
            rt.send("t", f"{key}{i}".encode(), key=key)
            for i in range(15)
            for key in ("alpha", "beta", "gamma")
        ]
        for receipt in receipts:
            assert receipt.wait(10) is Outcome.DEAD_LETTERED
        failed_order = {
            key: [d.payload for d in rt.dead_letters.list(key=key, limit=100)]
            for key in ("alpha", "beta", "gamma")
        }
        down.healthy = True
        report = rt.dead_letters.replay()
    assert report.replayed == 45
    for key, order in failed_order.items():
        assert len(order) == 15
        assert down.recorder.payloads(key) == order


def test_a_replay_is_concurrent_one_call_per_key_in_failure_order(tmp_path: Path) -> None:
    """Replay goes through the delivery engine: many records in flight at once, but a
    key's records one at a time, in failure order."""
    down = Downstream()
    lock = threading.Lock()
    in_flight: dict[str | None, int] = {}
    peak = [0, 0]  # calls at once, overlaps of one key

    def slow(envelope: Envelope) -> None:
        if not down.healthy:
            raise PermanentError("HTTP 400")
        with lock:
            in_flight[envelope.key] = in_flight.get(envelope.key, 0) + 1
            peak[0] = max(peak[0], sum(in_flight.values()))
            peak[1] = max(peak[1], in_flight[envelope.key])
        time.sleep(0.01)  # the downstream's latency
        with lock:
            in_flight[envelope.key] -= 1

    recorder = Recorder(slow)
    keys = [f"k{i}" for i in range(20)]
    with open_runtime(
        tmp_path, {"t": recorder}, retry=RetryPolicy(max_attempts=1), replay_partitions=2
    ) as rt:
        receipts = [rt.send("t", f"{key}-{i}".encode(), key=key) for i in range(5) for key in keys]
        assert all(r.wait(10) is Outcome.DEAD_LETTERED for r in receipts)
        failed_order = {
            key: [d.payload for d in rt.dead_letters.list(key=key, limit=100)] for key in keys
        }
        down.healthy = True
        report = rt.dead_letters.replay(timeout=30)
    assert report.replayed == 100
    assert peak[0] > 2  # several records in flight at once (sequential would be 1 per worker)
    assert peak[1] == 1  # never two of one key
    for key, order in failed_order.items():
        assert recorder.payloads(key) == order


def test_archived_records_are_refused(tmp_path: Path) -> None:
    down = Downstream()
    with open_runtime(tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1)) as rt:
        first, second = kill(rt, 2)
        assert rt.dead_letters.archive([first.id]) == 1
        down.healthy = True
        report = rt.dead_letters.replay([first.id, second.id, "no-such-id"])
    assert (report.requested, report.refused, report.replayed) == (3, 2, 1)
    assert [e.payload for e in down.delivered] == [second.payload]


def test_filters_select_dead_records_only(tmp_path: Path) -> None:
    down = Downstream()
    with open_runtime(
        tmp_path, {"t": down.recorder, "u": down.recorder}, retry=RetryPolicy(max_attempts=1)
    ) as rt:
        kill(rt, 2, key="a")
        assert rt.send("u", b"other", key="b").wait(10) is Outcome.DEAD_LETTERED
        down.healthy = True
        report = rt.dead_letters.replay(transport="u")
        assert report.replayed == 1
        assert rt.dead_letters.replay(key="a", reason_class="exhausted").requested == 0
        assert rt.dead_letters.replay(key="a", reason_class="permanent").replayed == 2
    assert [e.payload for e in down.delivered] == [b"other", b"m0", b"m1"]


def test_rate_bounds_replays_per_second(tmp_path: Path) -> None:
    down = Downstream()
    with open_runtime(tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1)) as rt:
        kill(rt, 10, key=None)
        down.healthy = True
        started = time.monotonic()
        report = rt.dead_letters.replay(rate=20.0)
        elapsed = time.monotonic() - started
    assert report.replayed == 10
    # burst 1 at 20/s: the 10th may start no sooner than 9/20 s after the first
    assert elapsed >= 9 / 20


def test_a_worker_crash_mid_replay_restarts_it_and_replays_once(tmp_path: Path) -> None:
    down = Downstream()
    seen: set[str] = set()

    def crash_on_first_sight(envelope: Envelope) -> BaseException | None:
        if envelope.attempt == 1:
            return PermanentError("HTTP 400")  # the first life: dead-lettered
        if envelope.message_id not in seen:
            seen.add(envelope.message_id)  # its replay: crash the worker once
            return Crash("worker down")
        return None

    down.reject = crash_on_first_sight
    with open_runtime(tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1)) as rt:
        letters = kill(rt, 3, key="k")
        report = rt.dead_letters.replay()
        restarts = sum(c.restarts for c in rt.supervisor.child("replay").which_children())  # type: ignore[attr-defined]
        records = [rt.dead_letters.get(d.id) for d in letters]
    assert report.replayed == 3
    assert restarts == 3
    assert [e.payload for e in down.delivered] == [b"m0", b"m1", b"m2"]  # once each, in order
    assert all(r is not None and (r.status, r.replay_count) == ("replayed", 1) for r in records)


def test_a_record_that_crashes_the_worker_twice_goes_back_to_dead(tmp_path: Path) -> None:
    down = Downstream()
    with open_runtime(tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1)) as rt:
        (letter,) = kill(rt, 1)
        down.reject = lambda e: Crash("poison")
        report = rt.dead_letters.replay([letter.id])
        record = rt.dead_letters.get(letter.id)
    assert report.failed == 1
    assert record is not None
    assert (record.status, record.reason_class, record.replay_count) == ("dead", "crash", 1)
    assert "crashed on it" in record.reason


def test_wait_false_returns_at_once_and_the_replay_goes_on(tmp_path: Path) -> None:
    down = Downstream()
    with open_runtime(tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1)) as rt:
        kill(rt, 4)
        down.healthy = True
        report = rt.dead_letters.replay(wait=False)
        assert report.requested == 4 and report.request_id
        wait_until(lambda: rt.stats().replayed == 4)
        wait_until(lambda: _request(rt, report.request_id).status == "done")
        assert ReplayReport.from_progress(_request(rt, report.request_id).progress).replayed == 4


def _request(rt: Runtime, request_id: str) -> ReplayRequest:
    with rt._store.read() as txn:
        request = rt._store.replay_requests.get(txn, request_id)
    assert request is not None
    return request


def test_a_stored_request_is_carried_out_by_the_running_runtime(tmp_path: Path) -> None:
    down = Downstream()
    with open_runtime(tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1)) as rt:
        kill(rt, 2)
        down.healthy = True
        request = ReplayRequest(id=new_id(None), created_at=time.time(), rate=None)
        store = rt._store
        store.write(lambda txn: store.replay_requests.put(txn, request)).result()
        wait_until(lambda: _request(rt, request.id).status == "done", timeout=5)
        progress = _request(rt, request.id).progress
    assert (progress["requested"], progress["replayed"]) == (2, 2)


def test_records_left_replaying_by_a_dead_runtime_are_replayed_at_open(tmp_path: Path) -> None:
    down = Downstream()
    with open_runtime(tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1)) as rt:
        (letter,) = kill(rt, 1)
        wait_until(lambda: rt._parts.replays.recovered_at_start)  # else this runtime recovers it
        now = time.time()
        # what a runtime killed mid-replay leaves: the record leased far into the future
        verdict, _ = rt._store.lease_for_replay(letter.id, now=now, until=now + 3600).result()
        assert verdict == "leased"
    down.healthy = True
    with open_runtime(tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1)) as rt:
        wait_until(
            lambda: (r := rt.dead_letters.get(letter.id)) is not None and r.status == "replayed"
        )
    assert [e.payload for e in down.delivered] == [letter.payload]


def test_a_recovery_that_finds_the_replay_ended_sends_nothing(tmp_path: Path) -> None:
    # the coordinator saw `a` replaying, but its replay failed before the worker got to
    # the recovery: `a` is dead again, and only an operator may replay it now
    down = Downstream()
    with open_runtime(tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1)) as rt:
        a, b = kill(rt, 2, key="k")  # one key: one worker, which takes its mail in order
        wait_until(lambda: rt._parts.replays.recovered_at_start)
        worker = rt._parts.peers.replay_workers[
            replay_partition("k", a.id, len(rt._parts.peers.replay_workers))
        ]
        worker.tell(Replay(None, a.id, renew=True))
        report = rt.dead_letters.replay([b.id])  # handled after the recovery
        record = rt.dead_letters.get(a.id)
    assert report.failed == 1
    assert [e.payload for e in down.recorder.attempts] == [a.payload, b.payload, b.payload]
    assert record is not None and (record.status, record.replay_count) == ("dead", 0)


def test_expired_leases_are_picked_up_again(tmp_path: Path) -> None:
    clock = Clock()
    down = Downstream()
    with open_runtime(
        tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1), clock=clock
    ) as rt:
        (letter,) = kill(rt, 1)
        down.healthy = True
        wait_until(lambda: rt._parts.replays.recovered_at_start)
        rt._store.lease_for_replay(letter.id, now=clock(), until=clock() + 100).result()
        clock.advance(50)
        threading.Event().wait(0.6)  # two polls: a live lease is left alone
        record = rt.dead_letters.get(letter.id)
        assert record is not None and record.status == "replaying"
        clock.advance(51)
        wait_until(
            lambda: (r := rt.dead_letters.get(letter.id)) is not None and r.status == "replayed"
        )
    assert len(down.delivered) == 1


def test_bad_replay_arguments_are_refused(tmp_path: Path) -> None:
    with open_runtime(tmp_path, {"t": Recorder()}) as rt:
        with pytest.raises(ValueError, match="not both"):
            rt.dead_letters.replay(["x"], key="k")
        with pytest.raises(ValueError, match="rate"):
            rt.dead_letters.replay(rate=0)
        with pytest.raises(ValueError, match="reason_class"):
            rt.dead_letters.replay(reason_class="sad")
        with pytest.raises(ValueError, match="ids"):
            rt.dead_letters.replay([""])
        empty = rt.dead_letters.replay([])
        assert empty == ReplayReport(requested=0, request_id=empty.request_id)
    with pytest.raises(RuntimeClosed):
        rt.dead_letters.replay()


def test_dead_letters_past_their_ttl_are_swept(tmp_path: Path) -> None:
    clock = Clock()
    down = Downstream()
    with open_runtime(
        tmp_path,
        {"t": down.recorder},
        retry=RetryPolicy(max_attempts=1),
        clock=clock,
        dead_letter_ttl=100.0,
    ) as rt:
        kill(rt, 2)
        clock.advance(99)
        assert len(rt.dead_letters.list(status=None)) == 2
        clock.advance(20)  # past the TTL and the sweep interval (10 s)
        wait_until(lambda: not rt.dead_letters.list(status=None))
        assert rt.stats().dead_letters == 0


def _pending_request(rt: Runtime, **fields: object) -> str:
    """A request as `surelay dlq replay` records it: pending, for any runtime."""
    store = rt._store
    request = ReplayRequest(id=new_id(None), created_at=time.time(), **fields)  # type: ignore[arg-type]
    store.write(lambda txn: store.replay_requests.put(txn, request)).result()
    return request.id


def _stored(rt: Runtime, request_id: str) -> ReplayRequest:
    with rt._store.read() as txn:
        found = rt._store.replay_requests.get(txn, request_id)
    assert found is not None
    return found


def _dead_for(tmp_path: Path, transport: str) -> str:
    """One dead letter for `transport`, left by a runtime that had it."""
    with open_runtime(
        tmp_path, {transport: Downstream().recorder}, retry=RetryPolicy(max_attempts=1)
    ) as rt:
        assert rt.send(transport, b"x", key="k").wait(10) is Outcome.DEAD_LETTERED
        return rt.dead_letters.list()[0].id


def test_a_request_for_a_transport_nobody_offers_is_refused_after_the_grace(
    tmp_path: Path,
) -> None:
    dead = _dead_for(tmp_path, "mail")
    clock = Clock()
    with open_runtime(tmp_path, {"sms": Downstream().recorder}, clock=clock) as rt:
        request_id = _pending_request(rt, ids=(dead,))
        time.sleep(3 * POLL)  # some polls, all within the grace: nothing is refused
        assert _stored(rt, request_id).status == "pending"
        clock.advance(OFFER_GRACE + 1)
        wait_until(lambda: _stored(rt, request_id).status == "done")
        done = _stored(rt, request_id)
        assert (done.progress["requested"], done.progress["refused"]) == (1, 1)
        assert done.error is not None and "'mail' refused: no runtime" in done.error
        found = rt.dead_letters.get(dead)
        assert found is not None and found.status == "dead"  # left as it was

        by_filter = _pending_request(rt, filters={"transport": "mail"})
        time.sleep(3 * POLL)  # its grace starts when the runtime first sees it
        assert _stored(rt, by_filter).status == "pending"
        clock.advance(OFFER_GRACE + 1)
        wait_until(lambda: _stored(rt, by_filter).status == "done")
        assert _stored(rt, by_filter).progress["refused"] == 1


def test_a_consumer_registered_within_the_grace_gets_its_request(tmp_path: Path) -> None:
    dead = _dead_for(tmp_path, "orders")
    clock = Clock()
    handler = Recorder()
    with open_runtime(tmp_path, {"sms": Downstream().recorder}, clock=clock) as rt:
        request_id = _pending_request(rt, ids=(dead,))
        clock.advance(OFFER_GRACE - 1)
        time.sleep(3 * POLL)
        # a consumer registered after open (its source need not be reachable: the
        # handler is a transport of the runtime at once)
        unreachable = JetStreamSource(f"nats://127.0.0.1:{free_port()}", "ORDERS", durable="o")
        rt.consume(unreachable, handler, name="orders")
        wait_until(lambda: _stored(rt, request_id).status == "done")
        assert _stored(rt, request_id).progress["replayed"] == 1
        assert [e.payload for e in handler.delivered] == [b"x"]


def test_a_pending_request_is_cancelled_and_never_carried_out(tmp_path: Path) -> None:
    dead = _dead_for(tmp_path, "mail")
    with open_runtime(tmp_path, {"sms": Downstream().recorder}) as rt:
        request_id = _pending_request(rt, ids=(dead,))
        cancelled = rt.dead_letters.cancel(request_id)
        assert (cancelled.status, _stored(rt, request_id).status) == ("cancelled", "cancelled")
        with pytest.raises(ValueError, match="is cancelled, not pending"):
            rt.dead_letters.cancel(request_id)
        with pytest.raises(LookupError, match="no replay request 'nope'"):
            rt.dead_letters.cancel("nope")
        running = rt.dead_letters.replay([dead], wait=True, timeout=10)
        with pytest.raises(ValueError, match=r"is done.*not pending"):
            rt.dead_letters.cancel(running.request_id)


def test_a_worker_keeps_many_writes_in_flight_not_one_commit_each(tmp_path: Path) -> None:
    """One replay worker, 200 records of 200 keys: their leases and outcomes are written
    while the worker goes on (one commit carries many), not each waited for in turn
    (which took at least two commits a record)."""
    down = Downstream()
    config = {"retry": RetryPolicy(max_attempts=1), "replay_partitions": 1}
    with open_runtime(tmp_path, {"t": down.recorder}, **config) as rt:
        receipts = [rt.send("t", b"m%d" % i, key=f"k{i}") for i in range(200)]
        for receipt in receipts:
            assert receipt.wait(10) is Outcome.DEAD_LETTERED
        down.healthy = True
        before = rt._store.stats().commits
        report = rt.dead_letters.replay(timeout=30)
        commits = rt._store.stats().commits - before
    assert report.replayed == 200 and report.done
    assert commits < 100


def test_an_outcome_that_cannot_be_written_ends_its_record_not_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The `replayed` write fails (twice: the record is tried again once), then so does
    putting it back to dead: the record ends `failed`, the job ends, nothing waits."""
    down = Downstream()
    with open_runtime(tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1)) as rt:
        kill(rt, 1, key="k")
        down.healthy = True

        def failing(*args: object, **kwargs: object) -> Future[object]:
            future: Future[object] = Future()
            future.set_exception(StorageError("disk gone"))
            return future

        monkeypatch.setattr(rt._store, "replayed", failing)
        monkeypatch.setattr(rt._store, "replay_failed", failing)
        report = rt.dead_letters.replay(timeout=20)
    assert report.done and report.failed == 1
    assert "could not put it back to dead" in caplog.text
    assert len(down.delivered) == 2  # sent, and sent again after the first failed write


def test_a_coordinator_crash_while_finishing_a_replay_still_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = Downstream()
    report_of = Job.report
    failed: list[str] = []

    def report_failing_once(self: Job) -> ReplayReport:
        finishing = sys._getframe(1).f_code.co_name == "_finish_if_done"
        if finishing and not failed:
            failed.append(self.request.id)
            raise RuntimeError("a bug, once")  # crashes the coordinator as it finishes
        return report_of(self)

    with open_runtime(tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1)) as rt:
        kill(rt, 3, key="k")
        down.healthy = True
        monkeypatch.setattr(Job, "report", report_failing_once)
        started = rt.dead_letters.replay(wait=False)
        job = rt._parts.replays.jobs[started.request_id]
        # the tick finishes it again; before, its caller waited until its timeout
        report = job.finished.result(timeout=30)
        children = rt.supervisor.child("replay").which_children()  # type: ignore[attr-defined]
    assert failed  # its first finish crashed it
    assert (report.replayed, report.pending) == (3, 0)
    assert [c.restarts for c in children if c.id == "coordinator"] == [1]


def test_a_replay_whose_done_cannot_be_saved_still_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = Downstream()
    save = ReplayCoordinator._save

    def save_refused_when_done(self: ReplayCoordinator, request: ReplayRequest) -> None:
        if request.status == "done":
            raise StorageError("read-only filesystem")
        save(self, request)

    with open_runtime(tmp_path, {"t": down.recorder}, retry=RetryPolicy(max_attempts=1)) as rt:
        kill(rt, 2, key="k")
        down.healthy = True
        monkeypatch.setattr(ReplayCoordinator, "_save", save_refused_when_done)
        report = rt.dead_letters.replay(timeout=30)
        children = rt.supervisor.child("replay").which_children()  # type: ignore[attr-defined]
    assert (report.replayed, report.pending) == (2, 0)
    assert [c.restarts for c in children if c.id == "coordinator"] == [0]  # logged, not crashed
