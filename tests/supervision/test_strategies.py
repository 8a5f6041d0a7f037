"""one_for_one / one_for_all / rest_for_one, checked by each child's incarnation."""

from __future__ import annotations

import pytest

from .workers import Journal, crash, running, sync, worker

NAMES = ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("one_for_one", {"a": 1, "b": 2, "c": 1, "d": 1}),
        ("one_for_all", {"a": 2, "b": 2, "c": 2, "d": 2}),
        ("rest_for_one", {"a": 1, "b": 2, "c": 2, "d": 2}),
    ],
)
def test_incarnations_after_b_crashes(strategy: str, expected: dict[str, int]) -> None:
    journal = Journal()
    with running(*[worker(journal, n) for n in NAMES], strategy=strategy) as sup:
        crash(sup.child("b"))
        assert {n: sync(sup.child(n)) for n in NAMES} == expected
        if strategy != "one_for_one":
            # the group stops in reverse order and starts again in order
            restarted = [n for n in NAMES if expected[n] == 2]
            assert journal.of("stop") == [n for n in reversed(restarted) if n != "b"]
            assert journal.of("start")[len(NAMES) :] == restarted


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
def test_temporary_bystander_is_not_restarted(strategy: str) -> None:
    journal = Journal()
    children = [worker(journal, "a"), worker(journal, "t", restart="temporary")]
    with running(*children, strategy=strategy) as sup:
        tmp = sup.child("t")
        crash(sup.child("a"))
        assert [c.id for c in sup.which_children()] == ["a"]
        assert sync(tmp) is None
        assert journal.starts["t"] == 1


def test_stopped_child_stays_stopped_in_a_group_restart() -> None:
    journal = Journal()
    with running(worker(journal, "a"), worker(journal, "b"), strategy="one_for_all") as sup:
        sup.terminate_child("b")
        crash(sup.child("a"))
        assert [(c.id, c.status) for c in sup.which_children()] == [
            ("a", "running"),
            ("b", "stopped"),
        ]
        assert journal.starts["b"] == 1
