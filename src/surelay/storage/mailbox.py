"""Push mailboxes: per recipient, the messages in acceptance order, each device's cursor,
and each message's status; the truth that push delivery reads from.

Every operation runs inside the caller's write transaction, so what it checks and what
it writes are one: a message's `seq` is taken from the recipient's head in the write
that stores it (acceptance order across every process on the directory), and its
idempotency key, `max_pending` and the recipient's rate are checked in that same write
(exact across processes). A device's cumulative ack moves its cursor; the first device
to ack a message makes it `delivered`. A message stays until its retention ends; one
that fails (poison, or expired) leaves the mailbox, so a device that had
not acked it sees a gap.

Tables (schema 5): `push_head` (recipient -> head, delivered and read marks, pending
count, rate TAT), `push_mail` (recipient, seq -> message), `push_status` (message id ->
status), `push_idem` (recipient, idempotency key -> message id), `push_cursor`
(recipient, device -> acked), `push_exp` (time, kind, message id: what to sweep when),
`push_presence` (recipient, device -> the slot and connection serving it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import msgpack

from surelay.errors import MailboxFull, Overloaded
from surelay.policy.rate import take_turn
from surelay.storage.environment import Environment, Txn
from surelay.storage.keys import from_u64, micros, u16, u64

__all__ = [
    "FAILURES",
    "STATES",
    "Appended",
    "Mail",
    "Mailboxes",
    "PushStatus",
    "TooManyDevices",
]

State = Literal["queued", "sent", "delivered", "read", "failed"]
STATES: tuple[State, ...] = ("queued", "sent", "delivered", "read", "failed")
Failure = Literal["expired", "poison"]
FAILURES: tuple[Failure, ...] = ("expired", "poison")

_V1 = 1
_FEED = b"\xff\xff"
"""`push_head` key of the change count: a name's key starts with its length (at most
`MAX_NAME_BYTES`), never with 0xFFFF."""
_PENDING = b"\xff\xfe"
"""`push_head` key of the undelivered messages of every mailbox (the pending gauge)."""
_MESSAGE_ENDS = b"m"
"""`push_exp` kind: the message's retention ends (removed; failed if undelivered)."""
_STATUS_ENDS = b"s"
"""`push_exp` kind: a failed message's status is forgotten."""


class TooManyDevices(Exception):
    """A recipient already has the most devices connected at once."""


@dataclass(frozen=True, slots=True)
class Mail:
    """One message in a recipient's mailbox."""

    msg_id: str
    recipient: str
    seq: int
    payload: bytes
    headers: Mapping[str, str]
    created_at: float
    expires_at: float
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class PushStatus:
    """What became of a pushed message: `queued`, `sent` (a frame went to a device),
    `delivered` (a device acked it: `delivered_at`, `delivered_device`), `read`, or
    `failed` (`reason`: expired, or poison). `attempts` counts frames
    sent."""

    msg_id: str
    recipient: str
    seq: int
    state: State
    sent_at: float | None
    delivered_at: float | None
    delivered_device: str | None
    read_at: float | None
    attempts: int
    reason: str | None
    updated_at: float
    expires_at: float
    """When this status is forgotten (the message's retention, or a failed one's)."""
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Appended:
    """The answer to an append: the message's id and sequence number; `duplicate`: its
    idempotency key was already in the mailbox (nothing was written)."""

    msg_id: str
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class _Head:
    head: int = 0
    delivered: int = 0
    """Every message up to here was acked by some device (or failed)."""
    read: int = 0
    """Every message up to here that was delivered is read."""
    pending: int = 0
    """Messages neither delivered nor failed."""
    tat: float = 0.0


def _name(text: str) -> bytes:
    raw = text.encode("utf-8")
    return u16(len(raw)) + raw  # length first: no name's key is a prefix of another's


def _pack(items: list[Any]) -> bytes:
    return bytes(msgpack.packb([_V1, *items], use_bin_type=True))


def _unpack(raw: bytes) -> list[Any]:
    items = msgpack.unpackb(bytes(raw), raw=False)
    if not isinstance(items, list) or not items or items[0] != _V1:
        raise ValueError("not a push record of this version")
    return items[1:]


class Mailboxes:
    """The push tables of one data directory (see the module)."""

    def __init__(self, env: Environment) -> None:
        self._head = env.db("push_head")
        self._mail = env.db("push_mail")
        self._status = env.db("push_status")
        self._idem = env.db("push_idem")
        self._cursor = env.db("push_cursor")
        self._exp = env.db("push_exp")
        self._presence = env.db("push_presence")

    # -- accepting -----------------------------------------------------------------------

    def append(
        self,
        txn: Txn,
        recipient: str,
        payload: bytes,
        headers: Mapping[str, str],
        *,
        msg_id: str,
        idempotency_key: str | None,
        now: float,
        expires_at: float,
        max_pending: int,
        rate: tuple[float, float] | None = None,
    ) -> Appended:
        """Put a message at the end of `recipient`'s mailbox. A known idempotency key
        answers the message it named (`duplicate`); past `max_pending` undelivered
        messages `MailboxFull`; past `rate` ((interval, tolerance) of a GCRA)
        `Overloaded` with the wait."""
        name = _name(recipient)
        if idempotency_key is not None:
            known = txn.get(name + _idem(idempotency_key), db=self._idem)
            if known is not None:
                status = self.status(txn, bytes(known).decode("utf-8"))
                # a failed message sent again (a dead letter replayed) is a new message
                if status is not None and status.state != "failed":
                    return Appended(status.msg_id, status.seq, duplicate=True)
        head = self._read_head(txn, name)
        if head.pending >= max_pending:
            raise MailboxFull(
                f"the mailbox of {recipient!r} holds {head.pending} undelivered messages, "
                f"its max_pending"
            )
        tat = head.tat
        if rate is not None:
            interval, tolerance = rate
            turn = take_turn(head.tat, now, interval=interval, tolerance=tolerance, horizon=0.0)
            if not turn.reserved:
                raise Overloaded(
                    f"{recipient!r} is over its rate_per_recipient; try again in {turn.wait:.3f}s",
                    turn.wait,
                )
            tat = turn.tat
        seq = head.head + 1
        txn.put(
            name + u64(seq),
            _pack([msg_id, recipient, dict(headers), payload, now, expires_at, idempotency_key]),
            db=self._mail,
        )
        self._write_status(
            txn,
            PushStatus(
                msg_id,
                recipient,
                seq,
                "queued",
                None,
                None,
                None,
                None,
                0,
                None,
                now,
                expires_at,
                idempotency_key,
            ),
        )
        if idempotency_key is not None:
            txn.put(name + _idem(idempotency_key), msg_id.encode("utf-8"), db=self._idem)
        txn.put(micros(expires_at) + _MESSAGE_ENDS + msg_id.encode("utf-8"), b"", db=self._exp)
        self._write_head(txn, name, replace(head, head=seq, pending=head.pending + 1, tat=tat))
        self._bump(txn)
        self._add_pending(txn, 1)
        return Appended(msg_id, seq, duplicate=False)

    # -- reading -------------------------------------------------------------------------

    def head(self, txn: Txn, recipient: str) -> int:
        """The last sequence number taken in `recipient`'s mailbox (0: none yet)."""
        return self._read_head(txn, _name(recipient)).head

    def pending(self, txn: Txn, recipient: str) -> int:
        """`recipient`'s messages neither delivered nor failed."""
        return self._read_head(txn, _name(recipient)).pending

    def after(self, txn: Txn, recipient: str, seq: int, *, limit: int) -> list[Mail]:
        """Up to `limit` messages of `recipient` with a sequence number over `seq`, in
        order (a message that failed is not among them: the caller sees the gap)."""
        name = _name(recipient)
        out: list[Mail] = []
        cursor = txn.cursor(db=self._mail)
        if limit <= 0 or not cursor.set_range(name + u64(seq + 1)):
            return out
        for key, value in cursor.iternext():
            if not bytes(key).startswith(name):
                break
            out.append(_mail(from_u64(bytes(key), len(name)), value))
            if len(out) >= limit:
                break
        return out

    def status(self, txn: Txn, msg_id: str) -> PushStatus | None:
        raw = txn.get(msg_id.encode("utf-8"), db=self._status)
        if raw is None:
            return None
        items = _unpack(raw)
        return PushStatus(msg_id, *items)

    def acked(self, txn: Txn, recipient: str, device: str) -> int:
        """The cursor of `device`: every message up to it is acked (0: none)."""
        raw = txn.get(_name(recipient) + _name(device), db=self._cursor)
        return 0 if raw is None else from_u64(bytes(raw))

    # -- moving ----------------------------------------------------------------------------

    def mark_sent(self, txn: Txn, mails: list[Mail], now: float) -> None:
        """Frames of `mails` went to a device: queued ones become `sent`; attempts
        counted."""
        for mail in mails:
            status = self.status(txn, mail.msg_id)
            if status is None:
                continue
            state = "sent" if status.state == "queued" else status.state
            sent_at = status.sent_at if status.sent_at is not None else now
            self._write_status(
                txn,
                replace(
                    status,
                    state=state,
                    sent_at=sent_at,
                    attempts=status.attempts + 1,
                    updated_at=now,
                ),
            )

    def ack(self, txn: Txn, recipient: str, device: str, upto: int, now: float) -> int:
        """`device` holds every message up to `upto` (clamped to the head): its cursor
        moves (never back), and the messages no device had acked become `delivered`.
        Returns the device's cursor."""
        name = _name(recipient)
        head = self._read_head(txn, name)
        upto = min(upto, head.head)
        cursor_key = name + _name(device)
        old = txn.get(cursor_key, db=self._cursor)
        was = 0 if old is None else from_u64(bytes(old))
        acked = max(upto, was)
        if acked > was:  # (an ack that moves nothing writes nothing)
            txn.put(cursor_key, u64(acked), db=self._cursor)
        if acked <= head.delivered:
            return acked
        delivered = 0
        for mail in self.after(txn, recipient, head.delivered, limit=acked - head.delivered):
            if mail.seq > acked:
                break
            status = self.status(txn, mail.msg_id)
            if status is not None and status.state in ("queued", "sent"):
                self._write_status(
                    txn,
                    replace(
                        status,
                        state="delivered",
                        delivered_at=now,
                        delivered_device=device,
                        updated_at=now,
                    ),
                )
                delivered += 1
        self._write_head(
            txn, name, replace(head, delivered=acked, pending=max(0, head.pending - delivered))
        )
        self._add_pending(txn, -delivered)
        return acked

    def read(self, txn: Txn, recipient: str, device: str, upto: int, now: float) -> None:
        """The user read every message up to `upto` on `device` (clamped to what the
        device acked): delivered ones become `read`."""
        name = _name(recipient)
        head = self._read_head(txn, name)
        upto = min(upto, self.acked(txn, recipient, device))
        if upto <= head.read:
            return
        for mail in self.after(txn, recipient, head.read, limit=upto - head.read):
            if mail.seq > upto:
                break
            status = self.status(txn, mail.msg_id)
            if status is not None and status.state == "delivered":
                self._write_status(txn, replace(status, state="read", read_at=now, updated_at=now))
        self._write_head(txn, name, replace(head, read=upto))

    def fail(
        self, txn: Txn, recipient: str, seq: int, reason: Failure, now: float, *, keep: float
    ) -> Mail | None:
        """Take message `seq` out of `recipient`'s mailbox as `failed` (its status kept
        `keep` seconds): the caller dead-letters the message returned. None, and nothing
        changed, when it is not there or a device has acked it (a message some device
        got stays for the others: only the device that cannot take it skips it)."""
        name = _name(recipient)
        raw = txn.get(name + u64(seq), db=self._mail)
        if raw is None:
            return None
        mail = _mail(seq, raw)
        status = self.status(txn, mail.msg_id)
        if status is None or status.state not in ("queued", "sent"):
            return None
        txn.delete(name + u64(seq), db=self._mail)
        txn.delete(micros(mail.expires_at) + _MESSAGE_ENDS + mail.msg_id.encode(), db=self._exp)
        head = self._read_head(txn, name)
        self._write_head(txn, name, replace(head, pending=max(0, head.pending - 1)))
        self._add_pending(txn, -1)
        until = now + keep
        self._write_status(
            txn, replace(status, state="failed", reason=reason, updated_at=now, expires_at=until)
        )
        txn.put(micros(until) + _STATUS_ENDS + mail.msg_id.encode(), b"", db=self._exp)
        return mail

    def expire(self, txn: Txn, now: float, *, limit: int, keep: float) -> list[Mail]:
        """Up to `limit` expiries due by `now`: messages whose retention ended leave
        their mailbox (those undelivered `failed`, `expired`, and returned to be
        dead-lettered), and statuses kept for a failed message are forgotten."""
        failed: list[Mail] = []
        done: list[bytes] = []
        cursor = txn.cursor(db=self._exp)
        if not cursor.first():
            return failed
        horizon = micros(now)
        for found in cursor.iternext(keys=True, values=False):
            key = bytes(found)
            if key[:8] > horizon or len(done) >= limit:
                break
            done.append(key)
        for key in done:
            txn.delete(key, db=self._exp)
            kind, msg_id = key[8:9], key[9:].decode("utf-8")
            status = self.status(txn, msg_id)
            if status is None:
                continue
            if kind == _STATUS_ENDS:
                self._forget(txn, status)
                continue
            if status.state in ("queued", "sent"):
                mail = self.fail(txn, status.recipient, status.seq, "expired", now, keep=keep)
                if mail is not None:
                    failed.append(mail)
            else:  # delivered or read: its retention is over, nothing failed
                txn.delete(_name(status.recipient) + u64(status.seq), db=self._mail)
                self._forget(txn, status)
        return failed

    # -- presence: which connection serves a device -----------------------------------

    def claim(
        self,
        txn: Txn,
        recipient: str,
        device: str,
        *,
        slot: int,
        connection: str,
        now: float,
        limit: int | None = None,
    ) -> tuple[int, str] | None:
        """`connection` (of the runtime holding `slot`) serves `device` from now on;
        returns the (slot, connection) it displaces, if another held it. With `limit`,
        `TooManyDevices` when the recipient has that many other devices connected."""
        name = _name(recipient)
        key = name + _name(device)
        older = txn.get(key, db=self._presence)
        if limit is not None and older is None:
            others = 0
            cursor = txn.cursor(db=self._presence)
            if cursor.set_range(name):
                for found in cursor.iternext(keys=True, values=False):
                    if not bytes(found).startswith(name):
                        break
                    others += 1
                    if others >= limit:
                        raise TooManyDevices(f"{recipient!r} already has {limit} devices connected")
        txn.put(key, _pack([slot, connection, now]), db=self._presence)
        self._bump(txn)
        if older is None:
            return None
        held_slot, held_by, _ = _unpack(older)
        return None if held_by == connection else (held_slot, held_by)

    def holder(self, txn: Txn, recipient: str, device: str) -> str | None:
        """The connection serving `device` (None: none)."""
        raw = txn.get(_name(recipient) + _name(device), db=self._presence)
        return None if raw is None else str(_unpack(raw)[1])

    def release(self, txn: Txn, recipient: str, device: str, connection: str) -> None:
        """`connection` ended: its row goes, unless another connection holds it now."""
        key = _name(recipient) + _name(device)
        raw = txn.get(key, db=self._presence)
        if raw is not None and _unpack(raw)[1] == connection:
            txn.delete(key, db=self._presence)

    def touch(self, txn: Txn, rows: list[tuple[str, str, str]], now: float) -> None:
        """The connections `rows` (recipient, device, connection) are alive at `now`
        (rows another connection holds now are left alone)."""
        for recipient, device, connection in rows:
            key = _name(recipient) + _name(device)
            raw = txn.get(key, db=self._presence)
            if raw is not None:
                slot, held_by, _ = _unpack(raw)
                if held_by == connection:
                    txn.put(key, _pack([slot, connection, now]), db=self._presence)

    def forget_idle(self, txn: Txn, before: float, *, limit: int) -> int:
        """Remove up to `limit` presence rows not touched since `before`: the backstop
        for a connection whose process neither released its row nor died (its slot's
        adoption clears those)."""
        stale = []
        cursor = txn.cursor(db=self._presence)
        for key, value in cursor.iternext():
            if _unpack(value)[2] <= before:
                stale.append(bytes(key))
                if len(stale) >= limit:
                    break
        for key in stale:
            txn.delete(key, db=self._presence)
        return len(stale)

    def presence_holds(self, txn: Txn, slot: int) -> bool:
        return any(True for _ in self._rows_of(txn, slot))

    def release_slot(self, txn: Txn, slot: int) -> int:
        """The runtime of `slot` is gone: its connections are too."""
        keys = list(self._rows_of(txn, slot))
        for key in keys:
            txn.delete(key, db=self._presence)
        return len(keys)

    def online(self, txn: Txn) -> int:
        """Devices connected, in every process on the directory."""
        return int(txn.stat(self._presence)["entries"])

    def _rows_of(self, txn: Txn, slot: int) -> Iterator[bytes]:
        cursor = txn.cursor(db=self._presence)
        for key, value in cursor.iternext():
            if _unpack(value)[0] == slot:
                yield bytes(key)

    def waiting(self, txn: Txn, *, limit: int) -> tuple[list[tuple[str, int, float]], bool]:
        """The recipients with undelivered messages: (recipient, how many, when the oldest
        was accepted), oldest first, looking at up to `limit` mailboxes (and whether
        there were more)."""
        out: list[tuple[str, int, float]] = []
        cursor = txn.cursor(db=self._head)
        looked = 0
        for key, value in cursor.iternext():
            raw = bytes(key)
            if raw in (_FEED, _PENDING):
                continue
            looked += 1
            if looked > limit:
                out.sort(key=lambda row: row[2])
                return out, True
            head = _Head(*_unpack(value))
            if head.pending <= 0:
                continue
            recipient = raw[2:].decode("utf-8")
            first = self.after(txn, recipient, head.delivered, limit=1)
            oldest = first[0].created_at if first else 0.0
            out.append((recipient, head.pending, oldest))
        out.sort(key=lambda row: row[2])
        return out, False

    def changes(self, txn: Txn) -> int:
        """A count that moves whenever a message is appended or a device's connection
        changes, anywhere on the directory: one read tells a process whether to look."""
        raw = txn.get(_FEED, db=self._head)
        return 0 if raw is None else from_u64(bytes(raw))

    def pending_total(self, txn: Txn) -> int:
        """Undelivered messages in every mailbox of the directory."""
        raw = txn.get(_PENDING, db=self._head)
        return 0 if raw is None else from_u64(bytes(raw))

    def _add_pending(self, txn: Txn, delta: int) -> None:
        if delta:
            total = max(0, self.pending_total(txn) + delta)
            txn.put(_PENDING, u64(total), db=self._head)

    def _bump(self, txn: Txn) -> None:
        txn.put(_FEED, u64((self.changes(txn) + 1) % 2**64), db=self._head)

    def next_expiry(self, txn: Txn) -> float | None:
        """When the next retention ends (None: nothing is held)."""
        cursor = txn.cursor(db=self._exp)
        if not cursor.first():
            return None
        return from_u64(bytes(cursor.key())) / 1_000_000

    def count(self, txn: Txn) -> int:
        """Messages held in every mailbox."""
        return int(txn.stat(self._mail)["entries"])

    # -- records ---------------------------------------------------------------------------

    def _forget(self, txn: Txn, status: PushStatus) -> None:
        txn.delete(status.msg_id.encode("utf-8"), db=self._status)
        if status.idempotency_key is not None:
            key = _name(status.recipient) + _idem(status.idempotency_key)
            named = txn.get(key, db=self._idem)
            if named is not None and bytes(named) == status.msg_id.encode("utf-8"):
                txn.delete(key, db=self._idem)  # (not when the key names a newer message)

    def _read_head(self, txn: Txn, name: bytes) -> _Head:
        raw = txn.get(name, db=self._head)
        return _Head() if raw is None else _Head(*_unpack(raw))

    def _write_head(self, txn: Txn, name: bytes, head: _Head) -> None:
        txn.put(
            name,
            _pack([head.head, head.delivered, head.read, head.pending, head.tat]),
            db=self._head,
        )

    def _write_status(self, txn: Txn, s: PushStatus) -> None:
        txn.put(
            s.msg_id.encode("utf-8"),
            _pack(
                [
                    s.recipient,
                    s.seq,
                    s.state,
                    s.sent_at,
                    s.delivered_at,
                    s.delivered_device,
                    s.read_at,
                    s.attempts,
                    s.reason,
                    s.updated_at,
                    s.expires_at,
                    s.idempotency_key,
                ]
            ),
            db=self._status,
        )


def _mail(seq: int, raw: bytes) -> Mail:
    msg_id, recipient, headers, payload, created_at, expires_at, key = _unpack(raw)
    return Mail(msg_id, recipient, seq, payload, headers, created_at, expires_at, key)


def _idem(idempotency_key: str) -> bytes:
    """An idempotency key's part of a key: its SHA-256 (any length of key fits)."""
    return hashlib.sha256(idempotency_key.encode("utf-8")).digest()
