"""The push gateway (`rt.push`): accepts messages into recipients' mailboxes, answers
what became of them, and issues connection tokens.

`send` returns once the message is in the mailbox on disk with its sequence number: the
append is one operation of the store's group commit, so concurrent sends share an fsync
and a `MailboxFull` or `Overloaded` fails only its own send.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from surelay.envelope import Envelope, Priority, check_headers, check_payload, check_text
from surelay.errors import InvalidMessage, MailboxFull, Overloaded, PermanentError, TransientError
from surelay.push.config import PushConfig
from surelay.push.telemetry import (
    ATTR_DEVICE,
    ATTR_MSG_ID,
    ATTR_REASON,
    ATTR_SEQ,
    PushTelemetry,
)
from surelay.push.tokens import check_name, issue
from surelay.storage.environment import Txn
from surelay.storage.keys import new_id
from surelay.storage.mailbox import Appended, Failure, Mail, PushStatus
from surelay.storage.records import DeadLetter
from surelay.storage.store import Store

if TYPE_CHECKING:
    from opentelemetry.trace import Span
    from starlette.applications import Starlette

    from surelay.push.server import Presence

__all__ = ["IDLE", "MAX_DEVICES", "MAX_PUSH_PAYLOAD", "TOUCH", "Gateway", "PushReceipt"]

logger = logging.getLogger("surelay.push")

MAX_PUSH_PAYLOAD = 256 * 1024
"""Bytes: a pushed message goes to phones over WebSocket frames; larger data belongs
behind a link in the message."""

MAX_DEVICES = 32
"""Devices of one recipient connected at once, across every process on the directory:
one token cannot hold a worker's sockets without bound."""

IDLE = 300.0
"""Seconds after which a presence row no process has touched is removed (live
connections touch theirs every `TOUCH` seconds)."""

TOUCH = 60.0

SEND_TIMEOUT = 60.0
"""Seconds `send` waits for its write (a store that cannot write for this long fails
the send with `TimeoutError`; the message may still land)."""


@dataclass(frozen=True, slots=True)
class PushReceipt:
    """A message in a recipient's mailbox: its `msg_id` and `seq`; `status` as it was
    when `send` returned (`queued` for a new message); `duplicate`: its idempotency key
    named a message already there, which this receipt describes."""

    msg_id: str
    seq: int
    status: str
    duplicate: bool


class Gateway:
    """`rt.push`: see the module."""

    def __init__(self, store: Store, config: PushConfig, clock: Callable[[], float]) -> None:
        self._store = store
        self.config = config
        self._clock = clock
        self.mailboxes = store.mailboxes
        # this slot is ours now: rows of an earlier run of it name connections long gone
        store.write(lambda txn: self.mailboxes.release_slot(txn, store.slot)).result(SEND_TIMEOUT)
        rate = config.rate_per_recipient
        self._rate = (
            None
            if rate is None
            else (rate.per / rate.count, (rate.burst_or_one - 1) * rate.per / rate.count)
        )
        self._presence: Presence | None = None
        self._idle_swept = float("-inf")
        self.telemetry = PushTelemetry(self._connections, self._pending)

    def send(
        self,
        recipient: str,
        payload: bytes,
        *,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        ttl: float | None = None,
    ) -> PushReceipt:
        """Put `payload` in `recipient`'s mailbox; return once it is durable there.
        `ttl` (seconds, at most the config's `retention`) ends its retention sooner.
        Raises `InvalidMessage` for a bad argument, `MailboxFull` past `max_pending`
        undelivered messages, `Overloaded` past `rate_per_recipient`."""
        with self.telemetry.span("append", str(recipient)[:256]) as span:
            future = self._submit(recipient, payload, idempotency_key, headers, ttl)
            receipt = self._receipt(future.result(SEND_TIMEOUT))
            self._appended(span, recipient, receipt)
        return receipt

    async def asend(
        self,
        recipient: str,
        payload: bytes,
        *,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        ttl: float | None = None,
    ) -> PushReceipt:
        """`send` for a coroutine: the event loop goes on while the write commits."""
        with self.telemetry.span("append", str(recipient)[:256]) as span:
            future = self._submit(recipient, payload, idempotency_key, headers, ttl)
            receipt = self._receipt(await asyncio.wrap_future(future))
            self._appended(span, recipient, receipt)
        return receipt

    def _appended(self, span: Span, recipient: str, receipt: PushReceipt) -> None:
        span.set_attribute(ATTR_SEQ, receipt.seq)
        span.set_attribute(ATTR_MSG_ID, receipt.msg_id)
        if not receipt.duplicate:
            self.telemetry.count("appended")
        self._wake(recipient)

    def status(self, msg_id: str) -> PushStatus | None:
        """What became of message `msg_id` (None: unknown, or past its retention), from
        any process on the directory."""
        if not isinstance(msg_id, str) or not msg_id:
            raise InvalidMessage(f"msg_id must be a non-empty str, got {msg_id!r}")
        with self._store.read() as txn:
            return self.mailboxes.status(txn, msg_id)

    def issue_token(self, recipient: str, *, device: str | None = None, ttl: float = 900) -> str:
        """A connection token for `recipient` (only on `device`, when given), valid for
        `ttl` seconds, signed with the config's secret. Hand it to the client over a
        channel you already trust (your login)."""
        if (
            isinstance(ttl, bool)
            or not isinstance(ttl, int | float)
            or not (math.isfinite(ttl) and ttl > 0)
        ):
            raise ValueError(f"ttl must be finite seconds > 0, got {ttl!r}")
        return issue(self.config.key, recipient, device, self._clock() + ttl)

    def asgi_app(self) -> Starlette:
        """The push endpoint as an ASGI app (Starlette): mount it in every worker
        process, e.g. `Mount("/push", app=gw.asgi_app())`; clients connect to
        `{mount}/ws`. Needs the `push` extra (`pip install surelay[push]`)."""
        from surelay.push.server import Presence, make_app  # noqa: PLC0415

        if self._presence is None:
            self._presence = Presence()
        return make_app(self, self._presence)

    # -- what the connections use ----------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    def changes(self) -> int:
        """See `Mailboxes.changes`."""
        with self._store.read() as txn:
            return self.mailboxes.changes(txn)

    def look(
        self, devices: list[tuple[str, str]]
    ) -> tuple[dict[str, int], dict[tuple[str, str], str | None]]:
        """In one read: the head of each recipient's mailbox, and the connection that
        serves each (recipient, device)."""
        with self._store.read() as txn:
            heads = {r: self.mailboxes.head(txn, r) for r, _ in devices}
            holders = {(r, d): self.mailboxes.holder(txn, r, d) for r, d in devices}
        return heads, holders

    async def claim(
        self, recipient: str, device: str, connection: str, *, limit: bool = True
    ) -> None:
        """`connection` serves `device` now (one that served it in another process sees
        this and closes with 4002). `TooManyDevices` past `MAX_DEVICES` connected
        devices of one recipient (across the directory); `limit=False` for a connection
        taking its own row again."""
        mailboxes, slot, clock = self.mailboxes, self._store.slot, self._clock
        most = MAX_DEVICES if limit else None
        future = self._store.write(
            lambda txn: mailboxes.claim(
                txn, recipient, device, slot=slot, connection=connection, now=clock(), limit=most
            )
        )
        await asyncio.wrap_future(future)

    async def touch(self, rows: list[tuple[str, str, str]]) -> None:
        """This process's connections are alive (their presence rows' time moves)."""
        mailboxes, clock = self.mailboxes, self._clock
        future = self._store.write(lambda txn: mailboxes.touch(txn, rows, clock()))
        await asyncio.wrap_future(future)

    async def release(self, recipient: str, device: str, connection: str) -> None:
        mailboxes = self.mailboxes
        future = self._store.write(
            lambda txn: mailboxes.release(txn, recipient, device, connection)
        )
        await asyncio.wrap_future(future)

    def cursor(self, recipient: str, device: str) -> tuple[int, int]:
        """(the mailbox's head, `device`'s cursor)."""
        with self._store.read() as txn:
            return self.mailboxes.head(txn, recipient), self.mailboxes.acked(txn, recipient, device)

    def after(self, recipient: str, seq: int, limit: int) -> tuple[int, list[Mail]]:
        """(the head, up to `limit` messages after `seq`), in one read."""
        with self._store.read() as txn:
            head = self.mailboxes.head(txn, recipient)
            return head, self.mailboxes.after(txn, recipient, seq, limit=limit)

    def mark_sent(self, mails: list[Mail]) -> None:
        """Frames of `mails` went: their statuses say so (written in the background:
        the frame is not held up, and a lost mark only leaves a status at `queued`)."""
        mailboxes, clock = self.mailboxes, self._clock
        if mails:
            self.telemetry.count("frames", len(mails))
            with self.telemetry.span("deliver", mails[0].recipient, {ATTR_SEQ: mails[-1].seq}):
                pass  # the frames went just before: the span marks when, and up to which

        def mark(txn: Txn) -> None:
            mailboxes.mark_sent(txn, mails, clock())

        self._store.write(mark).add_done_callback(_log_failure)

    async def ack(self, recipient: str, device: str, upto: int) -> int:
        """`device` acked up to `upto`: durable before this returns; its cursor."""
        mailboxes, clock = self.mailboxes, self._clock
        with self.telemetry.span("ack", recipient, {ATTR_DEVICE: device, ATTR_SEQ: upto}):
            future = self._store.write(
                lambda txn: mailboxes.ack(txn, recipient, device, upto, clock())
            )
            acked = await asyncio.wrap_future(future)
        self.telemetry.count("acks")
        return acked

    async def read(self, recipient: str, device: str, upto: int) -> None:
        mailboxes, clock = self.mailboxes, self._clock
        with self.telemetry.span("read", recipient, {ATTR_DEVICE: device, ATTR_SEQ: upto}):
            future = self._store.write(
                lambda txn: mailboxes.read(txn, recipient, device, upto, clock())
            )
            await asyncio.wrap_future(future)
        self.telemetry.count("reads")

    async def fail(self, recipient: str, seq: int, reason: Failure) -> Mail | None:
        """Take message `seq` out of the mailbox as failed, and store it as a dead letter
        of transport `push` in the same write (replay puts it back in the mailbox)."""
        keep, store = self.config.retention, self._store

        def op(txn: Txn) -> Mail | None:
            now = self._clock()
            attempts = self._attempts(txn, recipient, seq)
            mail = self.mailboxes.fail(txn, recipient, seq, reason, now, keep=keep)
            if mail is not None:
                store.dead_letters.insert(txn, _dead_letter(mail, reason, attempts, now))
            return mail

        with self.telemetry.span("failed", recipient, {ATTR_SEQ: seq, ATTR_REASON: reason}):
            mail = await asyncio.wrap_future(self._store.write(op))
        if mail is not None:
            self.telemetry.count("failed", reason=reason)
        return mail

    def expire(self, now: float | None = None, *, limit: int = 10_000) -> int:
        """End the retention of what is due (the runtime's sweeper does this on its
        own): messages no device acked in time become dead letters (`expired`), acked
        ones are forgotten. Returns how many messages failed."""
        keep, store, mailboxes = self.config.retention, self._store, self.mailboxes
        at = self._clock() if now is None else now

        idle = at - self._idle_swept >= TOUCH
        if idle:
            self._idle_swept = at

        def op(txn: Txn) -> int:
            if idle:  # (a scan of the presence rows: once a minute is enough)
                mailboxes.forget_idle(txn, at - IDLE, limit=limit)
            failed = mailboxes.expire(txn, at, limit=limit, keep=keep)
            for mail in failed:
                store.dead_letters.insert(txn, _dead_letter(mail, "expired", 0, at))
            return len(failed)

        failed: int = self._store.write(op).result(SEND_TIMEOUT)
        self.telemetry.count("failed", failed, reason="expired")
        return failed

    def next_expiry(self) -> float | None:
        """When `expire` next has something to do (None: nothing held)."""
        with self._store.read() as txn:
            return self.mailboxes.next_expiry(txn)

    def transport(self, envelope: Envelope) -> None:
        """The built-in `push` transport: `rt.send("push", payload, key=recipient)`
        goes through the outbox (transactions, the SQL outbox, `rt.consume`, replay)
        into the recipient's mailbox; the message's idempotency key is the mailbox's,
        so a retried or replayed call adds it once."""
        if envelope.key is None:
            raise PermanentError("a push message needs key=<recipient>")
        try:
            self.send(
                envelope.key,
                envelope.payload,
                idempotency_key=envelope.idempotency_key,
                headers=envelope.headers,
            )
        except InvalidMessage as error:
            raise PermanentError(f"cannot push: {error}") from error
        except MailboxFull as error:
            raise TransientError(str(error)) from error
        except Overloaded as error:
            raise TransientError(str(error), retry_after=error.retry_after) from error

    def _attempts(self, txn: Txn, recipient: str, seq: int) -> int:
        for mail in self.mailboxes.after(txn, recipient, seq - 1, limit=1):
            status = self.mailboxes.status(txn, mail.msg_id)
            if mail.seq == seq and status is not None:
                return status.attempts
        return 0

    def _connections(self) -> int:
        return 0 if self._presence is None else self._presence.count()

    def _pending(self) -> int:
        with self._store.read() as txn:
            return self.mailboxes.pending_total(txn)

    def _wake(self, recipient: str) -> None:
        if self._presence is not None:
            self._presence.wake(recipient)

    # -- the write -------------------------------------------------------------------------

    def _submit(
        self,
        recipient: object,
        payload: object,
        idempotency_key: object,
        headers: object,
        ttl: object,
    ) -> Future[Appended]:
        try:
            name = check_name("recipient", recipient)
        except ValueError as error:
            raise InvalidMessage(str(error)) from None
        data = check_payload(payload, MAX_PUSH_PAYLOAD)
        key = check_text("idempotency_key", idempotency_key, optional=True)
        fields = dict(check_headers(headers))
        retention = self.config.retention
        if ttl is not None and (
            isinstance(ttl, bool)
            or not isinstance(ttl, int | float)
            or not (math.isfinite(ttl) and 0 < ttl <= retention)
        ):
            raise InvalidMessage(
                f"ttl must be seconds > 0 and <= retention ({retention}), got {ttl!r}"
            )
        life = retention if ttl is None else float(ttl)
        msg_id = new_id(self._clock())
        clock, mailboxes, config, rate = self._clock, self.mailboxes, self.config, self._rate

        def append(txn: Txn) -> Appended:
            now = clock()  # in the write: the rate and the expiry are the commit's
            return mailboxes.append(
                txn,
                name,
                data,
                fields,
                msg_id=msg_id,
                idempotency_key=key,
                now=now,
                expires_at=now + life,
                max_pending=config.max_pending,
                rate=rate,
            )

        return self._store.write(append)

    def _receipt(self, appended: Appended) -> PushReceipt:
        if not appended.duplicate:
            return PushReceipt(appended.msg_id, appended.seq, "queued", False)
        status = self.status(appended.msg_id)
        state = "queued" if status is None else status.state
        return PushReceipt(appended.msg_id, appended.seq, state, True)


_REASONS = {
    "poison": "sent max_deliveries times to a device without an ack (poison)",
    "expired": "no device acked it within its retention (expired)",
}


def _dead_letter(mail: Mail, reason: Failure, attempts: int, now: float) -> DeadLetter:
    """A failed push message as a dead letter of transport `push`, keyed by its
    recipient: replaying it sends it to that mailbox again."""
    return DeadLetter(
        id=new_id(now),
        message_id=mail.msg_id,
        key=mail.recipient,
        transport="push",
        payload=mail.payload,
        headers=dict(mail.headers),
        # the key it was sent with: a replay is then the one message that key names
        idempotency_key=mail.idempotency_key or mail.msg_id,
        priority=Priority.NORMAL,
        trace_id=None,
        reason_class="expired" if reason == "expired" else "permanent",
        reason=f"push to {mail.recipient!r}: {_REASONS[reason]}",
        error_type=None,
        attempts=attempts,
        first_attempt_at=mail.created_at,
        failed_at=now,
    )


def _log_failure(future: Future[None]) -> None:
    if future.exception() is not None:
        logger.warning("push: could not record frames sent: %s", future.exception())
