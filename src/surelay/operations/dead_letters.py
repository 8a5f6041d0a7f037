"""Dead-letter operations: the store-level functions (`record_replay`, `archive`,
`purge`, `cancel_replay`) that the API, `surelay dlq` and the console all call, and
`DeadLetters`, what `rt.dead_letters` is: the same on a runtime's own store, with its
replay actors carrying replays out at once.

Reads are snapshots; every change is one durable write. Listing is oldest first (ids are
time-ordered), paged with `after`, the last id of the previous page. A replay is stored
as a request first (so it survives a crash and `surelay dlq` can watch it), then carried
out by a runtime's replay actors (see `surelay.actors.replay`): the runtime that recorded
it, or (`pending`, from the CLI or the console) whichever runtime on the directory
claims it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from surelay.errors import RuntimeClosed
from surelay.replay_jobs import ReplayState, StartReplay
from surelay.replay_report import ReplayReport
from surelay.storage.dead_letters import MAX_LIMIT
from surelay.storage.environment import Txn
from surelay.storage.keys import new_id
from surelay.storage.records import (
    DEAD_LETTER_STATUSES,
    REASON_CLASSES,
    DeadLetter,
    DeadLetterStatus,
    ReplayRequest,
)
from surelay.storage.replay_requests import request_filters
from surelay.storage.store import Store

if TYPE_CHECKING:
    from surelay.peers import Peers

__all__ = [
    "TAKES",
    "DeadLetters",
    "archive",
    "cancel_replay",
    "purge",
    "purged_by",
    "record_replay",
]


def record_replay(
    store: Store,
    *,
    ids: tuple[str, ...] | None,
    filters: Mapping[str, str],
    rate: float | None,
    now: float,
    owner: int | None = None,
) -> ReplayRequest:
    """Store a replay request of the records `ids`, or of the `dead` records matching
    `filters` (see `request_filters`), at most `rate` a second. Without `owner` it is
    `pending`, for a runtime on the directory to claim; with it, `running` in the
    runtime of slot `owner`, which others leave alone. Returns it as stored."""
    request = ReplayRequest(
        id=new_id(now),
        created_at=now,
        ids=ids,
        filters={} if ids is not None else dict(filters),
        rate=rate,
        updated_at=now,
    )
    if owner is not None:
        request = replace(request, status="running", owner=owner)
    return store.write(lambda txn: store.replay_requests.put(txn, request)).result()


def archive(
    store: Store, ids: Iterable[str] | None = None, filters: Mapping[str, str] | None = None
) -> int:
    """Archive the `dead` and `replayed` records `ids`, or those matching `filters` (a
    `matching` selection of the dead-letter table), in one write; how many changed.
    Unknown ids and records in other states are left alone."""
    table = store.dead_letters
    wanted = None if ids is None else ([ids] if isinstance(ids, str) else list(ids))

    def op(txn: Txn) -> int:
        chosen = (
            wanted if wanted is not None else [r.id for r in table.matching(txn, **(filters or {}))]
        )
        return table.archive(txn, chosen)

    return store.write(op).result()


TAKES: Mapping[str, tuple[DeadLetterStatus, ...]] = MappingProxyType(
    {"replay": ("dead",), "archive": ("dead", "replayed")}
)
"""The statuses of the records each action takes (the others are left alone)."""


def purged_by(
    store: Store, *, status: str, older_than: float | None, now: float
) -> list[DeadLetter]:
    """The records `purge` with these options would delete now, oldest first (what a
    dry run or a confirmation shows)."""
    cutoff = now - (older_than or 0.0)
    with store.read() as txn:
        return [r for r in store.dead_letters.matching(txn, status=status) if r.failed_at < cutoff]


def purge(store: Store, *, status: str, older_than: float | None, now: float) -> int:
    """Delete the records in `status` that failed more than `older_than` seconds before
    `now` (any age if None), in one write; how many. `replaying` records cannot be
    purged (`ValueError`)."""
    if older_than is not None and not older_than >= 0:
        raise ValueError(f"older_than must be seconds >= 0 or None, got {older_than!r}")
    table = store.dead_letters
    return store.write(
        lambda txn: table.purge(txn, status=status, older_than=older_than, now=now)
    ).result()


def cancel_replay(store: Store, request_id: str, *, now: float) -> ReplayRequest:
    """Cancel the pending replay request `request_id` (no runtime has taken it yet): it
    ends `cancelled` and nothing of it is replayed. Returns it as stored. `LookupError`
    if there is no such request, `ValueError` if it is not pending (a running one ends
    by itself, its records one by one)."""
    if not isinstance(request_id, str) or not request_id:
        raise ValueError(f"request_id must be a non-empty str, got {request_id!r}")
    table = store.replay_requests

    def op(txn: Txn) -> ReplayRequest:
        # in the write that a runtime's claim would also need: one of the two wins
        request = table.get(txn, request_id)
        if request is None:
            raise LookupError(f"no replay request {request_id!r} in {store.path}")
        if request.status != "pending":
            taken = "" if request.owner is None else f" (by the runtime in slot {request.owner})"
            raise ValueError(
                f"replay request {request_id} is {request.status}{taken}, not pending: only "
                "a request no runtime has taken yet can be cancelled"
            )
        return table.put(
            txn, replace(request, status="cancelled", updated_at=now, error="cancelled")
        )

    return store.write(op).result()


class DeadLetters:
    """`rt.dead_letters`: the operations on the runtime's own store (see the module
    docstring); a closed runtime refuses them (`RuntimeClosed`)."""

    def __init__(self, store: Store, peers: Peers, replays: ReplayState) -> None:
        self._store = store
        self._peers = peers
        self._replays = replays

    def list(
        self,
        *,
        status: str | None = "dead",
        reason_class: str | None = None,
        key: str | None = None,
        transport: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[DeadLetter]:
        """Records matching every filter given (None: any), oldest first, at most
        `limit`, after id `after`."""
        if status is not None and status not in DEAD_LETTER_STATUSES:
            raise ValueError(
                f"status must be one of {DEAD_LETTER_STATUSES} or None, got {status!r}"
            )
        if reason_class is not None and reason_class not in REASON_CLASSES:
            raise ValueError(
                f"reason_class must be one of {REASON_CLASSES} or None, got {reason_class!r}"
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be an int in [1, {MAX_LIMIT}], got {limit!r}")
        self._refuse_if_closed()
        with self._store.read() as txn:
            return self._store.dead_letters.list(
                txn,
                status=status,
                reason_class=reason_class,
                key=key,
                transport=transport,
                limit=limit,
                after=after,
            )

    def get(self, dead_letter_id: str) -> DeadLetter | None:
        self._refuse_if_closed()
        with self._store.read() as txn:
            return self._store.dead_letters.get(txn, dead_letter_id)

    def replay(
        self,
        ids: Iterable[str] | None = None,
        *,
        reason_class: str | None = None,
        key: str | None = None,
        transport: str | None = None,
        rate: float | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> ReplayReport:
        """Replay the records `ids`, or every `dead` record matching the filters (all
        of them if none is given), at most `rate` per second.

        One key's records are replayed in failure order. A record whose idempotency key
        was delivered meanwhile is not sent (`skipped_duplicate`), nor is one already
        replayed; archived ones are refused. With `wait` it returns once every record has
        ended, or after `timeout` seconds with `pending` counting the rest (the replay
        goes on); without, at once. Raises `ValueError` for bad arguments.
        """
        selected = _check_replay(ids, reason_class, rate, timeout)
        if selected is not None and (reason_class, key, transport) != (None, None, None):
            raise ValueError("give either ids or filters (reason_class, key, transport), not both")
        for name, value in (("key", key), ("transport", transport)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a str or None, got {value!r}")
        coordinator = self._peers.replay_coordinator
        if not coordinator.is_alive():
            raise RuntimeClosed("the runtime is closed; nothing was replayed")
        request = record_replay(  # this runtime carries it out: others leave it alone
            self._store,
            ids=selected,
            filters=request_filters(reason_class, key, transport),
            rate=rate,
            now=self._store.clock(),
            owner=self._store.slot,
        )
        requested = coordinator.ask(StartReplay(request.id), timeout=timeout)
        if not wait:
            return self._replays.report(request.id) or ReplayReport(
                requested=requested, pending=requested, request_id=request.id
            )
        finished = self._replays.finished(request.id)
        if finished is not None:
            try:
                return finished.result(timeout)
            except TimeoutError:
                pass
        return self._replays.report(request.id) or ReplayReport(
            requested=requested, request_id=request.id
        )

    def archive(self, ids: Iterable[str]) -> int:
        """Archive `dead` and `replayed` records; returns how many changed. Unknown ids
        and records in other states are left alone."""
        wanted = [ids] if isinstance(ids, str) else list(ids)
        self._refuse_if_closed()
        return archive(self._store, wanted)

    def purge(self, *, status: str = "archived", older_than: float | None = None) -> int:
        """Delete records in `status` that failed more than `older_than` seconds ago
        (any age if None); returns how many. `replaying` records cannot be purged."""
        if older_than is not None and not older_than >= 0:
            raise ValueError(f"older_than must be seconds >= 0 or None, got {older_than!r}")
        self._refuse_if_closed()
        return purge(self._store, status=status, older_than=older_than, now=self._store.clock())

    def cancel(self, request_id: str) -> ReplayRequest:
        """Cancel a pending replay request (one recorded by `surelay dlq replay` that no
        runtime has taken yet); see `cancel_replay`."""
        self._refuse_if_closed()
        return cancel_replay(self._store, request_id, now=self._store.clock())

    def _refuse_if_closed(self) -> None:
        if self._store.env.closed:
            raise RuntimeClosed(
                "the runtime is closed; open it again, or use `surelay dlq` on its directory"
            )


def _check_replay(
    ids: Iterable[str] | None, reason_class: str | None, rate: float | None, timeout: float | None
) -> tuple[str, ...] | None:
    """The ids as a tuple (None: select by filters), after checking every argument."""
    if reason_class is not None and reason_class not in REASON_CLASSES:
        raise ValueError(
            f"reason_class must be one of {REASON_CLASSES} or None, got {reason_class!r}"
        )
    if rate is not None and not (
        isinstance(rate, int | float)
        and not isinstance(rate, bool)
        and math.isfinite(rate)
        and rate > 0
    ):
        raise ValueError(f"rate must be a number of records per second > 0, got {rate!r}")
    if timeout is not None and not (isinstance(timeout, int | float) and timeout >= 0):
        raise ValueError(f"timeout must be seconds >= 0 or None, got {timeout!r}")
    if ids is None:
        return None
    selected = (ids,) if isinstance(ids, str) else tuple(ids)
    for dead_letter_id in selected:
        if not isinstance(dead_letter_id, str) or not dead_letter_id:
            raise ValueError(f"dead letter ids are non-empty str, got {dead_letter_id!r}")
    return selected
