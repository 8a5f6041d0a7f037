"""Classification of transport errors, and the verdict's use of `Retry-After` and TTL."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surelay import InvalidMessage, PermanentError, RetryPolicy, TransientError
from surelay.policy.verdict import Dead, Retry, classify, decide


class WithClassifier:
    def __init__(self, verdict: object) -> None:
        self.verdict = verdict

    def __call__(self) -> None: ...

    def classify(self, error: BaseException) -> object:
        if isinstance(self.verdict, Exception):
            raise self.verdict
        return self.verdict


@pytest.mark.parametrize(
    ("error", "transport", "verdict"),
    [
        (PermanentError("400"), None, "permanent"),
        (TransientError("503"), WithClassifier("permanent"), "transient"),  # explicit wins
        (InvalidMessage("not JSON"), None, "invalid"),
        (ValueError("x"), None, "transient"),  # unknown failures are retried
        (ValueError("x"), WithClassifier("permanent"), "permanent"),
        (ValueError("x"), WithClassifier("invalid"), "invalid"),
        (ValueError("x"), WithClassifier("maybe"), "transient"),  # a bad answer is logged
        (ValueError("x"), WithClassifier(RuntimeError("bug")), "transient"),
    ],
)
def test_classify(error: BaseException, transport: WithClassifier | None, verdict: str) -> None:
    assert classify(error, None if transport is None else transport.classify) == verdict


# -- decide: the receiver's Retry-After and the message's TTL ---------------------------

NO_JITTER = RetryPolicy(base_delay=10, max_delay=10, jitter="none", max_retry_after=3600)


@pytest.mark.parametrize(
    ("retry_after", "delay"),
    [
        (None, 10.0),  # the policy's delay
        (5.0, 10.0),  # shorter than the policy's: the policy wins
        (120.0, 120.0),
        (10**6, 3600.0),
        (10**14, 3600.0),
        (10**400, 3600.0),
        (1e300, 3600.0),
        (math.inf, 3600.0),
        (-5.0, 10.0),
        (math.nan, 10.0),
    ],
)
def test_retry_after_is_honoured_up_to_max_retry_after(
    retry_after: float | None, delay: float
) -> None:
    verdict = decide("failed", failure="transient", policy=NO_JITTER, retry_after=retry_after)
    assert verdict == Retry(delay)


@given(
    retry_after=st.one_of(st.none(), st.floats(), st.integers(-(10**30), 10**30)),
    ttl_left=st.one_of(st.none(), st.floats(-100, 10**6)),
    made=st.integers(1, 10),
    seed=st.integers(0, 2**32),
)
def test_a_retry_never_waits_past_max_retry_after_or_the_ttl(
    retry_after: float | None, ttl_left: float | None, made: int, seed: int
) -> None:
    policy = RetryPolicy(max_attempts=20, max_retry_after=600)
    verdict = decide(
        "failed",
        failure="transient",
        made=made,
        policy=policy,
        retry_after=retry_after,
        ttl_left=ttl_left,
        rng=random.Random(seed),
    )
    if isinstance(verdict, Retry):
        assert 0 <= verdict.delay <= max(policy.max_delay, policy.max_retry_after)
        assert ttl_left is None or verdict.delay <= ttl_left
    else:
        assert verdict == Dead("expired", verdict.reason)
        assert ttl_left is not None
        assert "after message_ttl runs out" in verdict.reason


def test_a_wait_past_the_ttl_expires_the_message_now() -> None:
    verdict = decide(
        "failed",
        failure="transient",
        reason="TransientError: HTTP 503",
        policy=NO_JITTER,
        retry_after=3000.0,
        ttl_left=60.0,
    )
    assert verdict == Dead(
        "expired",
        "the next attempt would come in 3e+03s, after message_ttl runs out (in 60s); "
        "last: TransientError: HTTP 503",
    )
    assert decide(
        "failed", failure="transient", policy=NO_JITTER, retry_after=30.0, ttl_left=60.0
    ) == Retry(30.0)
