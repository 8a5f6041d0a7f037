"""`on_dead_letter`: runs once per dead letter once it is durable, also after a crash; a
hook that raises or hangs is logged and holds up nothing else."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from surelay import (
    DeadLetter,
    Envelope,
    Outcome,
    PermanentError,
    Runtime,
    RuntimeConfig,
)
from surelay.storage import Store
from tests.helpers import wait_until
from tests.storage.builders import dead_letter


def refuse_bad(envelope: Envelope) -> None:
    if envelope.payload.startswith(b"bad"):
        raise PermanentError(f"refused {envelope.payload.decode()}")


def test_the_hook_runs_once_per_dead_letter_after_it_is_durable(tmp_path: Path) -> None:
    seen: list[tuple[DeadLetter, DeadLetter | None]] = []
    store_of: list[Store] = []

    def hook(record: DeadLetter) -> None:
        store = store_of[0]
        with store.read() as txn:
            seen.append((record, store.dead_letters.get(txn, record.id)))

    config = RuntimeConfig(on_dead_letter=hook)
    with Runtime.open(tmp_path, transports={"t": refuse_bad}, config=config) as rt:
        store_of.append(rt._store)
        receipts = [rt.send("t", b"bad-%d" % i, type="invoice") for i in range(3)]
        assert rt.send("t", b"good").wait(10) is Outcome.DELIVERED
        assert all(r.wait(10) is Outcome.DEAD_LETTERED for r in receipts)
        wait_until(lambda: len(seen) == 3)
        wait_until(lambda: _marks(rt) == 0)
    assert sorted(r.message_id for r, _ in seen) == sorted(r.message_id for r in receipts)
    for record, stored in seen:
        assert stored == record  # durable before the hook saw it
        assert (
            record.type == "invoice"
            and record.reason == f"PermanentError: refused {record.payload.decode()}"
        )
    with Runtime.open(tmp_path, transports={"t": refuse_bad}, config=config) as rt:
        store_of[0] = rt._store
        assert rt.flush(5)
    assert len(seen) == 3  # not again at the next open


def _marks(rt: Runtime) -> int:
    store = rt._store
    with store.read() as txn:
        return store.hook_marks.count(txn)


def test_a_coroutine_hook_is_awaited(tmp_path: Path) -> None:
    seen: list[str] = []

    async def hook(record: DeadLetter) -> None:
        await asyncio.sleep(0)
        seen.append(record.message_id)

    config = RuntimeConfig(on_dead_letter=hook)
    with Runtime.open(tmp_path, transports={"t": refuse_bad}, config=config) as rt:
        receipt = rt.send("t", b"bad")
        assert receipt.wait(10) is Outcome.DEAD_LETTERED
        wait_until(lambda: seen == [receipt.message_id])


def test_a_hook_that_raises_or_hangs_is_logged_and_holds_up_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hang = threading.Event()
    seen: list[bytes] = []

    def hook(record: DeadLetter) -> None:
        if record.payload == b"bad-raise":
            raise RuntimeError("the hook is broken")
        if record.payload == b"bad-hang":
            hang.wait(30)
        seen.append(record.payload)

    async def ahook(record: DeadLetter) -> None:
        if record.payload == b"bad-hang":
            await asyncio.sleep(30)
        hook(record)

    for chosen in (hook, ahook):
        caplog.clear()
        config = RuntimeConfig(on_dead_letter=chosen, ack_timeout=0.3)
        path = tmp_path / chosen.__name__
        with (
            caplog.at_level(logging.ERROR, logger="surelay.hooks"),
            Runtime.open(path, transports={"t": refuse_bad}, config=config) as rt,
        ):
            for payload in (b"bad-raise", b"bad-hang", b"bad-after"):
                assert rt.send("t", payload).wait(10) is Outcome.DEAD_LETTERED
            # delivery goes on while the hook hangs
            assert rt.send("t", b"good").wait(10) is Outcome.DELIVERED
            wait_until(lambda: b"bad-after" in seen)
            wait_until(lambda: _marks(rt) == 0)
        messages = [r.getMessage() for r in caplog.records]
        assert any("it raised RuntimeError" in m for m in messages)
        assert any("did not end within 0.3s" in m for m in messages)
        seen.clear()
    hang.set()


def test_a_hook_cut_short_by_a_crash_runs_at_the_next_open(tmp_path: Path) -> None:
    # what a kill between the dead letter's commit and its hook leaves: the record and
    # its mark, durable together
    store = Store.open(tmp_path, claim=True)
    record = dead_letter(key=None, transport="t", payload=b"lost?", headers={})
    store.dead_lettered(record, status_until=9e9, hooked=True).result()
    store.close()
    seen: list[DeadLetter] = []
    config = RuntimeConfig(on_dead_letter=seen.append)
    with Runtime.open(tmp_path, transports={"t": refuse_bad}, config=config) as rt:
        wait_until(lambda: seen == [record])
        wait_until(lambda: _marks(rt) == 0)
        status = rt.status("m-1")
        assert status is not None and status.state == "dead"


def test_a_hook_must_be_callable() -> None:
    with pytest.raises(ValueError, match="on_dead_letter must be callable"):
        RuntimeConfig(on_dead_letter="print")  # type: ignore[arg-type]


def test_many_marks_left_by_a_crash_and_new_dead_letters_each_run_once(tmp_path: Path) -> None:
    store = Store.open(tmp_path, claim=True)
    left = [  # more than one chunk of marks
        dead_letter(2.0 + i, message_id=f"m-{i}", idempotency_key=f"m-{i}", key=None, transport="t")
        for i in range(250)
    ]
    for record in left:
        store.dead_lettered(record, status_until=9e9, hooked=True)
    store.write(lambda _txn: None).result()
    store.close()
    seen: list[str] = []
    lock = threading.Lock()

    def hook(record: DeadLetter) -> None:
        with lock:
            seen.append(record.message_id)

    config = RuntimeConfig(on_dead_letter=hook)
    with Runtime.open(tmp_path, transports={"t": refuse_bad}, config=config) as rt:
        fresh = [rt.send("t", b"bad-%d" % i) for i in range(20)]
        assert all(r.wait(10) is Outcome.DEAD_LETTERED for r in fresh)
        wait_until(lambda: len(seen) >= 270 and _marks(rt) == 0, 30)
    assert sorted(seen) == sorted([r.message_id for r in left] + [r.message_id for r in fresh])
