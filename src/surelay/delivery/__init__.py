"""The delivery engine: how calls to transports run (see `engine.py`).

`Engines` holds one engine per transport, built from its `TransportSpec` (`spec.py`,
resolved once from the `Transport` protocol): a `ThreadEngine` for a plain callable, a
`LoopEngine` on the runtime's one `EventLoop` for a coroutine transport. A transport
with a `prepare(concurrency)` method is told how many calls it will have in flight at
most (to size a connection pool); a coroutine transport's `aclose()` is awaited on the
loop when the runtime closes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from surelay.config import RuntimeConfig
from surelay.delivery.breakers import Breakers
from surelay.delivery.engine import Engine
from surelay.delivery.event_loop import EventLoop, LoopEngine, is_coroutine_transport
from surelay.delivery.limiter import Limiter
from surelay.delivery.spec import TransportSpec, resolve
from surelay.delivery.threads import ThreadEngine
from surelay.telemetry import Telemetry

__all__ = ["Engine", "Engines", "TransportSpec", "is_coroutine_transport", "resolve"]


class Engines(Mapping[str, Engine]):
    """The engine of each transport, by transport name."""

    def __init__(
        self,
        transports: Mapping[str, Callable[..., Any]],
        config: RuntimeConfig,
        breakers: Breakers,
        telemetry: Telemetry,
        limiter: Limiter | None = None,
    ) -> None:
        self.halted = False
        self.limiter = limiter if limiter is not None else Limiter({}, None, config.clock)
        """The rates of the transports' calls, and the pauses their downstreams ask."""
        """Set by `halt` (a closing runtime): no call starts any more."""
        self.loop: EventLoop | None = None
        self._engines: dict[str, Engine] = {}
        self._config = config
        self._breakers = breakers
        self._telemetry = telemetry
        specs = [resolve(name, t, config) for name, t in transports.items()]
        for spec in specs:  # all first: a refusal starts nothing
            if spec.prepare is not None:
                spec.prepare(spec.concurrency)
        for spec in specs:
            self._engines[spec.name] = self._engine(spec)
        if self.loop is not None:
            self.loop.start()

    def add(self, name: str, transport: Callable[..., Any]) -> Engine:
        """An engine for a transport added while the runtime runs (`rt.consume`)."""
        if name in self._engines:
            raise ValueError(f"transport {name!r} has an engine already")
        spec = resolve(name, transport, self._config)
        if spec.prepare is not None:
            spec.prepare(spec.concurrency)
        engine = self._engines[name] = self._engine(spec)
        if self.loop is not None:
            self.loop.start()  # a no-op once started
        return engine

    def _engine(self, spec: TransportSpec) -> Engine:
        config = self._config
        common: dict[str, Any] = {
            "breakers": self._breakers,
            "telemetry": self._telemetry,
            "clock": config.clock,
            "message_ttl": config.message_ttl,
            "limiter": self.limiter,
        }
        if not spec.coroutine:
            return ThreadEngine(spec, **common)
        if self.loop is None:
            self.loop = EventLoop()
        if spec.aclose is not None:
            self.loop.on_close(spec.aclose)
        return LoopEngine(spec, loop=self.loop, **common)

    def __getitem__(self, name: str) -> Engine:
        return self._engines[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._engines)

    def __len__(self) -> int:
        return len(self._engines)

    def in_flight(self) -> dict[str, int]:
        """Calls running now, per transport."""
        return {name: engine.in_flight for name, engine in list(self._engines.items())}

    def abandoned(self) -> int:
        """Calls given up at their ack timeout that still run, over every transport."""
        return sum(engine.abandoned for engine in list(self._engines.values()))

    def halt(self) -> None:
        """Start no more calls anywhere; calls running now end and are reported."""
        self.halted = True
        for engine in list(self._engines.values()):
            engine.halt()

    def stop(self, timeout: float) -> None:
        """`halt`, then stop the event loop (cancelling its calls) and let go of the
        pools."""
        for engine in list(self._engines.values()):
            engine.stop(timeout)
        if self.loop is not None:
            self.loop.stop(timeout)
        self.limiter.close()

    def health(self) -> dict[str, dict[str, Any]]:
        return {name: engine.health() for name, engine in list(self._engines.items())}
