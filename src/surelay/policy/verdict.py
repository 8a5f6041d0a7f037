"""The verdict on one attempt: how its result decides what happens to the message.

Two pure functions. `classify` says once, when a transport raises, whether the failure
is `transient`, `permanent` or `invalid`; the engine stores that on the attempt, so the
breaker and the verdict read the same answer. `decide` turns an attempt's result into
one of four verdicts:

- `Delivered`: the transport returned;
- `Retry(delay)`: a transient failure (a timeout included) with attempts left, or a
  crash that is not yet the message's `CRASHES_TO_DEAD_LETTER`-th;
- `Hold(wait)`: the breaker or the rate refused the call; no attempt was spent;
- `Dead(reason_class, reason)`: permanent, invalid, attempts exhausted, crashed too
  often, or expired (the next attempt would come after `message_ttl` runs out).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

from surelay.config import RetryPolicy
from surelay.errors import InvalidMessage, PermanentError, TransientError
from surelay.policy.retry import can_retry, honoured_retry_after, retry_delay
from surelay.storage.records import ReasonClass

Kind = Literal["ok", "failed", "held", "throttled", "timeout", "crash", "lost", "skipped"]
"""How a call ended (`surelay.delivery.attempt` names each)."""

Failure = Literal["transient", "permanent", "invalid"]
"""What `classify` says of a failed call."""

__all__ = [
    "CRASHES_TO_DEAD_LETTER",
    "VERDICTS",
    "Dead",
    "Delivered",
    "Failure",
    "Hold",
    "Kind",
    "Retry",
    "Verdict",
    "classify",
    "decide",
    "describe",
]

logger = logging.getLogger("surelay.delivery")

VERDICTS: tuple[Failure, ...] = get_args(Failure)

CRASHES_TO_DEAD_LETTER = 2
"""A message whose attempt crashes this many times is dead-lettered (`crash`)."""


def classify(error: BaseException, classifier: Callable[[BaseException], object] | None) -> Failure:
    """`transient`, `permanent` or `invalid` for an exception a transport raised.

    surelay's own exceptions say what they are (`InvalidMessage`: the transport rejected
    the envelope as malformed). Anything else goes to the transport's `classify(exc)`
    (`classifier`) if it has one, and is otherwise transient, since an unknown failure
    is retried.
    """
    if isinstance(error, InvalidMessage):
        return "invalid"
    if isinstance(error, PermanentError):
        return "permanent"
    if isinstance(error, TransientError):
        return "transient"
    if classifier is not None:
        try:
            verdict = classifier(error)
        except Exception:
            logger.exception("classify() of %r failed; treating as transient", classifier)
            return "transient"
        for known in VERDICTS:
            if verdict == known:
                return known
        logger.warning(
            "classify() returned %r, not one of %s; treating as transient", verdict, VERDICTS
        )
    return "transient"


def describe(error: BaseException) -> str:
    """`Type: text` (or just `Type`) for reasons and logs."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass(frozen=True, slots=True)
class Delivered:
    """The transport returned: record the delivery."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Attempt again after `delay` seconds (the next attempt counts)."""

    delay: float


@dataclass(frozen=True, slots=True)
class Hold:
    """The breaker refused the call: look again in `wait` seconds, no attempt spent."""

    wait: float


@dataclass(frozen=True, slots=True)
class Dead:
    """Dead-letter the message."""

    reason_class: ReasonClass
    reason: str


Verdict = Delivered | Retry | Hold | Dead

_DELIVERED = Delivered()


def decide(
    kind: Kind,
    *,
    failure: Failure | None = None,
    reason: str = "",
    made: int = 1,
    policy: RetryPolicy | None = None,
    crashes: int = 0,
    wait: float = 0.0,
    retry_after: float | None = None,
    rng: random.Random | None = None,
    previous_delay: float | None = None,
    ttl_left: float | None = None,
) -> Verdict:
    """The verdict on an attempt of kind `kind` (`ok`, `held`, `failed`, `timeout`,
    `crash`, `lost`), the `made`-th of its message.

    `failure` is `classify`'s answer for `failed` (a timeout is transient); `crashes`
    counts this message's crashes, this one included; `retry_after` is the receiver's own
    wait (`TransientError.retry_after`), honoured when longer than the policy's delay, up
    to `policy.max_retry_after`. `ttl_left` is what remains of the message's
    `message_ttl` (None: no TTL): a retry that would come after it is `Dead("expired")`
    now, rather than a message parked past its TTL.
    """
    if kind == "ok":
        return _DELIVERED
    if kind in ("held", "throttled"):
        return Hold(wait)
    spent: ReasonClass = "exhausted"
    if kind in ("crash", "lost"):
        if crashes >= CRASHES_TO_DEAD_LETTER:
            return Dead("crash", f"{reason}, {crashes} times")
        spent = "crash"
    elif kind == "failed" and failure != "transient":
        return Dead("invalid" if failure == "invalid" else "permanent", reason)
    policy = RetryPolicy() if policy is None else policy
    if not can_retry(policy, made):
        return Dead(spent, f"{made} attempt(s) failed; last: {reason}")
    delay = retry_delay(policy, made, rng or random.Random(), previous_delay)
    asked = honoured_retry_after(retry_after, policy)
    if asked is not None:
        delay = max(delay, asked)  # the receiver asked for this much
    if ttl_left is not None and delay > ttl_left:
        return Dead(
            "expired",
            f"the next attempt would come in {delay:.3g}s, after message_ttl runs out "
            f"(in {max(ttl_left, 0.0):.3g}s); last: {reason}",
        )
    return Retry(delay)
