"""When a message has outlived `RuntimeConfig.message_ttl`: one rule for every place that
asks (the sender before a call, an engine for calls waiting behind a wedged transport)."""

from __future__ import annotations

__all__ = ["past_ttl"]


def past_ttl(created_at: float, now: float, ttl: float | None) -> bool:
    """Whether a message accepted at `created_at` is past `ttl` seconds at `now` (never,
    without a ttl)."""
    return ttl is not None and now - created_at > ttl
