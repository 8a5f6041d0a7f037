"""Runtime configuration: frozen dataclasses, validated on construction.

Every bad value raises `ValueError` naming the field, so a misconfigured host fails at
start-up rather than on the first failed delivery.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, get_args

from surelay.envelope import Envelope, Priority

if TYPE_CHECKING:
    from surelay.storage.records import DeadLetter

if TYPE_CHECKING:
    pass

__all__ = [
    "JITTERS",
    "BreakerPolicy",
    "Guarantee",
    "PressurePolicy",
    "RetryPolicy",
    "RuntimeConfig",
]

Jitter = Literal["none", "full", "equal", "decorrelated"]
JITTERS: tuple[Jitter, ...] = get_args(Jitter)


class Guarantee(enum.Enum):
    """`AT_LEAST_ONCE`: `send` returns once the message is durable in the outbox.
    `BEST_EFFORT`: no outbox write (a crash loses what was in flight)."""

    BEST_EFFORT = "best_effort"
    AT_LEAST_ONCE = "at_least_once"


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed delivery is tried again.

    `max_attempts` counts every attempt, the first included. The first
    `immediate_retries` retries happen at once; the delay before the n-th delayed retry
    (n >= 1) without jitter is `min(base_delay * multiplier ** (n - 1), max_delay)`.
    `jitter` is one of `none`, `full`, `equal`, `decorrelated` (as the AWS Architecture
    Blog defines them). A receiver's `Retry-After` (`TransientError.retry_after`) is
    honoured when longer than that delay, up to `max_retry_after` seconds (and never
    past `RuntimeConfig.message_ttl`).
    """

    max_attempts: int = 5
    base_delay: float = 5.0
    max_delay: float = 300.0
    multiplier: float = 2.0
    jitter: Jitter = "full"
    immediate_retries: int = 0
    max_retry_after: float = 3600.0

    def __post_init__(self) -> None:
        _count("RetryPolicy.max_attempts", self.max_attempts, 1)
        _positive("RetryPolicy.base_delay", self.base_delay, allow_zero=True)
        _positive("RetryPolicy.max_delay", self.max_delay, allow_zero=True)
        if self.max_delay < self.base_delay:
            raise ValueError(
                f"RetryPolicy.max_delay ({self.max_delay}) must be >= base_delay "
                f"({self.base_delay})"
            )
        _positive("RetryPolicy.multiplier", self.multiplier)
        if self.multiplier < 1:
            raise ValueError(f"RetryPolicy.multiplier must be >= 1, got {self.multiplier!r}")
        if self.jitter not in JITTERS:
            raise ValueError(f"RetryPolicy.jitter must be one of {JITTERS}, got {self.jitter!r}")
        _count("RetryPolicy.immediate_retries", self.immediate_retries, 0)
        _positive("RetryPolicy.max_retry_after", self.max_retry_after)


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """Circuit breaker per transport, over the last `window` calls.

    Opens when at least `min_calls` of the window's calls were made and the share of
    failures is at least `failure_ratio`, or when `min_calls` calls in a row failed (an
    outage after a long healthy run); stays open `open_for` seconds; then lets exactly
    `half_open_calls` probes through: all succeed, it closes; one fails, it opens again.
    """

    window: int = 100
    failure_ratio: float = 0.5
    min_calls: int = 20
    open_for: float = 30.0
    half_open_calls: int = 1

    def __post_init__(self) -> None:
        _count("BreakerPolicy.window", self.window, 1)
        if not (isinstance(self.failure_ratio, int | float) and 0 < self.failure_ratio <= 1):
            raise ValueError(
                f"BreakerPolicy.failure_ratio must be in (0, 1], got {self.failure_ratio!r}"
            )
        _count("BreakerPolicy.min_calls", self.min_calls, 1)
        if self.min_calls > self.window:
            raise ValueError(
                f"BreakerPolicy.min_calls ({self.min_calls}) must be <= window ({self.window})"
            )
        _positive("BreakerPolicy.open_for", self.open_for)
        _count("BreakerPolicy.half_open_calls", self.half_open_calls, 1)


@dataclass(frozen=True, slots=True)
class PressurePolicy:
    """Admission under load: ratios of `capacity` messages in flight.

    At `critical_at` priorities in `shed` are refused; at `capacity` everything but HIGH
    is; the level falls back only below `recover_at` (hysteresis). `rate_per_key`:
    `(count, per_seconds)` bounds each key with a token bucket.
    """

    elevated_at: float = 0.70
    critical_at: float = 0.90
    recover_at: float = 0.60
    capacity: int = 10_000
    shed: tuple[Priority, ...] = (Priority.LOW,)
    rate_per_key: tuple[int, float] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.recover_at < self.elevated_at < self.critical_at <= 1:
            raise ValueError(
                "PressurePolicy needs 0 < recover_at < elevated_at < critical_at <= 1, got "
                f"recover_at={self.recover_at}, elevated_at={self.elevated_at}, "
                f"critical_at={self.critical_at}"
            )
        _count("PressurePolicy.capacity", self.capacity, 1)
        shed = tuple(self.shed)
        if not all(isinstance(p, Priority) for p in shed):
            raise ValueError(f"PressurePolicy.shed must hold Priority values, got {self.shed!r}")
        object.__setattr__(self, "shed", shed)
        if self.rate_per_key is not None:
            if len(self.rate_per_key) != 2:
                raise ValueError(
                    f"PressurePolicy.rate_per_key must be (count, per_seconds), "
                    f"got {self.rate_per_key!r}"
                )
            count, per = self.rate_per_key
            _count("PressurePolicy.rate_per_key count", count, 1)
            _positive("PressurePolicy.rate_per_key per_seconds", per)


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `count` calls per `per` seconds, spaced evenly (`burst` calls may go at
    once after an idle spell; default 1). In `RuntimeConfig.rate_limits[transport]` it
    bounds that transport's calls across every process on the data directory; with `by`
    (a header name, or a function of the envelope returning a str) it bounds each group
    (a tenant, an endpoint) on its own, so one group's backlog never delays another's.
    A message waiting for its turn spends no attempt."""

    count: int
    per: float
    by: str | Callable[[Envelope], str] | None = field(default=None, kw_only=True)
    burst: int | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _count("Rate.count", self.count, 1)
        if isinstance(self.per, bool) or not isinstance(self.per, int | float):
            raise ValueError(f"Rate.per must be seconds > 0, got {self.per!r}")
        if not (self.per > 0 and math.isfinite(self.per)):
            raise ValueError(f"Rate.per must be finite seconds > 0, got {self.per!r}")
        if self.by is not None and not (
            (isinstance(self.by, str) and self.by)
            or (callable(self.by) and not isinstance(self.by, str))
        ):
            raise ValueError(
                f"Rate.by must be a header name or a function of the envelope, got {self.by!r}"
            )
        if self.burst is not None:
            _count("Rate.burst", self.burst, 1)

    @property
    def burst_or_one(self) -> int:
        return 1 if self.burst is None else self.burst


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """Everything a `Runtime` is configured with; the README and docs/architecture.md say
    what each field does.

    `clock` returns epoch seconds; tests inject one to drive retry, breaker and TTL
    logic without sleeping. `ack_timeout` (seconds) cuts off a transport call that hangs
    and retries it (`ack_timeout_per_transport`, then a transport's own `ack_timeout`
    attribute, override it). `concurrency` calls of one transport may be in flight at
    once (`concurrency_per_transport` overrides it per transport); a key never has more
    than one. `rate_limits[transport]` (a `Rate`) bounds a transport's calls, or each
    group's. `retry_per_type` and `ack_timeout_per_type` set the retry policy and the
    ack timeout of messages sent with that `type`, before the per-transport settings.
    `on_dead_letter(dead_letter)` (a function or a coroutine function) runs once for each
    dead letter once it is durable (after a crash too), on a thread of its own, cut off
    after `ack_timeout`: a hook that raises or hangs is logged and never holds up
    delivery.
    """

    guarantee: Guarantee = Guarantee.AT_LEAST_ONCE
    partitions: int = 4
    replay_partitions: int = 4
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_per_transport: Mapping[str, RetryPolicy] = field(
        default_factory=lambda: MappingProxyType({})
    )
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    pressure: PressurePolicy = field(default_factory=PressurePolicy)
    dedup_ttl: float = 86_400.0
    dead_letter_ttl: float | None = None
    message_ttl: float | None = None
    max_payload_bytes: int = 1_048_576
    max_batch: int = 1000
    map_size: int = 1 << 30
    clock: Callable[[], float] = time.time
    ack_timeout: float = 30.0
    ack_timeout_per_transport: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType({})
    )
    concurrency: int = 64
    concurrency_per_transport: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({})
    )
    retry_per_type: Mapping[str, RetryPolicy] = field(default_factory=lambda: MappingProxyType({}))
    ack_timeout_per_type: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    rate_limits: Mapping[str, Rate] = field(default_factory=lambda: MappingProxyType({}))
    on_dead_letter: Callable[[DeadLetter], Awaitable[None] | None] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.guarantee, Guarantee):
            raise ValueError(f"RuntimeConfig.guarantee must be a Guarantee, got {self.guarantee!r}")
        _count("RuntimeConfig.partitions", self.partitions, 1)
        _count("RuntimeConfig.replay_partitions", self.replay_partitions, 1)
        if self.partitions > 1 << 16 or self.replay_partitions > 1 << 16:
            raise ValueError("RuntimeConfig.partitions and replay_partitions must be <= 65536")
        for name, policy in (("retry", self.retry), ("breaker", self.breaker)):
            expected = RetryPolicy if name == "retry" else BreakerPolicy
            if not isinstance(policy, expected):
                raise ValueError(f"RuntimeConfig.{name} must be a {expected.__name__}")
        per = dict(self.retry_per_transport)
        for transport, policy in per.items():
            if not isinstance(policy, RetryPolicy):
                raise ValueError(
                    f"RuntimeConfig.retry_per_transport[{transport!r}] must be a RetryPolicy"
                )
        object.__setattr__(self, "retry_per_transport", MappingProxyType(per))
        per_type = dict(self.retry_per_type)
        for kind, policy in per_type.items():
            if not isinstance(kind, str) or not kind:
                raise ValueError(
                    f"RuntimeConfig.retry_per_type keys must be type names, got {kind!r}"
                )
            if not isinstance(policy, RetryPolicy):
                raise ValueError(f"RuntimeConfig.retry_per_type[{kind!r}] must be a RetryPolicy")
        object.__setattr__(self, "retry_per_type", MappingProxyType(per_type))
        if not isinstance(self.pressure, PressurePolicy):
            raise ValueError("RuntimeConfig.pressure must be a PressurePolicy")
        _positive("RuntimeConfig.dedup_ttl", self.dedup_ttl)
        if self.dead_letter_ttl is not None:
            _positive("RuntimeConfig.dead_letter_ttl", self.dead_letter_ttl)
        if self.message_ttl is not None:
            _positive("RuntimeConfig.message_ttl", self.message_ttl)
        _count("RuntimeConfig.max_payload_bytes", self.max_payload_bytes, 1)
        _count("RuntimeConfig.max_batch", self.max_batch, 1)
        _count("RuntimeConfig.map_size", self.map_size, 1 << 16)
        _positive("RuntimeConfig.ack_timeout", self.ack_timeout)
        acks = dict(self.ack_timeout_per_transport)
        for transport, seconds in acks.items():
            _positive(f"RuntimeConfig.ack_timeout_per_transport[{transport!r}]", seconds)
        object.__setattr__(self, "ack_timeout_per_transport", MappingProxyType(acks))
        type_acks = dict(self.ack_timeout_per_type)
        for kind, seconds in type_acks.items():
            if not isinstance(kind, str) or not kind:
                raise ValueError(
                    f"RuntimeConfig.ack_timeout_per_type keys must be type names, got {kind!r}"
                )
            _positive(f"RuntimeConfig.ack_timeout_per_type[{kind!r}]", seconds)
        object.__setattr__(self, "ack_timeout_per_type", MappingProxyType(type_acks))
        _count("RuntimeConfig.concurrency", self.concurrency, 1)
        limits = dict(self.concurrency_per_transport)
        for transport, limit in limits.items():
            _count(f"RuntimeConfig.concurrency_per_transport[{transport!r}]", limit, 1)
        object.__setattr__(self, "concurrency_per_transport", MappingProxyType(limits))
        rates = dict(self.rate_limits)
        for transport, rate in rates.items():
            if not isinstance(rate, Rate):
                raise ValueError(
                    f"RuntimeConfig.rate_limits[{transport!r}] must be a Rate, got {rate!r}"
                )
        object.__setattr__(self, "rate_limits", MappingProxyType(rates))
        if self.on_dead_letter is not None and not callable(self.on_dead_letter):
            raise ValueError(
                f"RuntimeConfig.on_dead_letter must be callable, got {self.on_dead_letter!r}"
            )
        if not callable(self.clock):
            raise ValueError(f"RuntimeConfig.clock must be callable, got {self.clock!r}")

    def concurrency_for(self, transport: str) -> int:
        """How many calls of `transport` may be in flight at once."""
        return self.concurrency_per_transport.get(transport, self.concurrency)

    def retry_for(self, transport: str, type_: str | None = None) -> RetryPolicy:
        """The retry policy of a message of type `type_` for `transport`: its type's,
        else its transport's, else the default."""
        if type_ is not None:
            policy = self.retry_per_type.get(type_)
            if policy is not None:
                return policy
        return self.retry_per_transport.get(transport, self.retry)
