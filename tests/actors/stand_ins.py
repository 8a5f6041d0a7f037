"""Stand-ins for the actors of a runtime's tree, so that one actor can be started
from its endpoint record alone and what it tells the others looked at."""

from __future__ import annotations

import threading
from typing import Any

from surelay.supervision import Actor, ChildSpec, Supervisor, SupervisorRef

__all__ = ["Inbox", "tree"]


class Inbox(Actor):
    """A stand-in sender: keeps what it is told."""

    def __init__(self, got: list[Any], event: threading.Event) -> None:
        super().__init__()
        self._got = got
        self._event = event

    def on_receive(self, message: Any) -> None:
        self._got.append(message)
        self._event.set()


def tree(*given: ChildSpec) -> SupervisorRef:
    """A tree with the names `Peers` looks up: `given` children, stand-ins for the rest."""
    named = {spec.id: spec for spec in given}

    def stand_in(name: str) -> ChildSpec:
        return named.pop(name, None) or ChildSpec(name, Inbox, args=([], threading.Event()))

    specs = [
        stand_in("governor"),
        stand_in("retry"),
        stand_in("timer"),
        stand_in("hooks"),
        stand_in("dead_letters"),
        Supervisor.spec("senders", [stand_in("sender-0")]),
        Supervisor.spec("replay", [stand_in("replay-0"), stand_in("coordinator")]),
    ]
    assert not named, f"not a name Peers looks up: {sorted(named)}"
    return Supervisor.start(specs, name="t")
