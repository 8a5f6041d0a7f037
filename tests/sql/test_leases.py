"""`share`: every relay computes the same split of a table's partitions from the same
list of live relays."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from surelay.sql.leases import share

relays = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=12, unique=True)
partitions = st.integers(min_value=1, max_value=4096)


@given(relays, partitions)
def test_every_partition_has_exactly_one_live_holder_and_shares_differ_by_one_at_most(
    live: list[str], count: int
) -> None:
    shares = [share(live, count, me) for me in live]
    held = [p for mine in shares for p in mine]
    assert sorted(held) == list(range(count))  # each partition exactly once
    sizes = [len(mine) for mine in shares]
    assert max(sizes) - min(sizes) <= 1
    for mine in shares:  # contiguous blocks
        assert not mine or max(mine) - min(mine) + 1 == len(mine)


@given(relays, partitions, st.randoms(use_true_random=False))
def test_every_relay_agrees_whatever_order_or_repeats_it_sees(
    live: list[str], count: int, rng: random.Random
) -> None:
    shuffled = [*live, *live[:2]]
    rng.shuffle(shuffled)
    for me in live:
        assert share(shuffled, count, me) == share(live, count, me)


@given(relays, partitions, st.text(min_size=1, max_size=12))
def test_a_relay_not_yet_seen_alive_holds_nothing(
    live: list[str], count: int, stranger: str
) -> None:
    if stranger not in live:
        assert share(live, count, stranger) == frozenset()
