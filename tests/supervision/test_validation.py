"""Bad flags and specs are refused with a ValueError that names the field."""

from __future__ import annotations

from typing import Any

import pytest

from surelay.supervision import ChildSpec, Supervisor

from .workers import Journal, Worker, worker


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        ({"strategy": "one_for_some"}, "strategy"),
        ({"intensity": -1}, "intensity"),
        ({"intensity": 1.5}, "intensity"),
        ({"period": 0}, "period"),
        ({"period": -3.0}, "period"),
        ({"backoff": (0.0, 1.0)}, "backoff"),
        ({"backoff": (2.0, 1.0)}, "backoff"),
        ({"auto_shutdown": "sometimes"}, "auto_shutdown"),
    ],
)
def test_bad_supervisor_flags(flags: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Supervisor.start([], **flags)
    with pytest.raises(ValueError, match=field):
        Supervisor.spec("inner", [], **flags)


def test_duplicate_child_ids() -> None:
    journal = Journal()
    with pytest.raises(ValueError, match="duplicate child id 'a'"):
        Supervisor.start([worker(journal, "a"), worker(journal, "a")])
    assert journal.starts == {}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"id": ""}, "id"),
        ({"restart": "sometimes"}, "restart"),
        ({"shutdown": -1}, "shutdown"),
        ({"significant": True, "restart": "permanent"}, "significant"),
        ({"args": [1]}, "args"),
    ],
)
def test_bad_child_spec(spec: dict[str, Any], field: str) -> None:
    fields: dict[str, Any] = {"id": "a", "factory": Worker, **spec}
    with pytest.raises(ValueError, match=field):
        ChildSpec(**fields)


def test_significant_child_needs_auto_shutdown() -> None:
    journal = Journal()
    spec = worker(journal, "a", restart="transient", significant=True)
    with pytest.raises(ValueError, match="auto_shutdown"):
        Supervisor.start([spec])
    sup = Supervisor.start([])
    try:
        with pytest.raises(ValueError, match="auto_shutdown"):
            sup.start_child(spec)
    finally:
        sup.stop()


def test_unknown_flag_in_nested_spec() -> None:
    with pytest.raises(ValueError, match="unknown supervisor flag"):
        Supervisor.spec("inner", [], stratgey="one_for_all")


def test_factory_must_build_an_actor() -> None:
    sup = Supervisor.start([])
    try:
        with pytest.raises(RuntimeError, match=r"not a surelay\.supervision\.Actor"):
            sup.start_child(ChildSpec("x", object))  # type: ignore[arg-type]
        assert sup.which_children() == []
    finally:
        sup.stop()
