"""`Consumers`: the runtime's inbound side, what `rt.consume` adds.

Each consumer's handler becomes a transport of the runtime named after the consumer
(its own engine, breaker, retries, dead letters and replay), and a `SourceConsumer`
child of the "sources" supervisor pulls its source into the outbox (`surelay.ingress.intake`).
Messages of that transport left in this runtime's outbox by an earlier run are
dispatched as soon as it is added (until then there was no handler for them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from surelay.actors.consumer import ConsumerState, Pause, SourceConsumer
from surelay.envelope import Envelope, Priority
from surelay.ingress.intake import Intake
from surelay.policy.forwarding import forward_name
from surelay.supervision import ChildSpec, SupervisorRef

if TYPE_CHECKING:
    from surelay.delivery import Engines
    from surelay.delivery.breakers import Breakers
    from surelay.ingress.endpoint import IngressEndpoint
    from surelay.recovery import Recovery

__all__ = ["Consumers"]


class Consumers:
    def __init__(  # noqa: PLR0917  # what a consumer is made of
        self,
        ingress: IngressEndpoint,
        engines: Engines,
        breakers: Breakers,
        transports: MutableMapping[str, Callable[..., Any]],
        recovery: Recovery,
        sources: SupervisorRef,
        forwards: MutableMapping[str, str],
    ) -> None:
        self._ingress = ingress
        self._engines = engines
        self._breakers = breakers
        self._transports = transports
        self._recovery = recovery
        self._sources = sources
        self._forwards = forwards
        """A consumer's dead letters forwarded onwards (its source's dead-letter
        exchange): the consumer's name -> the transport that carries them."""
        self._lock = threading.Lock()
        self._states: dict[str, ConsumerState] = {}
        self._sources_used: list[Any] = []

    def add(
        self,
        source: Any,
        handler: Callable[..., Any],
        *,
        name: str,
        key: Callable[[Envelope], str | None] | None,
        priority: Priority,
    ) -> None:
        _check(source, handler, name, key, priority)
        make_forwarder = getattr(source, "dead_letter_forwarder", None)
        forwarder = make_forwarder() if callable(make_forwarder) else None
        forward = forward_name(name) if forwarder is not None else None
        with self._lock:
            for taken in (name, forward):
                if taken is not None and taken in self._transports:
                    raise ValueError(
                        f"{taken!r} is taken (a transport or a consumer of this runtime has "
                        "it); give the consumer a name of its own"
                    )
            if any(source is used for used in self._sources_used):
                raise ValueError("this source is consumed already; make one per consumer")
            self._engines.add(name, handler)  # may refuse the handler: nothing added then
            self._breakers.add(name)
            if forward is not None and forwarder is not None:
                self._add_forward(name, forward, forwarder)
            description = str(getattr(source, "description", type(source).__name__))
            state = self._states[name] = ConsumerState(name, description)
            self._sources_used.append(source)
            # this slot's messages for it go out first, then it becomes a transport (so
            # adoption, which waits for this, moves and sends others' only afterwards)
            self._recovery.recover(
                transport=name, then=lambda: self._transports.__setitem__(name, handler)
            )
        intake = Intake(self._ingress, name, key, priority, forward=forward)
        self._sources.start_child(
            ChildSpec(f"source-{name}", SourceConsumer, args=(source, intake, state))
        )

    def _add_forward(self, name: str, forward: str, forwarder: Callable[..., Any]) -> None:
        """Make `forward` the transport that carries consumer `name`'s dead letters
        onwards (its own messages left by an earlier run go out first)."""
        self._engines.add(forward, forwarder)
        self._breakers.add(forward)
        self._recovery.recover(
            transport=forward, then=lambda: self._transports.__setitem__(forward, forwarder)
        )
        self._forwards[name] = forward

    def pause(self, timeout: float) -> None:
        """Stop every consumer pulling (close() does so first), all at once, within
        about `timeout` seconds together."""
        with self._lock:
            names = list(self._states)
        deadline = time.monotonic() + timeout
        asked = []
        for name in names:
            self._states[name].paused = True
            try:
                ref = self._sources.child(f"source-{name}")
                asked.append(ref.ask(Pause(timeout), block=False))
            except Exception:  # stopped already: nothing to pause
                continue
        for answer in asked:
            try:
                answer.get(timeout=max(0.0, deadline - time.monotonic()) + 0.5)
            except Exception:  # slow: the tree's stop ends it
                continue

    def health(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: state.health() for name, state in self._states.items()}


def _check(
    source: Any,
    handler: Callable[..., Any],
    name: str,
    key: Callable[[Envelope], str | None] | None,
    priority: Priority,
) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    for method in ("open", "fetch", "close"):
        if not callable(getattr(source, method, None)):
            raise TypeError(
                f"source must be a surelay source (such as JetStreamSource), got "
                f"{type(source).__name__} without {method}()"
            )
    if not callable(handler):
        raise TypeError("handler must be callable (Envelope) -> None, or a coroutine function")
    if key is not None and not callable(key):
        raise TypeError("key must be a callable (Envelope) -> str | None, or None")
    if not isinstance(priority, Priority):
        raise TypeError(f"priority must be a surelay.Priority, got {priority!r}")
