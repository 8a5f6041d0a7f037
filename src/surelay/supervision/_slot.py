"""A child's identity in its supervisor: what outlives every incarnation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from surelay.supervision._mailbox import Mailbox
from surelay.supervision._ref import Ref, SupervisorRef

if TYPE_CHECKING:
    from surelay.supervision._actor import Actor
    from surelay.supervision._spec import ChildSpec, Status

__all__ = ["Slot"]


class Slot:
    """Mailbox, stable ref and restart bookkeeping of one child.

    Mutated only by the owning supervisor's thread; other threads read `mailbox.closed`
    (through `Ref.is_alive`) and `actor` (for `Ref.proxy`).
    """

    __slots__ = (
        "actor",
        "backoff_n",
        "children",
        "generation",
        "id",
        "mailbox",
        "ref",
        "restarts",
        "running",
        "spec",
        "started_at",
        "status",
    )

    def __init__(self, id: str, *, is_supervisor: bool, spec: ChildSpec | None = None) -> None:
        self.id = id
        self.spec = spec
        self.mailbox = Mailbox(repr(id))
        self.ref: Ref = SupervisorRef(self) if is_supervisor else Ref(self)
        self.status: Status = "stopped"
        self.restarts = 0
        self.generation = 0
        self.running: int | None = None  # generation of the running incarnation
        self.actor: Actor | None = None  # the latest incarnation (for proxies)
        self.started_at = 0.0
        self.backoff_n = 0
        # A supervisor child's own children: kept across its restarts so their refs hold.
        self.children: dict[str, Slot] = {}

    def close(self) -> None:
        """Stop for good: this child's (and its subtree's) refs raise `ActorDeadError`."""
        self.status = "stopped"
        self.running = None
        self.mailbox.close()
        for child in self.children.values():
            child.close()
