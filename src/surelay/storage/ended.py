"""How messages ended, by message id, kept for `dedup_ttl`: what `rt.status` answers for a
message that has left the outbox, from any process on the directory.

Each record is written in the transaction that ends its message (the delivery's dedup
record, the dead letter), so a message is always in exactly one place: scheduled, in
the outbox, or here. An expiry index (expires_at, message id) lets the sweep remove
exactly the expired records, as for dedup records.

A message sent with its own `idempotency_key` is also found by it: `idempotency_ids`
maps the key to the id of the latest message sent with it, written at acceptance (only
for keys given: by default the key is the message id) and removed with the ended record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgpack

from surelay.storage.codec import DecodeError, Report
from surelay.storage.dedup import sweep_expired
from surelay.storage.environment import Environment, Txn
from surelay.storage.keys import micros, text_key

__all__ = ["Ended", "EndedRecord", "EndedState", "Ending"]

EndedState = Literal["delivered", "duplicate", "dead", "replayed"]
_V1 = 1


@dataclass(frozen=True, slots=True)
class Ending:
    """What is kept of a message that ends (no payload)."""

    message_id: str
    transport: str
    key: str | None
    idempotency_key: str
    attempts: int
    last_error: str | None = None
    dead_letter_id: str | None = None


@dataclass(frozen=True, slots=True)
class EndedRecord:
    """A message that ended, as `Ended.get` reads it."""

    message_id: str
    state: EndedState
    transport: str
    key: str | None
    attempts: int
    ended_at: float
    expires_at: float
    last_error: str | None
    dead_letter_id: str | None


class Ended:
    def __init__(self, env: Environment, report: Report) -> None:
        self._db = env.db("ended")
        self._exp = env.db("ended_exp")
        self._ids = env.db("idempotency_ids")
        self._report = report

    def remember_keys(self, txn: Txn, pairs: Sequence[tuple[str, str]]) -> None:
        """(idempotency key, message id) of messages accepted with a key of their own."""
        txn.cursor(db=self._ids).putmulti([(text_key(k), m.encode("utf-8")) for k, m in pairs])

    def put_many(
        self,
        txn: Txn,
        endings: Iterable[Ending],
        *,
        state: EndedState,
        at: float,
        expires_at: float,
    ) -> None:
        """Record messages that ended together (two LMDB calls for all of them)."""
        expiry = micros(expires_at)
        rows = []
        index = []
        for e in endings:
            name = text_key(e.message_id)
            value = [
                _V1,
                state,
                e.transport,
                e.key,
                e.attempts,
                at,
                expires_at,
                e.last_error,
                e.dead_letter_id,
                None if e.idempotency_key == e.message_id else e.idempotency_key,
            ]
            rows.append((name, msgpack.packb(value, use_bin_type=True)))
            index.append((expiry + name, b""))
        txn.cursor(db=self._db).putmulti(rows)
        txn.cursor(db=self._exp).putmulti(index)

    def get(self, txn: Txn, message_id: str, *, now: float) -> EndedRecord | None:
        """The record of `message_id` if it has not expired."""
        name = text_key(message_id)
        raw = txn.get(name, db=self._db)
        if raw is None:
            return None
        items = self._decode(name, bytes(raw))
        if items is None or items[6] <= now:
            return None
        _, state, transport, key, attempts, at, expires, error, dead_id, _ = items
        return EndedRecord(message_id, state, transport, key, attempts, at, expires, error, dead_id)

    def message_of(self, txn: Txn, idempotency_key: str) -> str | None:
        """The id of the latest message accepted with this idempotency key of its own."""
        raw = txn.get(text_key(idempotency_key), db=self._ids)
        return None if raw is None else bytes(raw).decode("utf-8")

    def sweep(self, txn: Txn, *, now: float, limit: int | None = None) -> int:
        """Delete records that expired at or before `now` (with their idempotency key's
        entry, if it still names their message); returns how many."""

        def expired(name: bytes, expiry: bytes) -> bool:
            raw = txn.get(name, db=self._db)
            if raw is None:
                return False
            items = self._decode(name, bytes(raw))
            if items is not None and micros(items[6]) != expiry:
                return False  # put again since: its newer index entry will come
            txn.delete(name, db=self._db)
            own_key = None if items is None else items[9]
            if own_key is not None:
                k = text_key(own_key)
                named = txn.get(k, db=self._ids)
                if named is not None and text_key(bytes(named).decode()) == name:
                    txn.delete(k, db=self._ids)
            return True

        return sweep_expired(txn, self._exp, now=now, limit=limit, expired=expired)

    def count(self, txn: Txn) -> int:
        return int(txn.stat(self._db)["entries"])

    def _decode(self, name: bytes, raw: bytes) -> list[Any] | None:
        try:
            items = msgpack.unpackb(raw, raw=False)
            if not isinstance(items, list) or len(items) != 10 or items[0] != _V1:
                raise DecodeError(f"EndedRecord: expected a v{_V1} array of 10 fields")
        except (ValueError, msgpack.UnpackException) as error:
            self._report("ended", name, raw, error)
            return None
        return items
