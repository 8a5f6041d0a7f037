"""A send without `txn=` inside `rt.transaction()` on the same thread: refused at once
(it would wait for ever for the write lock its own transaction holds)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from surelay import Outcome, Runtime
from tests.helpers import Recorder, open_runtime


class Abort(Exception):
    pass


def in_thread(body: Callable[[], None], timeout: float = 10.0) -> None:
    """Run `body` in a thread of its own; fail (not hang) if it does not end in time."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            body()
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "deadlocked: the send inside the transaction never returned"
    if failures:
        raise failures[0]


def test_send_without_txn_inside_a_transaction_is_refused_and_it_still_commits(
    tmp_path: Path,
) -> None:
    sink = Recorder()
    with open_runtime(tmp_path, {"t": sink}) as rt:
        orders = rt.table("orders")

        def body() -> None:
            with rt.transaction() as txn:
                txn.put(b"o-1", b"paid", db=orders)
                with pytest.raises(RuntimeError, match="pass txn=txn"):
                    rt.send("t", b"outside")
                with pytest.raises(RuntimeError, match="pass txn=txn"):
                    rt.send_batch([{"transport": "t", "payload": b"outside"}])
                inside = rt.send("t", b"inside", txn=txn)
            assert inside.wait(5) is Outcome.DELIVERED
            # after the block the thread sends as usual
            assert rt.send("t", b"after").wait(5) is Outcome.DELIVERED

        in_thread(body)
        with rt._store.read() as txn:
            assert txn.get(b"o-1", db=orders) == b"paid"
        assert rt.stats().accepted == 2
    assert sorted(sink.payloads()) == [b"after", b"inside"]


def test_the_refused_send_leaves_the_transaction_free_to_abort(tmp_path: Path) -> None:
    sink = Recorder()
    with open_runtime(tmp_path, {"t": sink}) as rt:
        orders = rt.table("orders")

        def body() -> None:
            with pytest.raises(Abort), rt.transaction() as txn:
                txn.put(b"o-2", b"paid", db=orders)
                with pytest.raises(RuntimeError):
                    rt.send("t", b"outside")
                raise Abort

        in_thread(body)
        with rt._store.read() as txn:
            assert txn.get(b"o-2", db=orders) is None
        # another thread was never refused: only the transaction's own thread is
        assert rt.send("t", b"x").wait(5) is Outcome.DELIVERED
        assert rt.flush(5)
    assert sink.payloads() == [b"x"]


def test_asend_without_txn_inside_a_transaction_is_refused(tmp_path: Path) -> None:
    sink = Recorder()

    async def main(rt: Runtime) -> None:
        with rt.transaction() as txn:
            with pytest.raises(RuntimeError, match="pass txn=txn"):
                await rt.asend("t", b"outside")
            with pytest.raises(RuntimeError, match="pass txn=txn"):
                await rt.asend_batch([{"transport": "t", "payload": b"outside"}])
            inside = await rt.asend("t", b"inside", txn=txn)
        assert await asyncio.wait_for(inside, 5) is Outcome.DELIVERED

    with open_runtime(tmp_path, {"t": sink}) as rt:
        in_thread(lambda: asyncio.run(main(rt)))
    assert sink.payloads() == [b"inside"]


def test_a_flush_inside_a_transaction_is_refused_not_a_deadlock(tmp_path: Path) -> None:
    """What flush waits for (the delivery's record) needs the block's write lock."""
    sink = Recorder()
    with open_runtime(tmp_path, {"t": sink}) as rt:

        def body() -> None:
            with rt.transaction() as txn:
                rt.send("t", b"inside", txn=txn)
                with pytest.raises(RuntimeError, match=r"flush\(\) inside rt.transaction"):
                    rt.flush()
            assert rt.flush(5)

        in_thread(body)
    assert sink.payloads() == [b"inside"]
