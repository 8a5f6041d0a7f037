from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
