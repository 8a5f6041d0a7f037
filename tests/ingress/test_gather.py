"""`Gather`: threads' items written one group at a time, each group once the one before
it is durable."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import Future

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surelay.ingress.gather import Gather
from tests.helpers import wait_until

WAIT = 10.0


class Writes:
    """A `write` whose groups become durable when the test says so."""

    def __init__(self) -> None:
        self.groups: list[list[tuple[int, int]]] = []
        self.durable: list[Future[object]] = []
        self.started = threading.Semaphore(0)
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def __call__(self, group: list[tuple[int, int]]) -> list[Future[object]]:
        future: Future[object] = Future()
        with self._lock:
            self.groups.append(list(group))
            self.durable.append(future)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        future.add_done_callback(self._ended)
        self.started.release()
        return [future]

    def _ended(self, _: object) -> None:
        with self._lock:
            self.in_flight -= 1

    def finish(self, index: int) -> None:
        self.durable[index].set_result(None)


def test_one_thread_alone_writes_at_once() -> None:
    writes = Writes()
    gather: Gather[tuple[int, int]] = Gather(writes)
    gather.join((0, 0))
    assert writes.groups == [[(0, 0)]]


def test_items_sent_while_a_group_is_written_form_the_next_group() -> None:
    writes = Writes()
    gather: Gather[tuple[int, int]] = Gather(writes, depth=1)
    gather.join((0, 0))  # written at once, not durable yet
    threads = [threading.Thread(target=gather.join, args=((n, 0),)) for n in (1, 2, 3, 4)]
    for thread in threads:
        thread.start()
    # the first to join leads the next group and waits; the others join it and return
    wait_until(lambda: sum(t.is_alive() for t in threads) == 1)
    assert len(writes.groups) == 1
    writes.finish(0)
    for thread in threads:
        thread.join(WAIT)
    assert len(writes.groups) == 2
    assert sorted(writes.groups[1]) == [(1, 0), (2, 0), (3, 0), (4, 0)]
    assert writes.most_in_flight == 1


def test_a_group_that_wrote_nothing_does_not_hold_up_the_next() -> None:
    calls: list[list[int]] = []

    def write(group: list[int]) -> list[Future[object]]:
        calls.append(group)
        return []  # (every item refused)

    gather: Gather[int] = Gather(write)
    gather.join(1)
    gather.join(2)
    assert calls == [[1], [2]]


def test_a_write_that_raises_does_not_hold_up_the_next() -> None:
    calls: list[list[int]] = []

    def write(group: list[int]) -> list[Future[object]]:
        calls.append(group)
        if len(calls) == 1:
            raise RuntimeError("broken")
        return []

    gather: Gather[int] = Gather(write)
    with pytest.raises(RuntimeError, match="broken"):
        gather.join(1)
    gather.join(2)
    assert calls == [[1], [2]]


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=6), st.integers(1, 3))
def test_every_item_is_written_once_and_each_threads_in_its_order(
    counts: list[int], depth: int
) -> None:
    """Threads each join their items one after another (as `send` does: the next only
    once the last is answered); a background finisher makes every write durable."""
    writes = Writes()
    gather: Gather[tuple[int, int]] = Gather(writes, depth=depth)
    answered = {thread: [threading.Event() for _ in range(n)] for thread, n in enumerate(counts)}
    stop = threading.Event()

    def finisher() -> None:
        done = 0
        while not stop.is_set() or done < len(writes.durable):
            if writes.started.acquire(timeout=0.05):
                groups = writes.groups[done]
                writes.finish(done)
                for thread, seq in groups:
                    answered[thread][seq].set()
                done += 1

    def sender(thread: int) -> None:
        for seq in range(counts[thread]):
            gather.join((thread, seq))
            assert answered[thread][seq].wait(WAIT)

    background = threading.Thread(target=finisher)
    background.start()
    threads = [threading.Thread(target=sender, args=(t,)) for t in range(len(counts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    stop.set()
    background.join(WAIT)
    items = [item for group in writes.groups for item in group]
    assert sorted(items) == sorted((t, s) for t, n in enumerate(counts) for s in range(n))
    for thread in range(len(counts)):
        assert [s for t, s in items if t == thread] == list(range(counts[thread]))
    assert writes.most_in_flight <= depth


def test_a_depth_of_two_writes_two_groups_at_once() -> None:
    writes = Writes()
    gather: Gather[tuple[int, int]] = Gather(writes, depth=2)
    gather.join((0, 0))
    gather.join((1, 0))  # written at once too: only one group is being written
    assert writes.most_in_flight == 2
    third = threading.Thread(target=gather.join, args=((2, 0),))
    third.start()
    wait_until(lambda: gather.gathering == 1)
    writes.finish(1)
    third.join(WAIT)
    assert writes.groups == [[(0, 0)], [(1, 0)], [(2, 0)]]


def test_a_depth_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="depth must be at least 1, got 0"):
        Gather(Writes(), depth=0)


def test_a_leader_interrupted_while_it_waits_still_writes_its_group() -> None:
    """ctrl-C reaching the leading thread (here the main thread, by SIGALRM) while it
    waits for room: the others' items are written all the same, then it is raised."""
    writes = Writes()
    gather: Gather[tuple[int, int]] = Gather(writes, depth=1)
    gather.join((0, 0))  # being written: the next leader waits

    def member() -> None:
        wait_until(lambda: gather.gathering == 1)  # the main thread leads by now
        gather.join((2, 0))

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    joiner = threading.Thread(target=member)
    joiner.start()
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(KeyboardInterrupt):
            gather.join((1, 0))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    joiner.join(WAIT)
    assert sorted(writes.groups[1]) == [(1, 0), (2, 0)]


def test_flush_writes_the_open_group_on_the_calling_thread() -> None:
    writes = Writes()
    gather: Gather[tuple[int, int]] = Gather(writes, depth=1)
    gather.join((0, 0))
    leader = threading.Thread(target=gather.join, args=((1, 0),))
    leader.start()
    wait_until(lambda: gather.gathering == 1)
    gather.flush()  # whatever the depth
    leader.join(WAIT)
    assert not leader.is_alive()
    assert writes.groups == [[(0, 0)], [(1, 0)]]
    gather.flush()  # nothing open: nothing written
    assert len(writes.groups) == 2
