"""`refusing`: when a runtime takes a pending replay request that names transports it
lacks, and which records it then refuses. Every request ends; a runtime lacking fewer of
them goes first."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from surelay.actors.replay import OFFER_GRACE, refusing

names = st.frozensets(st.sampled_from(["sms", "mail", "push", "orders"]))
waits = st.floats(min_value=0, max_value=10 * OFFER_GRACE, allow_nan=False)


@given(names, names, waits)
def test_the_answer_is_what_nobody_offers_and_comes_in_time(
    lacking: frozenset[str], offered: frozenset[str], waited: float
) -> None:
    answer = refusing(lacking, offered, waited)
    if not lacking:
        assert answer == frozenset()  # it has every transport: it takes it at once
    elif lacking <= offered:
        assert answer is None  # the runtimes that offer them take it
    elif waited < OFFER_GRACE:
        assert answer is None  # a consumer registered after open may still come
    elif waited >= 2 * OFFER_GRACE:
        assert answer == lacking - offered  # every request ends
    else:
        assert answer in (None, lacking - offered)


def test_of_two_runtimes_the_one_lacking_fewer_takes_a_split_request_first() -> None:
    # the request names sms and mail records; one runtime offers sms, none offers mail
    has_sms = refusing(frozenset({"mail"}), frozenset(), OFFER_GRACE)
    has_neither = refusing(frozenset({"sms", "mail"}), frozenset({"sms"}), OFFER_GRACE)
    assert (has_sms, has_neither) == (frozenset({"mail"}), None)
    assert refusing(frozenset({"sms", "mail"}), frozenset({"sms"}), 2 * OFFER_GRACE) == {"mail"}
