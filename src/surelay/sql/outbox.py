"""`SqlOutbox`: the outbox as a table in the host's own database.

A message sent with `outbox.send(conn, ...)` is one row, inserted on the host's
connection inside the host's transaction: it exists exactly when the host's data does.
A runtime relays the committed rows (`rt.relay(outbox)`, see `surelay.sql.relay`).
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import ProxyTracerProvider

from surelay.envelope import Priority, check_timing
from surelay.errors import InvalidMessage
from surelay.sql.dialect import Dialect, Kind, parse_url
from surelay.sql.host import async_runner, runner
from surelay.sql.rows import SEND_ARGS, Row, check_send, make_row
from surelay.storage.keys import new_id
from surelay.telemetry import (
    NAME,
    SPAN_SEND,
    TRACEPARENT,
    message_span,
    record_error,
    traceparent_of,
)

__all__ = ["SqlOutbox"]

MAX_BATCH = 1000
"""Most messages one `send_batch` inserts (one statement)."""


class SqlOutbox:
    """The outbox table `table` in the database at `url` (`postgresql://...` or
    `sqlite:///path.db`), split into `partitions` by key for the relays to share.

    Every process that sends or relays must use the same `table`. `partitions` matters
    to relays only (rows carry their key's hash, not a partition): relays of one table
    must agree on it, and a relay that sees another with a different number holds off
    and says so in `health()` rather than break the order of a key.
    `max_payload_bytes` bounds a payload at send time as `RuntimeConfig` does (the
    relaying runtime checks its own bound again).
    """

    def __init__(
        self,
        url: str,
        *,
        table: str = "surelay_outbox",
        partitions: int = 64,
        max_payload_bytes: int = 1_048_576,
    ) -> None:
        self._kind, self._target = parse_url(url)
        self._dialect = Dialect(self._kind, table)
        if isinstance(partitions, bool) or not isinstance(partitions, int):
            raise TypeError(f"partitions must be an int, got {partitions!r}")
        if not 1 <= partitions <= 4096:
            raise ValueError(f"partitions must be in 1..4096, got {partitions}")
        if isinstance(max_payload_bytes, bool) or not isinstance(max_payload_bytes, int):
            raise TypeError(f"max_payload_bytes must be an int, got {max_payload_bytes!r}")
        if max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes must be positive, got {max_payload_bytes}")
        self.url = url
        self.table = table
        self.partitions = partitions
        self.max_payload_bytes = max_payload_bytes
        self._spread = itertools.count()
        self._statements = {1: self._dialect.insert(1)}

    def __repr__(self) -> str:
        return f"SqlOutbox({self._kind}, table={self.table!r}, partitions={self.partitions})"

    @property
    def kind(self) -> Kind:
        """`"postgresql"` or `"sqlite"`."""
        return self._kind

    @property
    def dialect(self) -> Dialect:
        return self._dialect

    @property
    def target(self) -> str:
        """What the relay's driver connects to: a libpq URL, or the SQLite file."""
        return self._target

    # -- the schema ----------------------------------------------------------------------

    def ddl(self) -> str:
        """The statements that create the table and the relays' lease
        tables (and, on PostgreSQL, the trigger that wakes relays at commit), each
        idempotent: paste it into a migration."""
        return self._dialect.ddl()

    def create_table(self) -> None:
        """Run `ddl()` on a connection of its own (idempotent; safe to race: on
        PostgreSQL it holds a transaction-scoped advisory lock while it runs)."""
        if self._kind == "sqlite":
            with sqlite3.connect(self._target, timeout=30.0) as lite:
                lite.executescript(self.ddl())
                have = {row[1] for row in lite.execute(f"PRAGMA table_info({self.table})")}
                for column, kind in (("not_before", "REAL"), ("msg_type", "TEXT")):
                    if column not in have:  # a table made by an older surelay
                        lite.execute(f"ALTER TABLE {self.table} ADD COLUMN {column} {kind}")
            return
        import psycopg  # noqa: PLC0415  # surelay[postgres]

        with psycopg.connect(self._target) as pg, pg.transaction():
            pg.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            pg.execute(self.ddl().encode())  # several statements: one simple query

    # -- sending -------------------------------------------------------------------------

    def send(
        self,
        conn: Any,
        transport: str,
        payload: bytes,
        *,
        key: str | None = None,
        idempotency_key: str | None = None,
        priority: Priority = Priority.NORMAL,
        headers: Mapping[str, str] | None = None,
        delay: float | None = None,
        not_before: float | datetime | None = None,
        type: str | None = None,  # (shadows the builtin: the contract names it)
    ) -> str:
        """Insert one message on the host's connection `conn`, inside the host's open
        transaction, and return its message id. Nothing else: it never commits and
        never opens a connection, so the message is relayed only if that transaction
        commits. Raises `InvalidMessage` as `rt.send` does, `TypeError` for a
        connection it does not know, `RuntimeError` for one in autocommit mode outside a
        transaction; the driver's own errors pass through (the host's transaction is
        then as the driver left it). `delay` / `not_before` and `type` are `rt.send`'s:
        the relay hands such a row in at once, and its sender holds it (in memory, in
        the relay's window) until its time, its key's later rows behind it."""
        run = runner(conn, self._kind)
        args = (
            transport,
            payload,
            key,
            idempotency_key,
            priority,
            headers,
            delay,
            not_before,
            type,
        )
        if not _tracing():  # the common case, kept lean: it runs inside the host's lock
            row = self._row(*args)
            run(self._statement(1), row)
            return row.message_id
        rows, spans = self._rows([args])
        with _ending(spans):
            run(self._statement(1), rows[0])
        return rows[0].message_id

    def send_batch(self, conn: Any, messages: Sequence[Mapping[str, Any]]) -> list[str]:
        """Insert several messages in one statement, all or none: each mapping holds
        `send`'s arguments by name (`transport`, `payload`, ...). Every message is
        checked first; `InvalidMessage` names the index of the first bad one. At most
        1000 messages. Returns their message ids, in order."""
        run = runner(conn, self._kind)
        rows, spans = self._rows(_batch(messages))
        if rows:
            with _ending(spans):
                run(self._statement(len(rows)), _values(rows))
        return [r.message_id for r in rows]

    async def asend(
        self,
        conn: Any,
        transport: str,
        payload: bytes,
        *,
        key: str | None = None,
        idempotency_key: str | None = None,
        priority: Priority = Priority.NORMAL,
        headers: Mapping[str, str] | None = None,
        delay: float | None = None,
        not_before: float | datetime | None = None,
        type: str | None = None,  # (shadows the builtin: the contract names it)
    ) -> str:
        """`send` on an asyncio connection: a psycopg `AsyncConnection`, an asyncpg
        connection, or a SQLAlchemy `AsyncConnection` / `AsyncSession`."""
        run = async_runner(conn, self._kind)
        args = (
            transport,
            payload,
            key,
            idempotency_key,
            priority,
            headers,
            delay,
            not_before,
            type,
        )
        if not _tracing():
            row = self._row(*args)
            await run(self._statement(1), row)
            return row.message_id
        rows, spans = self._rows([args])
        with _ending(spans):
            await run(self._statement(1), rows[0])
        return rows[0].message_id

    async def asend_batch(self, conn: Any, messages: Sequence[Mapping[str, Any]]) -> list[str]:
        """`send_batch` on an asyncio connection."""
        run = async_runner(conn, self._kind)
        rows, spans = self._rows(_batch(messages))
        if rows:
            with _ending(spans):
                await run(self._statement(len(rows)), _values(rows))
        return [r.message_id for r in rows]

    def _statement(self, rows: int) -> str:
        statement = self._statements.get(rows)
        if statement is None:
            statement = self._dialect.insert(rows)
            if len(self._statements) < 64:
                self._statements[rows] = statement
        return statement

    def _row(  # noqa: PLR0917  # send()'s arguments
        self,
        transport: object,
        payload: object,
        key: object,
        idempotency_key: object,
        priority: object,
        headers: object,
        delay: object = None,
        not_before: object = None,
        type_: object = None,
    ) -> Row:
        """The row of one send, checked, without a span (tracing is off)."""
        checked = check_send(
            transport,
            payload,
            key,
            idempotency_key,
            priority,
            headers,
            max_payload_bytes=self.max_payload_bytes,
        )
        now = time.time()
        due, kind = (None, None)
        if delay is not None or not_before is not None or type_ is not None:
            due, kind = check_timing(delay, not_before, type_, now=now)
        return make_row(new_id(now), *checked, due, kind, spread=next(self._spread), now=now)

    def _rows(self, sends: Sequence[tuple[Any, ...]]) -> tuple[list[Row], list[Any] | None]:
        """Rows for checked sends; with tracing on, a `surelay.send` span each (child
        of the caller's span), whose `traceparent` the row carries."""
        checked = []
        timing = []
        now = time.time()
        for index, args in enumerate(sends):
            try:
                checked.append(check_send(*args[:6], max_payload_bytes=self.max_payload_bytes))
                timing.append(check_timing(*args[6:9], now=now))
            except InvalidMessage as error:
                raise (
                    InvalidMessage(f"messages[{index}]: {error}") if len(sends) > 1 else error
                ) from None
        ids = new_id.many(len(checked), now)
        tracing = _tracing()
        spans: list[Any] | None = [] if tracing else None
        rows = []
        tracer = trace.get_tracer(NAME) if tracing else None
        for message_id, (transport, data, key, idem, priority, headers), (due, kind) in zip(
            ids, checked, timing, strict=True
        ):
            given: Mapping[str, str] = headers
            if tracer is not None and spans is not None:
                span = message_span(
                    tracer, SPAN_SEND, message_id, transport, key, more={"db.system": self._kind}
                )
                spans.append(span)
                traceparent = traceparent_of(span)
                if traceparent is not None:
                    given = {**headers, TRACEPARENT: traceparent}
            rows.append(
                make_row(
                    message_id,
                    transport,
                    data,
                    key,
                    idem,
                    priority,
                    given,
                    due,
                    kind,
                    spread=next(self._spread),
                    now=now,
                )
            )
        return rows, spans


def _batch(messages: object) -> list[tuple[Any, ...]]:
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidMessage(
            f"messages must be a sequence of mappings, got {type(messages).__name__}"
        )
    if len(messages) > MAX_BATCH:
        raise InvalidMessage(f"batch of {len(messages)} messages is over {MAX_BATCH}")
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidMessage(
                f"messages[{index}]: expected a mapping of send() arguments, "
                f"got {type(message).__name__}"
            )
        unknown = set(message) - SEND_ARGS
        if unknown:
            raise InvalidMessage(
                f"messages[{index}]: unknown send() argument(s) {sorted(map(str, unknown))}"
            )
        for required in ("transport", "payload"):
            if required not in message:
                raise InvalidMessage(f"messages[{index}]: missing {required!r}")
        out.append(
            (
                message["transport"],
                message["payload"],
                message.get("key"),
                message.get("idempotency_key"),
                message.get("priority", Priority.NORMAL),
                message.get("headers"),
                message.get("delay"),
                message.get("not_before"),
                message.get("type"),
            )
        )
    return out


_TRACING = False
_LOOK_AGAIN = 1.0
"""Seconds a "no tracer provider yet" answer is trusted (asking costs microseconds that
each send would pay inside the host's transaction)."""
_looked_at = float("-inf")


def _tracing() -> bool:
    """Whether the host has installed a tracer provider (once it has, for good: a
    provider is set once per process; one set after sends began is seen within
    `_LOOK_AGAIN` seconds)."""
    global _TRACING, _looked_at
    if _TRACING:
        return True
    now = time.monotonic()
    if now - _looked_at >= _LOOK_AGAIN:
        _looked_at = now
        _TRACING = not isinstance(trace.get_tracer_provider(), ProxyTracerProvider)
    return _TRACING


def _values(rows: list[Row]) -> list[Any]:
    """The rows' values in the order of a multi-row INSERT's placeholders."""
    return [value for row in rows for value in row]


@contextlib.contextmanager
def _ending(spans: list[Any] | None) -> Iterator[None]:
    """End the send spans as the insert ends, with its error if it raised (then the
    error goes on to the host)."""
    try:
        yield
    except BaseException as error:
        for span in spans or ():
            record_error(span, error)
            span.end()
        raise
    for span in spans or ():
        span.end()
