"""What a supervisor is told: child specs, supervisor flags, and what it reports back."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from surelay.supervision._actor import Actor
    from surelay.supervision._ref import Ref

__all__ = ["ChildInfo", "ChildSpec", "SupervisorFlags"]

RESTART_TYPES = ("permanent", "transient", "temporary")
STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
AUTO_SHUTDOWNS = ("never", "any_significant", "all_significant")

RestartType = Literal["permanent", "transient", "temporary"]
Status = Literal["running", "restarting", "stopped"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start one child and when to restart it.

    `factory` is called with `args` and `kwargs` in the supervisor's thread and must
    return an unstarted `surelay.supervision.Actor`. `restart`: `"permanent"` is always
    restarted, `"transient"` only after a crash, `"temporary"` never (its spec is removed
    when it exits). `shutdown`: seconds to wait for the child to stop before abandoning it
    (`None` waits forever). Python threads cannot be killed: an abandoned child's thread
    runs on until its handler returns, but takes no further messages, and the caller of
    the message it is stuck on gets `ActorDeadError`. `significant` children may stop
    their supervisor when `auto_shutdown` says so; they must be transient or temporary.
    """

    id: str
    factory: Callable[..., Actor] | type[Actor]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    restart: str = "permanent"
    shutdown: float | None = 5.0
    significant: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"ChildSpec.id must be a non-empty str, got {self.id!r}")
        if not callable(self.factory):
            raise ValueError(f"ChildSpec.factory must be callable, got {self.factory!r}")
        if self.restart not in RESTART_TYPES:
            raise ValueError(
                f"ChildSpec.restart must be one of {RESTART_TYPES}, got {self.restart!r}"
            )
        if self.shutdown is not None and not (
            isinstance(self.shutdown, int | float) and self.shutdown >= 0
        ):
            raise ValueError(f"ChildSpec.shutdown must be >= 0 or None, got {self.shutdown!r}")
        if self.significant and self.restart == "permanent":
            raise ValueError(
                f"ChildSpec.significant=True needs restart 'transient' or 'temporary', "
                f"child {self.id!r} is 'permanent'"
            )
        if not isinstance(self.args, tuple):
            raise ValueError(f"ChildSpec.args must be a tuple, got {type(self.args).__name__}")
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """One row of `SupervisorRef.which_children()`."""

    id: str
    status: Status
    restarts: int
    ref: Ref


@dataclass(frozen=True, slots=True)
class SupervisorFlags:
    """A supervisor's restart rules, validated once (see `Supervisor.start`)."""

    strategy: str = "one_for_one"
    intensity: int = 3
    period: float = 5.0
    backoff: tuple[float, float] | None = None
    auto_shutdown: str = "never"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if isinstance(self.intensity, bool) or not isinstance(self.intensity, int):
            raise ValueError(f"intensity must be an int >= 0, got {self.intensity!r}")
        if self.intensity < 0:
            raise ValueError(f"intensity must be >= 0, got {self.intensity}")
        if not isinstance(self.period, int | float) or not self.period > 0:
            raise ValueError(f"period must be > 0, got {self.period!r}")
        if self.backoff is not None:
            if len(self.backoff) != 2:
                raise ValueError(f"backoff must be (min_s, max_s), got {self.backoff!r}")
            low, high = self.backoff
            if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
                raise ValueError(
                    f"backoff must be (min_s, max_s) with 0 < min_s <= max_s, got {self.backoff!r}"
                )
        if self.auto_shutdown not in AUTO_SHUTDOWNS:
            raise ValueError(
                f"auto_shutdown must be one of {AUTO_SHUTDOWNS}, got {self.auto_shutdown!r}"
            )

    def check_child(self, spec: ChildSpec) -> None:
        """Refuse a child these flags cannot supervise."""
        if spec.significant and self.auto_shutdown == "never":
            raise ValueError(
                f"ChildSpec.significant=True for child {spec.id!r} needs auto_shutdown "
                f"'any_significant' or 'all_significant', the supervisor has 'never'"
            )


def check_specs(flags: SupervisorFlags, children: tuple[ChildSpec, ...]) -> None:
    """Validate a supervisor's initial children: types, duplicates, significance."""
    seen: set[str] = set()
    for spec in children:
        if not isinstance(spec, ChildSpec):
            raise ValueError(f"children must be ChildSpec instances, got {spec!r}")
        if spec.id in seen:
            raise ValueError(f"duplicate child id {spec.id!r} in children")
        seen.add(spec.id)
        flags.check_child(spec)
