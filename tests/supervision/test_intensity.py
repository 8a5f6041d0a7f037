"""Restart intensity, the sliding window, and escalation through nested supervisors."""

from __future__ import annotations

import pytest
from pykka import ActorDeadError

from surelay.supervision import Supervisor

from .workers import WAIT, FakeClock, Journal, crash, running, sync, worker


def test_intensity_exceeded_stops_children_in_reverse_and_the_supervisor() -> None:
    journal = Journal()
    clock = FakeClock()
    sup = Supervisor.start(
        [worker(journal, n) for n in "abc"], intensity=2, period=5.0, clock=clock
    )
    a = sup.child("a")
    crash(a)
    crash(a)
    assert sync(a) == 3
    crash(a)  # the third restart within 5 s is one too many
    with pytest.raises(ActorDeadError):
        sup.which_children()
    assert not sup.is_alive()
    assert not a.is_alive()
    assert journal.of("stop") == ["c", "b"]  # a had crashed; the others stop in reverse
    sup.stop()  # nothing left to stop


def test_intensity_zero_gives_up_on_the_first_crash() -> None:
    journal = Journal()
    sup = Supervisor.start([worker(journal, "a")], intensity=0)
    crash(sup.child("a"))
    with pytest.raises(ActorDeadError):
        sup.count_children()


def test_restarts_spaced_beyond_the_period_never_kill_the_supervisor() -> None:
    journal = Journal()
    clock = FakeClock()
    with running(worker(journal, "a"), intensity=1, period=10.0, clock=clock) as sup:
        a = sup.child("a")
        for n in range(2, 12):
            crash(a)
            assert sync(a) == n
            clock.advance(10.5)
        assert sup.is_alive()
        crash(a)
        crash(a)  # two within the period: more than intensity=1
        with pytest.raises(ActorDeadError):
            sup.which_children()


def test_group_restart_counts_once() -> None:
    journal = Journal()
    children = [worker(journal, n) for n in "abcd"]
    with running(*children, strategy="one_for_all", intensity=1, clock=FakeClock()) as sup:
        crash(sup.child("a"))  # four children restart, one restart counted
        assert [sync(sup.child(n)) for n in "abcd"] == [2, 2, 2, 2]
        assert sup.is_alive()


def test_escalation_through_a_nested_supervisor() -> None:
    journal = Journal()
    clock = FakeClock()
    inner = Supervisor.spec("inner", [worker(journal, "w")], intensity=0, clock=clock)
    with running(worker(journal, "peer"), inner, intensity=1, clock=clock) as root:
        inner_ref = root.child("inner")
        w = inner_ref.child("w")  # held across the inner supervisor's restart
        crash(w)  # inner gives up at once; root restarts it, and it restarts w
        assert sync(w) == 2
        assert inner_ref.is_alive()
        infos = {c.id: (c.status, c.restarts) for c in root.which_children()}
        assert infos == {"peer": ("running", 0), "inner": ("running", 1)}
        assert sync(root.child("peer")) == 1

        crash(w)  # inner gives up again: root's second restart within its period
        with pytest.raises(ActorDeadError):  # queued in inner's mailbox, failed at the close
            inner_ref.which_children()
        with pytest.raises(ActorDeadError):
            root.which_children()
        assert not w.is_alive()
        assert not inner_ref.is_alive()
        assert journal.of("stop") == ["peer"]


def test_child_whose_on_start_keeps_failing_escalates() -> None:
    journal = Journal()
    sup = Supervisor.start([worker(journal, "a"), worker(journal, "b")], intensity=3)
    journal.failing_starts["a"] = 100
    a = sup.child("a")
    crash(a)
    assert sync(a) is None  # waits for a restart that never succeeds, until the close
    with pytest.raises(ActorDeadError):
        sup.which_children()  # the restarts failed until intensity ran out
    assert journal.starts["a"] == 1 + 3  # its first life, then three restarts that failed
    assert journal.of("stop") == ["b"]


def test_restart_that_fails_a_few_times_recovers_within_intensity() -> None:
    journal = Journal()
    with running(worker(journal, "a"), intensity=5) as sup:
        journal.failing_starts["a"] = 2
        a = sup.child("a")
        a.tell(("log", "queued behind the crash"))
        crash(a)
        assert sync(a) == 4
        assert journal.handled == [("a", "queued behind the crash")]
        assert sup.which_children()[0].restarts == 3
    assert sup.is_alive() is False


def test_stop_from_a_timeout_free_caller() -> None:
    sup = Supervisor.start([])
    sup.stop(WAIT)
    assert not sup.is_alive()
