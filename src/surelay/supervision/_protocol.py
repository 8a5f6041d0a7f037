"""Protocol of the supervisor actor: admin requests from `SupervisorRef` (asks answered
with a `Reply`) and the events its children and timers tell it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from surelay.supervision._actor import Exit
    from surelay.supervision._spec import ChildSpec


@dataclass(frozen=True, slots=True)
class Reply:
    """An admin answer. Errors travel as values so they never crash the supervisor."""

    value: Any = None
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class GetChild:
    id: str


@dataclass(frozen=True, slots=True)
class StartChild:
    spec: ChildSpec


@dataclass(frozen=True, slots=True)
class TerminateChild:
    id: str


@dataclass(frozen=True, slots=True)
class RestartChild:
    id: str


@dataclass(frozen=True, slots=True)
class DeleteChild:
    id: str


@dataclass(frozen=True, slots=True)
class WhichChildren:
    pass


@dataclass(frozen=True, slots=True)
class CountChildren:
    pass


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class ChildExited:
    """Told by a child's thread as its incarnation ends."""

    id: str
    exit: Exit


@dataclass(frozen=True, slots=True)
class RestartDue:
    """Told by a backoff timer (or by a failed restart) when a restart should run."""

    token: int
