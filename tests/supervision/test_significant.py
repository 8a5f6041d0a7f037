"""auto_shutdown with significant children (OTP 24+)."""

from __future__ import annotations

import pytest
from pykka import ActorDeadError

from surelay.supervision import Supervisor

from .workers import Journal, crash, exit_normally, running, sync, worker


def test_any_significant_stops_the_supervisor_when_one_ends() -> None:
    journal = Journal()
    sup = Supervisor.start(
        [
            worker(journal, "plain"),
            worker(journal, "sig", restart="transient", significant=True),
        ],
        auto_shutdown="any_significant",
    )
    exit_normally(sup.child("sig"))
    with pytest.raises(ActorDeadError):
        sup.which_children()
    assert journal.of("stop") == ["sig", "plain"]


def test_a_crashed_transient_significant_child_is_restarted_not_terminated() -> None:
    journal = Journal()
    spec = worker(journal, "sig", restart="transient", significant=True)
    with running(spec, auto_shutdown="any_significant") as sup:
        crash(sup.child("sig"))
        assert sync(sup.child("sig")) == 2
        assert sup.is_alive()


def test_all_significant_waits_for_the_last_one() -> None:
    journal = Journal()
    sup = Supervisor.start(
        [
            worker(journal, "one", restart="temporary", significant=True),
            worker(journal, "two", restart="temporary", significant=True),
            worker(journal, "plain"),
        ],
        auto_shutdown="all_significant",
    )
    two = sup.child("two")
    crash(sup.child("one"))  # temporary: not restarted, but "two" still runs
    assert [c.id for c in sup.which_children()] == ["two", "plain"]
    exit_normally(two)
    with pytest.raises(ActorDeadError):
        sup.which_children()


def test_terminate_child_does_not_trigger_auto_shutdown() -> None:
    journal = Journal()
    spec = worker(journal, "sig", restart="transient", significant=True)
    with running(spec, auto_shutdown="any_significant") as sup:
        sup.terminate_child("sig")
        assert sup.is_alive()
        assert sup.count_children()["active"] == 0


def test_nested_auto_shutdown_is_a_normal_exit_for_the_parent() -> None:
    journal = Journal()
    inner = Supervisor.spec(
        "inner",
        [worker(journal, "sig", restart="transient", significant=True)],
        restart="transient",
        auto_shutdown="any_significant",
    )
    with running(inner, worker(journal, "peer")) as root:
        inner_ref = root.child("inner")
        exit_normally(inner_ref.child("sig"))
        assert sync(root.child("peer")) == 1  # root handled inner's exit before this
        infos = {c.id: c.status for c in root.which_children()}
        assert infos == {"inner": "stopped", "peer": "running"}
        assert not inner_ref.is_alive()
