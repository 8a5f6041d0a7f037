"""`refusing`: which runtime carries out a pending replay request that names transports
not every runtime offers, and which records it then refuses. Every request ends."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from surelay.actors.replay import OFFER_GRACE, refusing

names = st.frozensets(st.sampled_from(["sms", "mail", "push", "orders"]))
waits = st.floats(min_value=0, max_value=10 * OFFER_GRACE, allow_nan=False)


@given(names, names, st.lists(names, max_size=3), waits)
def test_the_answer_comes_in_time_and_refuses_only_what_this_runtime_lacks(
    needed: frozenset[str], mine: frozenset[str], others: list[frozenset[str]], waited: float
) -> None:
    lacking = needed - mine
    answer = refusing(needed, lacking, others, waited)
    if not lacking:
        assert answer == frozenset()  # it has every transport: it takes it at once
    elif any(needed <= offer for offer in others):
        assert answer is None  # the runtime that offers them all takes it
    elif waited < OFFER_GRACE:
        assert answer is None  # a consumer registered after open may still come
    elif waited >= 2 * OFFER_GRACE:
        assert answer == lacking  # every request ends
    else:
        assert answer in (None, lacking)


def test_a_request_split_between_runtimes_is_taken_by_the_one_lacking_fewest() -> None:
    # the request names sms, mail and push records; A offers sms and mail, B only push
    needed = frozenset({"sms", "mail", "push"})
    a = refusing(needed, frozenset({"push"}), [frozenset({"push"})], OFFER_GRACE)
    b = refusing(needed, frozenset({"sms", "mail"}), [frozenset({"sms", "mail"})], OFFER_GRACE)
    assert (a, b) == (frozenset({"push"}), None)  # A first; its push records are refused
    later = refusing(needed, frozenset({"sms", "mail"}), [frozenset({"sms", "mail"})], 60)
    assert later == {"sms", "mail"}  # B takes it if A is gone: the request still ends


def test_each_runtime_offering_half_still_ends_it() -> None:
    needed = frozenset({"sms", "mail"})
    a = refusing(needed, frozenset({"mail"}), [frozenset({"mail"})], OFFER_GRACE)
    b = refusing(needed, frozenset({"sms"}), [frozenset({"sms"})], OFFER_GRACE)
    assert (a, b) == (frozenset({"mail"}), frozenset({"sms"}))  # one claim wins
