"""Replay requests: what an operator asked for (often from the CLI, in another process)
for a runtime on the directory to carry out. Each is carried out by one runtime at a
time: the one that claims it (`claim`)."""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import replace

from surelay.storage.codec import Report, decode_or_report, encode
from surelay.storage.environment import Environment, Txn
from surelay.storage.records import ReplayRequest
from surelay.storage.space import entry_bytes

__all__ = ["FILTERS", "ReplayRequests", "request_filters"]


class ReplayRequests:
    def __init__(self, env: Environment, report: Report) -> None:
        self._db = env.db("replay")
        self._space = env.space
        self._report = report

    def put(self, txn: Txn, request: ReplayRequest) -> ReplayRequest:
        """Store (or update) a request. A new one adds data: `StorageFull` when the
        store is down to its reserve."""
        key = request.id.encode("utf-8")
        raw = encode(request)
        if txn.get(key, db=self._db) is None:
            self._space.admit(txn, entry_bytes(len(key), len(raw), self._space.page_size))
        txn.put(key, raw, db=self._db)
        return request

    def get(self, txn: Txn, request_id: str) -> ReplayRequest | None:
        key = request_id.encode("utf-8")
        raw = txn.get(key, db=self._db)
        return None if raw is None else self._decode(key, raw)

    def claim(
        self, txn: Txn, request_id: str, *, slot: int, live: Container[int]
    ) -> ReplayRequest | None:
        """Take request `request_id` for the runtime of `slot`: a `pending` one, or a
        `running` one whose owner's slot is not in `live` (its runtime died) or is
        `slot` itself (an earlier runtime of this slot died). Returns it as `running` by
        `slot`, or None if it is not there, has ended, or another runtime runs it."""
        request = self.get(txn, request_id)
        if request is None or request.status not in ("pending", "running"):
            return None
        if (
            request.status == "running"
            and request.owner not in (None, slot)
            and request.owner in live
        ):
            return None
        return self.put(txn, replace(request, status="running", owner=slot))

    def list(self, txn: Txn, *, status: str | None = None, limit: int = 100) -> list[ReplayRequest]:
        """Requests oldest first (ids are time-ordered), optionally of one status."""
        out = []
        for key, raw in txn.cursor(db=self._db):
            request = self._decode(bytes(key), raw)
            if request is not None and (status is None or request.status == status):
                out.append(request)
                if len(out) >= limit:
                    break
        return out

    def _decode(self, key: bytes, raw: bytes) -> ReplayRequest | None:
        return decode_or_report(ReplayRequest, "replay", key, raw, self._report)


FILTERS = ("reason_class", "key", "transport")
"""The filters a replay request may carry (as `rt.dead_letters.list` takes them)."""


def request_filters(
    reason_class: str | None, key: str | None, transport: str | None
) -> Mapping[str, str]:
    """The filters given, as a request stores them."""
    given = dict(zip(FILTERS, (reason_class, key, transport), strict=True))
    return {name: value for name, value in given.items() if value is not None}
