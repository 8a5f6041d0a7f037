"""`Peers`: how the runtime's parts find the actors of its supervision tree, by name
through the root supervisor once the tree runs, instead of refs patched in one by one.

A `Ref` outlives every incarnation of its actor (see `surelay.supervision`), so each
name is looked up once, all of them at `attach` (from the thread that started the
tree): a lookup is an ask of a supervisor, and an actor asking its own supervisor while
that supervisor waits for it (a restart, a stop) would wait for ever. The names are the
tree's (`surelay.wiring`).
"""

from __future__ import annotations

import functools

from surelay.supervision import Ref, SupervisorRef

__all__ = ["Peers"]


class Peers:
    """The actors of one runtime's tree, found by name (see the module docstring)."""

    def __init__(self, partitions: int, replay_partitions: int) -> None:
        self._partitions = partitions
        self._replay_partitions = replay_partitions
        self._root: SupervisorRef | None = None

    def attach(self, root: SupervisorRef) -> None:
        """The tree runs: look every actor up now, through `root` (`wiring.start`)."""
        self._root = root
        for name in (
            "governor",
            "retry",
            "timer",
            "hooks",
            "dead_letters",
            "senders",
            "replay_coordinator",
        ):
            getattr(self, name)
        self.replay_workers  # noqa: B018  # looked up now, not from an actor later

    @property
    def attached(self) -> bool:
        """Whether the tree runs yet (a part that may act before it checks)."""
        return self._root is not None

    def _child(self, *path: str) -> Ref:
        if self._root is None:
            raise LookupError(f"no actor {'/'.join(path)!r} yet: the tree is not running")
        ref: Ref = self._root
        for name in path:
            assert isinstance(ref, SupervisorRef), path
            ref = ref.child(name)
        return ref

    @functools.cached_property
    def governor(self) -> Ref:
        return self._child("governor")

    @functools.cached_property
    def retry(self) -> Ref:
        return self._child("retry")

    @functools.cached_property
    def timer(self) -> Ref:
        return self._child("timer")

    @functools.cached_property
    def hooks(self) -> Ref:
        return self._child("hooks")

    @functools.cached_property
    def dead_letters(self) -> Ref:
        return self._child("dead_letters")

    @functools.cached_property
    def senders(self) -> tuple[Ref, ...]:
        """The sender of each partition, by partition."""
        return tuple(self._child("senders", f"sender-{i}") for i in range(self._partitions))

    @functools.cached_property
    def replay_coordinator(self) -> Ref:
        return self._child("replay", "coordinator")

    @functools.cached_property
    def replay_workers(self) -> tuple[Ref, ...]:
        """The replay worker of each replay partition, by partition."""
        return tuple(self._child("replay", f"replay-{i}") for i in range(self._replay_partitions))
