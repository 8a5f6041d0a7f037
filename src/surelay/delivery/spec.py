"""`TransportSpec`: a transport as the engine uses it, resolved once when it is added.

The `Transport` protocol's optional members (`ack_timeout`, `prepare`, `aclose`,
`classify`) are looked up and checked here, once, so that a transport whose member is
of the wrong kind is refused when the runtime opens, naming the member, instead of
being silently ignored or failing at its first call.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from surelay.config import RuntimeConfig

__all__ = ["Classifier", "TransportSpec", "is_coroutine_transport", "resolve"]

Classifier = Callable[[BaseException], object]


def is_coroutine_transport(transport: object) -> bool:
    """An `async def` function, or an object whose `__call__` is one."""
    if inspect.iscoroutinefunction(transport):
        return True
    call = getattr(transport, "__call__", None)  # noqa: B004  # the method, not callability
    return call is not None and inspect.iscoroutinefunction(call)


@dataclass(frozen=True, slots=True)
class TransportSpec:
    """One transport, resolved: what to call and how."""

    name: str
    call: Callable[..., Any]
    coroutine: bool
    """An `async def` call, awaited on the runtime's event loop."""
    concurrency: int
    """Most calls in flight at once."""
    ack_timeout: float
    """Seconds a call may take before it is cut off and retried."""
    ack_timeout_per_type: Mapping[str, float] = field(default_factory=dict)
    """`ack_timeout` of the messages of these types (`RuntimeConfig.ack_timeout_per_type`)."""
    classify: Classifier | None = None
    prepare: Callable[[int], object] | None = None
    aclose: Callable[[], Awaitable[object]] | None = None


def _member(name: str, transport: object, member: str) -> Callable[..., Any] | None:
    """The optional method `member` of `transport`, or None; TypeError if it is there
    but not callable."""
    found = getattr(transport, member, None)
    if found is None:
        return None
    if not callable(found):
        raise TypeError(
            f"transport {name!r}: {member} must be a method, got {type(found).__name__}"
        )
    return found  # type: ignore[no-any-return]


def resolve(name: str, transport: object, config: RuntimeConfig) -> TransportSpec:
    """The spec of `transport` (added as `name`); TypeError or ValueError naming what is
    wrong with it."""
    if not callable(transport):
        raise TypeError(
            f"transport {name!r} must be callable with an envelope, got {type(transport).__name__}"
        )
    ack_timeout = config.ack_timeout_per_transport.get(name)
    if ack_timeout is None:
        own = getattr(transport, "ack_timeout", None)
        if own is None:
            ack_timeout = config.ack_timeout
        elif isinstance(own, bool) or not isinstance(own, int | float):
            raise TypeError(
                f"transport {name!r}: ack_timeout must be a number of seconds, got {own!r}"
            )
        elif not own > 0:
            raise ValueError(f"transport {name!r}: ack_timeout must be positive, got {own!r}")
        else:
            ack_timeout = float(own)
    coroutine = is_coroutine_transport(transport)
    aclose = _member(name, transport, "aclose") if coroutine else None  # (awaited only)
    return TransportSpec(
        name=name,
        call=transport,
        coroutine=coroutine,
        concurrency=config.concurrency_for(name),
        ack_timeout=ack_timeout,
        ack_timeout_per_type=config.ack_timeout_per_type,
        classify=_member(name, transport, "classify"),
        prepare=_member(name, transport, "prepare"),
        aclose=aclose,
    )
