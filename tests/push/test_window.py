"""The delivery window: never more than `size` unacked, resends with backoff while
nothing moves, poison after `max_deliveries`, and acks that move it on."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from surelay.push.window import Window


def test_it_fills_resends_with_backoff_then_calls_the_oldest_poison() -> None:
    w = Window(acked=0, size=3, ack_timeout=1.0, max_deliveries=3)
    assert (w.room, w.resend_at(), w.due(0.0)) == (3, None, None)
    w.sent_up_to(3, now=10.0)
    assert (w.unacked, w.room, w.resend_at()) == (3, 0, 11.0)
    assert w.due(10.9) is None
    assert w.due(11.0) == "resend"
    w.resent(11.0)
    assert w.resend_at() == 13.0  # twice the wait after the second sending
    w.resent(13.0)
    assert w.resend_at() == 17.0
    assert w.due(17.0) == "poison"
    w.skip(1, now=17.0)
    assert (w.acked, w.unacked, w.tries, w.resend_at()) == (1, 2, 1, 18.0)


def test_an_ack_moves_it_on_and_never_back() -> None:
    w = Window(acked=5, size=4, ack_timeout=2.0, max_deliveries=5)
    assert w.sent == 5
    w.sent_up_to(9, now=0.0)
    w.resent(2.0)
    assert not w.ack(5, now=3.0)  # no progress
    assert w.ack(7, now=3.0)
    assert (w.acked, w.tries, w.resend_at()) == (7, 1, 5.0)
    assert w.ack(99, now=4.0)  # clamped to what was sent
    assert (w.acked, w.unacked, w.resend_at()) == (9, 0, None)


@given(
    size=st.integers(1, 8),
    steps=st.lists(
        st.tuples(st.sampled_from(["send", "ack", "tick"]), st.integers(0, 20)), max_size=60
    ),
)
def test_the_unacked_stay_within_the_window(size: int, steps: list[tuple[str, int]]) -> None:
    w = Window(acked=0, size=size, ack_timeout=1.0, max_deliveries=3)
    now = 0.0
    for action, n in steps:
        now += 0.5
        if action == "send" and w.room:
            w.sent_up_to(w.sent + min(n + 1, w.room), now)
        elif action == "ack":
            w.ack(n, now)
        else:
            due = w.due(now)
            if due == "resend":
                w.resent(now)
            elif due == "poison":
                w.skip(w.acked + 1, now)
        assert 0 <= w.unacked <= size
        assert w.acked <= w.sent
        assert (w.resend_at() is None) == (w.unacked == 0)
