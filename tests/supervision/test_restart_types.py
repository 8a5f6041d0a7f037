"""permanent / transient / temporary on normal exit and on crash (OTP's restart types)."""

from __future__ import annotations

import pytest

from .workers import RESTART_TYPES, Journal, crash, exit_normally, running, sync, worker


@pytest.mark.parametrize(("restart", "ending", "restarted"), RESTART_TYPES)
def test_restart_type(restart: str, ending: str, restarted: bool) -> None:
    journal = Journal()
    with running(worker(journal, "a", restart=restart), intensity=5) as sup:
        ref = sup.child("a")
        if ending == "crash":
            crash(ref)
        else:
            exit_normally(ref)
        assert sync(ref) == (2 if restarted else None)
        children = {c.id: c for c in sup.which_children()}
        if restarted:
            assert children["a"].status == "running"
            assert children["a"].restarts == 1
        elif restart == "temporary":
            assert children == {}  # its spec is removed
        else:
            assert children["a"].status == "stopped"
            assert not ref.is_alive()


def test_terminated_temporary_child_loses_its_spec() -> None:
    journal = Journal()
    with running(worker(journal, "t", restart="temporary")) as sup:
        sup.terminate_child("t")
        assert sup.which_children() == []
