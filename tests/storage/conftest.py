from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis.stateful import RuleBasedStateMachine

from surelay.storage import Store


class Clock:
    """Epoch seconds the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    s = Store.open(tmp_path / "data", map_size=1 << 24, clock=clock)
    yield s
    s.close()


class StoreMachine(RuleBasedStateMachine):
    """A hypothesis state machine over a real store in its own directory, with a clock
    the rules move (the tmp_path fixture cannot serve a state machine)."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.clock = Clock(1000.0)
        self.store = Store.open(
            self.dir / "s", map_size=1 << 22, clock=self.clock, durability="async"
        )

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir)
