"""`Joining`: items joined from many threads written as one operation, the group
closed only when the writer runs it; `ended` once per group, with every item."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from surelay.errors import StorageError
from surelay.storage.environment import Txn
from surelay.storage.joining import Joining
from surelay.storage.store import Store
from tests.helpers import wait_until

WAIT = 10.0


class Ends:
    """What `ended` was called with, group by group; an item's own event."""

    def __init__(self) -> None:
        self.groups: list[tuple[list[Any], Any, BaseException | None]] = []
        self.done: dict[Any, threading.Event] = {}
        self._lock = threading.Lock()

    def expect(self, item: Any) -> threading.Event:
        with self._lock:
            event = self.done[item] = threading.Event()
        return event

    def __call__(self, items: list[Any], result: Any, error: BaseException | None) -> None:
        with self._lock:
            self.groups.append((list(items), result, error))
            events = [self.done[item] for item in items if item in self.done]
        for event in events:
            event.set()


def written(store: Store) -> Callable[[Txn, list[str]], list[str]]:
    """Writes each item as a key of a host table; the items back."""
    table = store.host_table("joined")

    def run(txn: Txn, items: list[str]) -> list[str]:
        for item in items:
            txn.put(item.encode(), b"1", db=table)
        return list(items)

    return run


def test_items_joined_while_the_writer_waits_are_one_operation(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", claim=True) as store:
        ends = Ends()
        joining: Joining[str, list[str]] = Joining(store.write, written(store), ends)
        events = [ends.expect(f"i{n}") for n in range(5)]
        with store.transaction():  # holds the write lock: the writer cannot begin
            for n in range(5):
                joining.join(f"i{n}")
            assert joining.gathering == 5  # all in the one open group
        assert all(event.wait(WAIT) for event in events)
        assert ends.groups == [([f"i{n}" for n in range(5)], [f"i{n}" for n in range(5)], None)]
        assert joining.gathering == 0
        with store.read() as txn:
            table = store.host_table("joined")
            assert all(txn.get(f"i{n}".encode(), db=table) == b"1" for n in range(5))


def test_a_group_whose_write_fails_fails_whole_and_the_next_one_writes(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", claim=True) as store:
        ends = Ends()
        run = written(store)

        def failing(txn: Txn, items: list[str]) -> list[str]:
            if "bad" in items:
                raise ValueError("cannot write bad")
            return run(txn, items)

        joining: Joining[str, list[str]] = Joining(store.write, failing, ends)
        first = [ends.expect("a"), ends.expect("bad")]
        with store.transaction():
            joining.join("a")
            joining.join("bad")
        assert all(event.wait(WAIT) for event in first)
        ((items, result, error),) = ends.groups
        assert (items, result) == (["a", "bad"], None)
        assert isinstance(error, ValueError)
        later = ends.expect("c")
        joining.join("c")
        assert later.wait(WAIT)
        assert ends.groups[1] == (["c"], ["c"], None)
        with store.read() as txn:
            assert txn.get(b"a", db=store.host_table("joined")) is None  # nothing of it


def test_a_closed_store_ends_the_group_at_once_with_its_error(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "d", claim=True)
    ends = Ends()
    joining: Joining[str, list[str]] = Joining(store.write, written(store), ends)
    store.close()
    joining.join("late")
    ((items, result, error),) = ends.groups  # ended on this thread, before join returned
    assert (items, result) == (["late"], None)
    assert isinstance(error, StorageError)
    assert joining.gathering == 0  # the next join opens a group of its own


def test_an_operation_run_again_writes_the_same_items() -> None:
    """The writer runs an operation again after a batch failed or the map grew: the
    items that join meanwhile go to the next group, not into the rerun."""
    ends = Ends()
    runs: list[list[str]] = []
    submitted: list[tuple[Callable[[Any], Any], Future[Any]]] = []

    def submit(op: Callable[[Any], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        submitted.append((op, future))
        return future

    def run(_txn: Any, items: list[str]) -> int:
        runs.append(list(items))
        return len(items)

    joining: Joining[str, int] = Joining(submit, run, ends)
    joining.join("a")
    op, future = submitted[0]
    op(None)  # the first run closes the group
    joining.join("b")  # so this one opens the next
    assert len(submitted) == 2
    future.set_result(op(None))  # the rerun, committed
    assert runs == [["a"], ["a"]]
    assert ends.groups == [(["a"], 1, None)]
    op, future = submitted[1]
    future.set_result(op(None))
    assert ends.groups[1] == (["b"], 1, None)


@settings(max_examples=15, deadline=None)
@given(threads=st.integers(1, 8), each=st.integers(1, 12))
def test_every_item_of_every_thread_is_ended_once_in_its_threads_order(
    tmp_path_factory: Any, threads: int, each: int
) -> None:
    path = tmp_path_factory.mktemp("j")
    with Store.open(path / "d", claim=True) as store:
        ends = Ends()
        joining: Joining[str, list[str]] = Joining(store.write, written(store), ends)

        def sender(t: int) -> None:
            for i in range(each):  # like send(): the next only once the last is written
                event = ends.expect(f"{t}-{i}")
                joining.join(f"{t}-{i}")
                assert event.wait(WAIT)

        workers = [threading.Thread(target=sender, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(WAIT * 2)
        wait_until(lambda: sum(len(items) for items, _, _ in ends.groups) == threads * each)
        order = [item for items, result, error in ends.groups for item in items]
        assert all(error is None and result == items for items, result, error in ends.groups)
        assert sorted(order) == sorted(f"{t}-{i}" for t in range(threads) for i in range(each))
        for t in range(threads):
            mine = [item for item in order if item.startswith(f"{t}-")]
            assert mine == [f"{t}-{i}" for i in range(each)]


def test_a_group_ended_without_being_run_is_closed_and_the_next_item_written() -> None:
    """The writer may fail an operation without running it (a store failing as a
    transaction begins, a close): the group must not stay open to take later items."""
    ends = Ends()
    submitted: list[Future[Any]] = []

    def submit(_op: Callable[[Any], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        submitted.append(future)
        return future

    joining: Joining[str, int] = Joining(submit, lambda _txn, items: len(items), ends)
    joining.join("a")
    submitted[0].set_exception(StorageError("the store failed as the write began"))
    assert ends.groups == [(["a"], None, submitted[0].exception())]
    joining.join("b")
    assert len(submitted) == 2  # a group of its own, with an operation of its own
    submitted[1].cancel()
    assert ends.groups[1][0] == ["b"] and isinstance(ends.groups[1][2], StorageError)
