"""The SourceConsumer's rules that need no source."""

from __future__ import annotations

from surelay.actors.consumer import _episode
from surelay.errors import StorageFull


def test_a_full_store_is_one_episode_however_its_figures_move() -> None:
    first = repr(StorageFull("the map is full: 4,096 bytes more would touch the reserve"))
    later = repr(StorageFull("the map is full: 8,192 bytes more would touch the reserve"))
    assert _episode(first) == _episode(later)  # warned once, not at every back-off
    other = repr(ConnectionError("refused"))
    assert _episode(other) == other != _episode(first)
    assert _episode(None) is None
