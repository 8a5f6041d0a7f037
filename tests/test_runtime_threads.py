"""Threads sending at once: their sends share outbox writes (every send made before the
writer runs the open group's operation is in it, see `surelay.storage.joining`), each
returns once its message is durable and handed to its sender, and each thread's sends
keep their order."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from surelay import Receipt, RuntimeClosed

from .helpers import Gate, Recorder, open_runtime, wait_until

THREADS = 16


def test_sends_made_while_a_write_waits_go_in_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = Recorder()
    with open_runtime(tmp_path, {"t": sink}) as rt:
        receipts: list[Receipt] = []
        lock = threading.Lock()

        def send(n: int) -> None:
            receipt = rt.send("t", b"%d" % n, key=f"k{n}")
            with lock:
                receipts.append(receipt)

        writes: list[int] = []
        enqueue_many = rt._store.outbox.enqueue_many

        def counted(*args: Any, **kwargs: Any) -> Any:
            writes.append(len(args[1]))  # the outbox entries of one write
            return enqueue_many(*args, **kwargs)

        monkeypatch.setattr(rt._store.outbox, "enqueue_many", counted)
        threads = [threading.Thread(target=send, args=(n,)) for n in range(THREADS)]
        with rt.transaction():  # holds the write lock: the writer cannot begin
            for thread in threads:
                thread.start()
            # the first send opened a group and every other one joined it
            wait_until(lambda: rt._in._joining.gathering == THREADS)
        for thread in threads:
            thread.join(10)
        assert rt.flush(10)
    assert len({r.message_id for r in receipts}) == THREADS
    assert writes == [THREADS]  # one write for all of them
    assert sorted(sink.payloads()) == sorted(b"%d" % n for n in range(THREADS))


def test_each_threads_sends_keep_their_order_and_all_arrive(tmp_path: Path) -> None:
    sink = Recorder()
    per_thread = 60

    with open_runtime(tmp_path, {"t": sink}) as rt:

        def sender(thread: int) -> None:
            for seq in range(per_thread):
                rt.send("t", b"%d" % seq, key=f"thread-{thread}")

        threads = [threading.Thread(target=sender, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert rt.flush(30)
        writes = rt._store.stats().operations
    for thread in range(THREADS):
        assert sink.payloads(f"thread-{thread}") == [b"%d" % s for s in range(per_thread)]
    assert writes < THREADS * per_thread


def test_threads_sending_through_close_each_get_a_receipt_or_runtime_closed(
    tmp_path: Path,
) -> None:
    gate = Gate()
    sink = Recorder(gate)
    rt = open_runtime(tmp_path, {"t": sink})
    outcomes: dict[int, list[object]] = {n: [] for n in range(THREADS)}
    started = threading.Barrier(THREADS + 1)

    def sender(thread: int) -> None:
        started.wait(10)
        for seq in range(1000):
            try:
                outcomes[thread].append(rt.send("t", b"%d:%d" % (thread, seq), key=f"t{thread}"))
            except RuntimeClosed as closed:
                outcomes[thread].append(closed)
                return

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    started.wait(10)
    wait_until(lambda: sum(len(o) for o in outcomes.values()) >= 200)
    rt.close(timeout=2)
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    accepted = {
        r.message_id for results in outcomes.values() for r in results if isinstance(r, Receipt)
    }
    for results in outcomes.values():  # receipts, then one refusal, and nothing after it
        assert all(isinstance(r, Receipt) for r in results[:-1])
        assert isinstance(results[-1], RuntimeClosed | Receipt)
    gate.open()
    with open_runtime(tmp_path, {"t": sink}) as again:
        assert again.flush(30)
    assert {e.message_id for e in sink.delivered} >= accepted


def test_sends_waiting_in_a_group_when_close_begins_are_written_not_refused(
    tmp_path: Path,
) -> None:
    sink = Recorder()
    rt = open_runtime(tmp_path, {"t": sink})
    release = threading.Event()
    holding = threading.Event()
    outcomes: list[object] = []
    lock = threading.Lock()

    def hold() -> None:
        with rt.transaction():  # the first writes wait for its lock
            holding.set()
            release.wait(10)

    def send(n: int) -> None:
        try:
            outcome: object = rt.send("t", b"%d" % n)
        except RuntimeClosed as closed:
            outcome = closed
        with lock:
            outcomes.append(outcome)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    senders = [threading.Thread(target=send, args=(n,)) for n in range(6)]
    for sender in senders:
        sender.start()
    wait_until(lambda: rt._in._joining.gathering == 6)  # one group, waiting for the writer
    closer = threading.Thread(target=rt.close, kwargs={"timeout": 10})
    closer.start()
    wait_until(lambda: rt._in.closing)  # sends from here on are refused; these are under way
    release.set()
    for thread in (*senders, holder, closer):
        thread.join(15)
        assert not thread.is_alive()
    assert len(outcomes) == 6 and all(isinstance(o, Receipt) for o in outcomes)
    with open_runtime(tmp_path, {"t": sink}) as again:
        assert again.flush(10)
    assert sorted(sink.payloads()) == sorted(b"%d" % n for n in range(6))


def test_a_send_that_cannot_be_written_fails_alone_not_its_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sends that joined one write are written again one by one when it fails: the one
    that cannot be written fails, the others are accepted (as they would have been
    alone), and nothing is left counted as under way."""
    sink = Recorder()
    with open_runtime(tmp_path, {"t": sink}) as rt:
        enqueue_many = rt._store.outbox.enqueue_many

        def refusing(txn: Any, routed: Any, **kwargs: Any) -> Any:
            if any(envelope.payload == b"poison" for envelope, _ in routed):
                raise ValueError("this one cannot be written")
            return enqueue_many(txn, routed, **kwargs)

        monkeypatch.setattr(rt._store.outbox, "enqueue_many", refusing)
        outcomes: dict[bytes, object] = {}

        def send(payload: bytes) -> None:
            try:
                outcomes[payload] = rt.send("t", payload, key=payload.decode())
            except ValueError as refused:
                outcomes[payload] = refused

        threads = [threading.Thread(target=send, args=(p,)) for p in (b"a", b"poison", b"b")]
        with rt.transaction():  # the three join one write, held until the block ends
            for thread in threads:
                thread.start()
            wait_until(lambda: rt._in._joining.gathering == 3)
        for thread in threads:
            thread.join(10)
        assert isinstance(outcomes[b"poison"], ValueError)
        assert isinstance(outcomes[b"a"], Receipt) and isinstance(outcomes[b"b"], Receipt)
        assert rt.flush(10)
        assert rt.stats().in_flight == 0  # the refused one is not tracked
        assert rt._in._active == 0  # a close would not wait for it
        assert rt.send("t", b"c").wait(10) is not None  # the way in goes on
    assert sorted(sink.payloads()) == [b"a", b"b", b"c"]
