"""PartitionQueue: strict FIFO per key, weighted priorities, no starvation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from surelay.actors.queues import PartitionQueue
from surelay.envelope import Envelope, Priority
from surelay.policy.priority import WEIGHTS, weighted_pattern
from surelay.storage.records import OutboxEntry


def entry(n: int, key: str | None, priority: Priority = Priority.NORMAL) -> OutboxEntry:
    return OutboxEntry(n, Envelope(f"m{n}", "t", b"", key=key, priority=priority), 0.0, 0)


def test_the_pattern_serves_six_three_one_and_spreads_them() -> None:
    pattern = weighted_pattern(WEIGHTS)
    assert len(pattern) == 10
    assert [pattern.count(r) for r in (0, 1, 2)] == [6, 3, 1]
    assert pattern[:2] != (0, 0) or pattern[2] != 0  # not six HIGH in a row first


def test_low_is_never_starved_while_high_keeps_coming() -> None:
    queue = PartitionQueue()
    for n in range(5):
        queue.ready(entry(n, f"low{n}", Priority.LOW)) if queue.add(
            entry(n, f"low{n}", Priority.LOW)
        ) else None
    served_low = 0
    for n in range(100, 200):
        high = entry(n, f"h{n}", Priority.HIGH)
        assert queue.add(high)
        queue.ready(high)
        (taken,) = queue.take(1)
        served_low += taken.envelope.priority is Priority.LOW
        queue.finish(taken)
    assert served_low == 5  # one in ten picks, HIGH arriving all along


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"), st.sampled_from(["a", "b", "c", None]), st.sampled_from(list(Priority))
        ),
        st.tuples(st.just("take"), st.integers(1, 4), st.booleans()),
    ),
    max_size=80,
)


@given(ops)
def test_each_key_is_served_in_acceptance_order_one_at_a_time(
    steps: list[tuple[object, ...]],
) -> None:
    """Model: per key, the order of acceptance; a taken head either ends or is held and
    made ready again; the next of its key is never taken while it is out."""
    queue = PartitionQueue()
    accepted: dict[str, list[str]] = {}
    served: dict[str, list[str]] = {}
    out: set[str] = set()
    held: list[OutboxEntry] = []
    n = 0
    for step in steps:
        if step[0] == "add":
            _, key, priority = step
            e = entry(n, key, priority)  # type: ignore[arg-type]
            n += 1
            line = str(key) if key is not None else e.envelope.message_id
            accepted.setdefault(line, []).append(e.envelope.message_id)
            if queue.add(e):
                queue.ready(e)
        else:
            _, limit, fail = step
            for e in queue.take(limit):  # type: ignore[arg-type]
                line = e.envelope.key if e.envelope.key is not None else e.envelope.message_id
                assert line not in out
                if fail:
                    out.add(line)
                    queue.hold(e)
                    held.append(e)
                    continue
                served.setdefault(line, []).append(e.envelope.message_id)
                following = queue.finish(e)
                if following is not None:
                    queue.ready(following)
            for e in held:  # held heads come back (their retry is due)
                out.discard(e.envelope.key if e.envelope.key is not None else e.envelope.message_id)
                queue.ready(e)
            held.clear()
    for line, ids in served.items():
        assert ids == accepted[line][: len(ids)]
    assert len(queue) == sum(len(v) for v in accepted.values()) - sum(
        len(v) for v in served.values()
    )


def test_behind_lists_a_heads_line_in_order_and_is_head_follows_finish() -> None:
    queue = PartitionQueue()
    a0, b0, a1, a2 = entry(0, "a"), entry(1, "b"), entry(2, "a"), entry(3, "a")
    for e in (a0, b0, a1, a2):
        queue.add(e)
    assert queue.behind(a0, 5) == [a1, a2]
    assert queue.behind(a0, 1) == [a1]
    assert queue.behind(b0, 5) == []
    assert queue.is_head(a0) and queue.is_head(b0) and not queue.is_head(a1)
    assert queue.finish(a0) is a1
    assert queue.is_head(a1) and queue.behind(a1, 5) == [a2]
    queue.finish(b0)
    assert not queue.is_head(b0)  # its line is gone
