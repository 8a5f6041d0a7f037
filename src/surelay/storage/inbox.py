"""The inbox: messages taken from a source (`rt.consume`), by (consumer name, the
source's message id), each kept for `dedup_ttl` so that a redelivery by the source is
dropped rather than handled twice.

A record is written in the same transaction as the message's outbox entry, so "in the
inbox" means "accepted": a redelivery of a message whose write was lost (a crash before
the commit) is taken, one whose write was durable is dropped. Records expire and are
swept like dedup records (same layout: `surelay.storage.dedup`).
"""

from __future__ import annotations

from collections.abc import Iterable

from surelay.storage.codec import Report
from surelay.storage.dedup import Dedup
from surelay.storage.environment import Environment, Txn

__all__ = ["Inbox"]


def _key(name: str, message_id: str) -> str:
    return f"{name}\x00{message_id}"


class Inbox:
    def __init__(self, env: Environment, report: Report) -> None:
        self._records = Dedup(env, report, table="inbox")

    def put_many(
        self, txn: Txn, name: str, message_ids: Iterable[str], *, at: float, expires_at: float
    ) -> None:
        """Record the messages of consumer `name` as taken."""
        self._records.put_many(
            txn,
            (_key(name, m) for m in message_ids),
            delivered_at=at,
            expires_at=expires_at,
        )

    def seen(self, txn: Txn, name: str, message_ids: Iterable[str], *, now: float) -> set[str]:
        """Which of `message_ids` consumer `name` took and still remembers."""
        wanted = {_key(name, m): m for m in message_ids}
        return {wanted[k] for k in self._records.seen(txn, wanted, now=now)}

    def sweep(self, txn: Txn, *, now: float, limit: int | None = None) -> int:
        """Forget records that expired at or before `now`; returns how many."""
        return self._records.sweep(txn, now=now, limit=limit)

    def count(self, txn: Txn) -> int:
        return self._records.count(txn)
