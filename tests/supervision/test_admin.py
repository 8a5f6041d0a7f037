"""Child administration, after OTP's supervisor_SUITE (sup_start, child_adm, ...)."""

from __future__ import annotations

import pytest
from pykka import ActorDeadError

from surelay.supervision import ChildStartError, Supervisor, SupervisorRef

from .workers import WAIT, Journal, crash, running, sync, worker


def test_child_admin_sequence() -> None:
    journal = Journal()
    with running() as sup:
        ref = sup.start_child(worker(journal, "a"))
        assert sync(ref) == 1
        with pytest.raises(ValueError, match="already exists"):  # already started
            sup.start_child(worker(journal, "a"))

        sup.terminate_child("a")
        assert not ref.is_alive()
        with pytest.raises(ActorDeadError):
            ref.tell(("echo", 1))
        sup.terminate_child("a")  # terminating twice is fine
        assert [(c.id, c.status) for c in sup.which_children()] == [("a", "stopped")]

        again = sup.restart_child("a")
        assert again is ref  # the same stable ref
        assert sync(ref) == 2
        with pytest.raises(ValueError, match="running"):
            sup.restart_child("a")
        with pytest.raises(ValueError, match="running"):  # delete only when stopped
            sup.delete_child("a")

        sup.terminate_child("a")
        sup.delete_child("a")
        assert sup.which_children() == []
        for call in (sup.child, sup.terminate_child, sup.restart_child, sup.delete_child):
            with pytest.raises(KeyError, match="'a'"):  # not found
                call("a")


def test_start_child_whose_on_start_fails_is_not_added() -> None:
    journal = Journal()
    journal.failing_starts["a"] = 1
    with running() as sup:
        with pytest.raises(ChildStartError, match="'a' failed to start") as info:
            sup.start_child(worker(journal, "a"))
        assert info.value.child_id == "a"
        assert sup.which_children() == []
        assert sync(sup.start_child(worker(journal, "a"))) == 2


def test_failing_child_fails_the_supervisor_start_and_stops_earlier_children() -> None:
    journal = Journal()
    journal.failing_starts["b"] = 1
    with pytest.raises(ChildStartError, match="'b'"):
        Supervisor.start([worker(journal, "a"), worker(journal, "b"), worker(journal, "c")])
    assert journal.of("start") == ["a"]
    assert journal.of("stop") == ["a"]
    assert journal.starts["c"] == 0


def test_children_start_in_order_and_stop_in_reverse() -> None:
    journal = Journal()
    names = ["a", "b", "c", "d"]
    sup = Supervisor.start([worker(journal, n) for n in names])
    assert journal.of("start") == names
    sup.start_child(worker(journal, "e"))
    sup.stop(WAIT)
    assert journal.of("stop") == ["e", "d", "c", "b", "a"]
    assert not sup.is_alive()
    sup.stop()  # stopping twice is fine
    with pytest.raises(ActorDeadError):
        sup.which_children()


def test_count_children() -> None:
    journal = Journal()
    inner = Supervisor.spec("inner", [worker(journal, "x")])
    with running(worker(journal, "a"), worker(journal, "b"), inner) as sup:
        assert sup.count_children() == {"specs": 3, "active": 3, "supervisors": 1, "workers": 2}
        sup.terminate_child("a")
        assert sup.count_children() == {"specs": 3, "active": 2, "supervisors": 1, "workers": 2}
        assert isinstance(sup.child("inner"), SupervisorRef)


def test_ref_raises_only_once_stopped_for_good() -> None:
    journal = Journal()
    with running(worker(journal, "a")) as sup:
        ref = sup.child("a")
        for _ in range(3):
            crash(ref)
            assert ref.is_alive()
            ref.tell(("echo", "still here"))
        assert sync(ref) == 4
    assert not ref.is_alive()
    with pytest.raises(ActorDeadError):
        ref.ask("incarnation", WAIT)
