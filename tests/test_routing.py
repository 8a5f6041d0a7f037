"""Routing: one stable hash, and one rule for where a message without a key goes."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from surelay.routing import home, partition_for, replay_partition, route


def test_the_hash_is_stable_across_processes_and_versions() -> None:
    assert partition_for("order-7", 1_000_003) == 164_682_458 % 1_000_003  # its CRC-32


@given(
    key=st.none() | st.text(min_size=1, max_size=20),
    partitions=st.integers(1, 64),
    otherwise=st.integers(0, 1 << 40),
)
def test_home_is_the_keys_partition_or_the_fallback_in_range(
    key: str | None, partitions: int, otherwise: int
) -> None:
    got = home(key, partitions, otherwise)
    assert 0 <= got < partitions
    assert got == (partition_for(key, partitions) if key is not None else otherwise % partitions)


def test_route_keeps_a_keys_partition_and_spreads_the_unkeyed_round_robin() -> None:
    items = ["k1", None, "k1", None, None, "k2"]
    turn = itertools.count()
    routed = route(items, lambda item: item, 3, turn)
    assert [item for item, _ in routed] == items
    keyed = {item: p for item, p in routed if item is not None}
    assert keyed == {"k1": partition_for("k1", 3), "k2": partition_for("k2", 3)}
    assert [p for item, p in routed if item is None] == [0, 1, 2]


def test_a_dead_letter_without_a_key_replays_by_its_id() -> None:
    assert replay_partition(None, "01ABC", 5) == partition_for("01ABC", 5)
    assert replay_partition("k", "01ABC", 5) == partition_for("k", 5)
