"""`Transport`: what the runtime calls to deliver a message.

A transport is anything callable with an `Envelope`: a plain function or object (run on
the transport's thread pool) or an `async def` one (awaited on the runtime's event
loop). Returning is delivery; raising is a failure, classified as `classify` below says.
Besides `__call__`, a transport may have, and the runtime reads once when it opens:

- `ack_timeout: float`: seconds one call may take before it is cut off and retried
  (`RuntimeConfig.ack_timeout_per_transport` overrides it, `RuntimeConfig.ack_timeout`
  is the default);
- `prepare(concurrency: int)`: called once before the first call with the most calls
  the runtime will have in flight at once (to size a connection pool);
- `aclose()`: a coroutine awaited on the event loop when the runtime closes;
- `classify(exc) -> "permanent" | "transient" | None`: the verdict on an exception the
  call raised (`None`: surelay's default, transient). surelay's own `PermanentError`,
  `TransientError` and `InvalidMessage` need no classifier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from surelay.envelope import Envelope

__all__ = ["Transport", "Verdict"]

Verdict = Literal["permanent", "transient"]
"""What a transport's `classify(exc)` may answer (or None)."""


@runtime_checkable
class Transport(Protocol):
    """A message's way out (see the module docstring for the optional members)."""

    def __call__(self, envelope: Envelope, /) -> object:
        """Deliver `envelope`: return once the receiver has it, raise if not."""
        ...
