"""The relay: committed rows of a `SqlOutbox` table into a runtime's senders, and each
row deleted once its message has ended.

One thread per relayed table runs the loop; on PostgreSQL a second one waits for the
table's NOTIFY. The loop, each turn:

1. every `beat` seconds: says this relay is alive (a row in `<table>_relays`), renews
   its leases, gives back the partitions `share` now gives to others (once none of
   their rows is still under way here, so a key never has rows in two relays at once),
   and claims those `share` gives it that are free or expired;
2. deletes the rows whose messages ended (delivered, duplicate or dead-lettered: the
   outcome is durable in the runtime's store before the receipt completes);
3. takes more rows of its partitions in id order, as many as its window and the
   runtime's pressure allow, and hands them to the senders of their keys' partitions;
4. paces itself: while rows come it reads every `BRISK_POLL` seconds; after
   `IDLE_AFTER` without one it waits (on PostgreSQL it says so in `<table>_idle`, and
   senders' commits NOTIFY only while some relay waits), reading anyway every
   `poll_interval`.

Relayed messages are not written to the runtime's outbox: the row is their durable
copy until it is deleted. So a relay that dies (its process, its machine, its disk)
loses nothing: after `lease` seconds another relay holds its partitions and relays the
rows again (at least once; the receiver sees the same idempotency key, and a runtime
that had already recorded the delivery ends it as a duplicate without a call).

A row checked here and found unusable (a transport this runtime does not have, a
payload over its `max_payload_bytes`, headers that are not valid) is dead-lettered
`invalid` in the runtime's store, then deleted: it can be listed and replayed.

A database that fails (down, unreachable, restarting) is retried with back-off; the
relay never crashes the runtime, and says what failed in `health()["relays"]`.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surelay.actors.dead_letter import Capture
from surelay.actors.window import deliver
from surelay.envelope import Priority
from surelay.ingress.admission import room
from surelay.sql.database import Database, connect, listen
from surelay.sql.leases import share
from surelay.sql.taking import bucket_of, entry_of, fitting
from surelay.storage.records import OutboxEntry

if TYPE_CHECKING:
    from surelay.ingress.endpoint import IngressEndpoint
    from surelay.sql.outbox import SqlOutbox

__all__ = ["Relay", "RelaySettings"]

logger = logging.getLogger("surelay.relay")

BACKLOG_EVERY = 2.0
"""Seconds between two counts of the rows waiting in the table (for `health()`)."""

BACKOFF_MAX = 5.0

LOOK_BACK = 0.25
"""Seconds of the cursor's way a look-back covers, for rows committed late."""

BRISK_POLL = 0.005
"""Seconds between two reads while rows keep coming: senders do not NOTIFY then."""

BRISK_LOOK_BACK = 0.02
"""Seconds between two look-backs while rows keep coming."""

IDLE_AFTER = 0.2
"""Seconds without a new row after which a relay stops reading and waits: for a NOTIFY
(PostgreSQL; senders notify while a relay waits) or its next poll."""

IDLE_GRACE = 0.25
"""Seconds after a relay began to wait until it reads once more: a transaction whose
INSERT did not see it wait (READ COMMITTED: inserted before; REPEATABLE READ: began
before), and that committed after its last read, sent no NOTIFY."""

WINDOW_BYTES = 32 << 20
"""Most payload bytes of one relay's rows in the runtime at once (besides its rows)."""

WINDOW_ROWS = 4096
"""Fewest rows a relay may have in the runtime at once (more with a large `batch`):
rows end in groups, one commit of the runtime's store each, so a short window would
leave the transports idle between groups."""


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """`rt.relay`'s arguments, checked."""

    batch: int
    poll_interval: float
    lease: float

    def __post_init__(self) -> None:
        if isinstance(self.batch, bool) or not isinstance(self.batch, int):
            raise TypeError(f"batch must be an int, got {self.batch!r}")
        if not 1 <= self.batch <= 10_000:
            raise ValueError(f"batch must be in 1..10000, got {self.batch}")
        for name in ("poll_interval", "lease"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number of seconds, got {value!r}")
            if not 0.01 <= value <= 3600:
                raise ValueError(f"{name} must be within 0.01..3600 seconds, got {value!r}")
        if self.lease < 1.0:
            raise ValueError(f"lease must be at least 1 second, got {self.lease!r}")

    @property
    def window(self) -> int:
        """Most rows of this relay in the runtime at once (taken, not yet ended); never
        more than half the runtime's `PressurePolicy.capacity` (see `Relay._room`)."""
        return max(WINDOW_ROWS, 4 * self.batch)

    @property
    def beat(self) -> float:
        """Seconds between heartbeats: a dead relay's partitions are taken over within
        `lease` plus one beat."""
        return min(1.0, self.lease / 4)


def relay_id() -> str:
    """This relay's name among the relays of a table: host, process, and a nonce (a
    restarted process is a new relay)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Relay:
    """Relays one `SqlOutbox` into a runtime through its way in (see the module
    docstring)."""

    def __init__(
        self,
        endpoint: IngressEndpoint,
        outbox: SqlOutbox,
        settings: RelaySettings,
    ) -> None:
        self._at = endpoint
        self._outbox = outbox
        self._settings = settings
        self.name = relay_id()
        self._db: Database | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._paused = False
        self._taken: dict[int, tuple[int, int]] = {}
        """Row id -> (partition, payload bytes), for rows in the runtime whose message
        has not ended."""
        self._bytes = 0
        self._renewed_at = float("-inf")
        self._ended: list[int] = []
        """Row ids whose message ended, to delete (guarded by `_lock`)."""
        self._rows: dict[str, int] = {}
        """Message id -> row id, for the messages in the runtime (guarded by `_lock`)."""
        self._unlisten: Callable[[], None] | None = None
        self._held: set[int] = set()
        self._wanted: frozenset[int] = frozenset()
        self._poll_at = 0.0
        self._commits = False
        """A NOTIFY came since the last turn (set by the listener thread)."""
        self._brisk = False
        """Rows came within `IDLE_AFTER`: read every `BRISK_POLL`, without NOTIFY."""
        self._idle: bool | None = None
        """Whether the database says this relay waits for NOTIFY (None: not known)."""
        self._seen_at = float("-inf")
        self._look_at = 0.0
        self._gap_at = float("-inf")
        """When a read last skipped an id: a row not committed yet, or not this relay's."""
        self._cursor = 0
        self._passed: collections.deque[tuple[float, int]] = collections.deque()
        """(when, cursor) each time the cursor moved, for the look-back."""
        self._reading: frozenset[int] = frozenset()
        """The partitions the last read covered (one newly read resets the cursor)."""
        self._beat_at = 0.0
        self._backlog_at = 0.0
        self._waiting: int | None = None
        self._oldest: float | None = None
        self._error: str | None = None
        self._disagreeing: str | None = None
        self._error_at: float | None = None
        self._relayed = 0
        self._deleted = 0
        self._thread = threading.Thread(
            target=self._run, name=f"surelay-relay-{outbox.table}", daemon=True
        )
        self._listener: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------

    def _connect(self) -> Database:
        return connect(self._outbox.dialect, self._outbox.target, self._settings.lease)

    def start(self) -> None:
        self._unlisten = self._at.tracker.listen(self._ends)
        self._thread.start()
        if self._outbox.kind == "postgresql":
            self._listener = threading.Thread(
                target=self._listen, name=f"surelay-relay-{self._outbox.table}-listen", daemon=True
            )
            self._listener.start()

    def pause(self) -> None:
        """Take no more rows (the runtime is closing); deleting goes on."""
        self._paused = True
        self._wake.set()

    def stop(self, timeout: float) -> None:
        """Delete what has ended, give the leases back, disconnect (bounded)."""
        self._paused = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._listener is not None:
            self._listener.join(min(timeout, 1.0))

    # -- what health() shows ---------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        now = time.time()
        oldest = self._oldest
        return {
            "ok": self._error is None and self._disagreeing is None,
            "relay": self.name,
            "table": self._outbox.table,
            "database": self._outbox.kind,
            "partitions": sorted(self._held),
            "in_flight": len(self._taken),
            "waiting": self._waiting,
            "oldest_age": None if oldest is None else max(0.0, now - oldest),
            "relayed": self._relayed,
            "deleted": self._deleted,
            "last_error": self._error or self._disagreeing,
            "last_error_at": self._error_at,
        }

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                if self._db is None:
                    self._db = self._connect()
                    self._held = set()  # claimed again (and, on PostgreSQL, locked again)
                    self._beat_at = 0.0
                    self._idle = None
                self._turn(self._db)
                if self._error is not None:
                    logger.warning("relay of %s: the database is back", self._outbox.table)
                    self._error = None
                backoff = 0.1
            except Exception as error:
                self._failed(error)
                if self._stop.is_set():
                    break
                self._stop.wait(backoff * (0.5 + random.random() / 2))
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            if self._stop.is_set():
                break
            self._wake.wait(self._sleep())
            self._wake.clear()
        self._leave()

    def _failed(self, error: Exception) -> None:
        text = f"{type(error).__name__}: {str(error).strip()[:300]}"
        if self._error is None:
            logger.warning(
                "relay of %s: %s; retrying with back-off (nothing is lost: the rows stay "
                "in the table)",
                self._outbox.table,
                text,
            )
        self._error = text
        self._error_at = time.time()
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except Exception:
                logger.debug("closing a failed relay connection", exc_info=True)

    def _sleep(self) -> float:
        now = time.monotonic()
        until = min(self._beat_at, self._poll_at)
        if self._brisk:
            until = min(until, now + BRISK_POLL)
        return max(0.0, until - now, 0.001)

    def _turn(self, db: Database) -> None:
        now = time.monotonic()
        self._delete(db)  # first: after an outage, what ended goes before any claim
        if now >= self._beat_at:
            self._beat(db)
            self._beat_at = now + self._settings.beat
            self._sweep()
        if self._stop.is_set() or self._paused or not self._leased():
            self._brisk = False
            return
        if now >= self._backlog_at:
            self._waiting, self._oldest = db.backlog()
            self._backlog_at = now + BACKLOG_EVERY
        everything = now >= self._poll_at  # (a NOTIFY wakes it sooner)
        commits, self._commits = self._commits, False
        if everything:
            self._poll_at = now + self._settings.poll_interval
        if self._brisk and now >= self._look_at and now - self._gap_at < LOOK_BACK:
            # no NOTIFY says a late commit came: look back now and then, over ids that
            # a read skipped (rows read without a gap leave nothing to come below them)
            commits = True
            self._look_at = now + BRISK_LOOK_BACK
        if self._take(db, everything=everything, commits=commits):
            self._seen_at = now
        self._pace(db, now)

    def _pace(self, db: Database, now: float) -> None:
        """Read briskly while rows come; after `IDLE_AFTER` without any, wait for a
        NOTIFY, which senders send only while a relay waits (see `Dialect.ddl`)."""
        self._brisk = now - self._seen_at < IDLE_AFTER
        if self._brisk and self._idle is not False:
            db.idle(self.name, False)
            self._idle = False
        elif not self._brisk and self._idle is not True:
            db.idle(self.name, True)
            self._idle = True
            # a sender that looked before this was said, and commits after the last
            # read, sends no NOTIFY: read once more when such a commit is surely in
            self._poll_at = min(self._poll_at, now + IDLE_GRACE)

    def _leased(self) -> bool:
        """Whether the leases are surely still this relay's: renewed less than 0.8 of
        `lease` ago (measured from before the renewal was sent). A relay cut off from
        the database longer than that takes no more rows: others may hold its
        partitions by now."""
        return time.monotonic() - self._renewed_at < 0.8 * self._settings.lease

    def _sweep(self) -> None:
        """Rows whose message the runtime no longer tracks without having ended it (its
        outcome could not be recorded): taken again by a later read, not stuck."""
        pending = self._at.tracker.is_pending
        with self._lock:
            gone = [m for m in self._rows if not pending(m)]
            if not gone:
                return
            for message_id in gone:
                row_id = self._rows.pop(message_id)
                self._forget(row_id)
        self._passed.clear()  # its row lies below the cursor: the next look-back is whole

    def _forget(self, row_id: int) -> None:
        taken = self._taken.pop(row_id, None)
        if taken is not None:
            self._bytes -= taken[1]

    def _beat(self, db: Database) -> None:
        me = self.name
        lease = self._settings.lease
        asked = time.monotonic()
        now = db.now()
        partitions = self._outbox.partitions
        relays = db.heartbeat(me, lease, now, partitions)
        others = {n: p for n, p in relays.items() if p != partitions}
        if others:  # a key would map to different partitions in different relays
            self._disagree(others)
            wanted: frozenset[int] = frozenset()
        else:
            self._disagreeing = None
            wanted = share(list(relays), partitions, me)
        self._wanted = wanted
        if self._idle:  # (said again: another relay's heartbeat may have cleared it)
            db.idle(me, True)
        held = db.renew(me, self._held, lease, now)
        self._renewed_at = asked
        lost = self._held - held
        if lost:
            logger.warning(
                "relay of %s: lost partitions %s to another relay", self._outbox.table, sorted(lost)
            )
        busy = {part for part, _ in self._taken.values()}
        for part in sorted(held - wanted):
            if part not in busy:  # rows still under way here: given back once ended
                db.release(me, part)
                held.discard(part)
        claim = sorted(wanted - held) if not self._paused else []
        gained = db.claim(me, claim, lease, now) if claim else set()
        self._held = held | gained

    def _disagree(self, others: dict[str, int]) -> None:
        """Other live relays of the table use another number of partitions: hold off
        (give back what is not busy) and say so, until they agree."""
        text = (
            f"relays of table {self._outbox.table} disagree on partitions: this one has "
            f"{self._outbox.partitions}, "
            + ", ".join(f"{name} has {n}" for name, n in sorted(others.items())[:5])
            + "; give every relay of a table the same SqlOutbox(partitions=...)"
        )
        if self._disagreeing != text:
            logger.error("%s; relaying nothing until they agree", text)
        self._disagreeing = text

    def _delete(self, db: Database) -> None:
        with self._lock:
            ended, self._ended = self._ended, []
        if not ended:
            return
        try:
            db.delete(ended)
        except BaseException:
            with self._lock:
                self._ended = ended + self._ended
            raise
        for row_id in ended:
            self._forget(row_id)
        self._deleted += len(ended)

    def _room(self) -> int:
        window = min(self._settings.window, self._at.config.pressure.capacity // 2)
        if self._bytes >= WINDOW_BYTES:
            return 0
        return room(self._at.gate, Priority.NORMAL, window - len(self._taken))

    def _take(self, db: Database, *, everything: bool, commits: bool) -> bool:
        """Take rows of the partitions it reads, in id order, as room allows; whether it
        found any new (or had no room: rows are coming faster than they end).

        New rows come from above a cursor. A transaction that commits after others with
        greater ids leaves its row below the cursor: a turn after `commits` (a NOTIFY)
        looks back over the ids the cursor passed in the last `LOOK_BACK` seconds, and
        `everything` (once per `poll_interval`) over all of them; a look-back reads ids
        only, then the rows not taken yet (what is under way here is not read again)."""
        reading = frozenset(self._held - self._giving_back())
        if not reading <= self._reading:
            self._cursor = 0  # a partition (back) in the read: its rows may lie anywhere
            self._passed.clear()
        self._reading = reading
        if not reading:
            return False
        parts = sorted(reading)
        partitions = self._outbox.partitions
        now = time.monotonic()
        found = False
        low = 0 if everything else self._lagging(now) if commits else self._cursor
        if low < self._cursor:
            limit = len(self._taken) + self._settings.batch
            ids = db.ids(parts, partitions, low, self._cursor, limit)
            late = [i for i in ids if i not in self._taken][: max(0, self._room())]
            if late:
                self._hand_in(fitting(db.rows(late), WINDOW_BYTES - self._bytes))
                found = True
        while not self._stop.is_set() and not self._paused:
            room = self._room()
            if room <= 0:
                return True
            limit = min(self._settings.batch, room)
            rows = db.take(parts, partitions, self._cursor, limit)
            fresh = [r for r in rows if r[0] not in self._taken]  # (after a reset)
            fits = fitting(fresh, WINDOW_BYTES - self._bytes)
            if fits:
                self._hand_in(fits)
                found = True
            if rows:
                if rows[-1][0] - self._cursor != len(rows):
                    self._gap_at = now
                self._cursor = fits[-1][0] if len(fits) < len(fresh) else rows[-1][0]
                self._passed.append((now, self._cursor))
            if len(fits) < len(fresh) or len(rows) < limit:
                return found or len(fits) < len(fresh)  # (the rest waits for room)
        return found

    def _lagging(self, now: float) -> int:
        """Where the cursor was `LOOK_BACK` seconds ago (0 if it has not moved since
        then, or since it was reset)."""
        passed = self._passed
        cutoff = now - LOOK_BACK
        while len(passed) > 1 and passed[1][0] <= cutoff:
            passed.popleft()  # (the newest sample at or before the cutoff stays first)
        return passed[0][1] if passed and passed[0][0] <= cutoff else 0

    def _giving_back(self) -> set[int]:
        """Held partitions that `share` gives to another relay: no new rows of them."""
        return self._held - self._wanted

    def _hand_in(self, rows: list[tuple[Any, ...]]) -> None:
        """Rows into the runtime: each checked alone (anything may be in a table), a
        usable one to the sender of its key's partition, an unusable one to the dead
        letters as `invalid`; either way it is deleted once that outcome is durable."""
        at = self._at
        now = at.config.clock()
        entries: list[OutboxEntry] = []
        invalid: list[tuple[OutboxEntry, str]] = []
        taken: dict[int, tuple[int, int]] = {}
        row_of: dict[str, int] = {}
        for row in rows:
            row_id = row[0]
            entry, problem = entry_of(row, at.transports, at.config, now)
            message_id = entry.envelope.message_id
            if message_id in row_of or message_id in self._rows:
                continue  # the same id twice: this row waits until the other has ended
            row_of[message_id] = row_id
            taken[row_id] = (
                bucket_of(row[2]) % self._outbox.partitions,
                len(entry.envelope.payload),
            )
            if problem is None:
                entries.append(entry)
            else:
                invalid.append((entry, problem))
        with self._lock:
            self._rows.update(row_of)
        self._taken.update(taken)
        self._bytes += sum(size for _, size in taken.values())
        at.tracker.add(row_of, receipts=False)
        if entries:
            at.counters.add_each("relayed", [e.envelope.transport for e in entries])
            self._relayed += len(entries)
            deliver(at.peers.senders, entries)
        for entry, problem in invalid:
            logger.warning(
                "relay of %s: row for message %r dead-lettered as invalid: %s",
                self._outbox.table,
                entry.envelope.message_id,
                problem,
            )
            reason = f"refused before delivery: {problem}"
            at.peers.dead_letters.tell(
                Capture(entry, "invalid", reason, "InvalidMessage", 0, now, now)
            )

    def _ends(self, message_ids: list[str]) -> None:
        """Messages ended (their outcome durable): their rows are to be deleted. On the
        thread that ended them; every message of the runtime passes here."""
        rows = self._rows
        if not rows:
            return
        with self._lock:
            mine = [rows.pop(m) for m in message_ids if m in rows]
            self._ended += mine
        if mine:
            self._wake.set()

    def _notified(self) -> None:
        """A transaction committed rows (NOTIFY): perhaps below the cursor, if it began
        before others that committed first."""
        self._commits = True
        self._wake.set()

    def _listen(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                listen(self._outbox.dialect, self._outbox.target, self._notified, self._stop)
                backoff = 0.1
            except Exception:
                logger.debug("relay listener of %s failed", self._outbox.table, exc_info=True)
                self._stop.wait(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)

    def _leave(self) -> None:
        """At stop: delete what has ended, give the leases back (others take them at
        once, not after `lease`), disconnect."""
        db = self._db
        try:
            if db is None:
                db = self._db = self._connect()
            self._delete(db)
            db.leave(self.name, self._held)
        except Exception as error:
            logger.warning(
                "relay of %s: could not give its leases back (%s); others take them over "
                "after %.3gs",
                self._outbox.table,
                error,
                self._settings.lease,
            )
        finally:
            self._held = set()
            if self._unlisten is not None:
                self._unlisten()
            if db is not None:
                try:
                    db.close()
                except Exception:
                    logger.debug("closing the relay connection", exc_info=True)
            self._db = None


class Relays:
    """The relays of one runtime, one per table (what `rt.relay` starts)."""

    def __init__(self, endpoint: IngressEndpoint) -> None:
        self._at = endpoint
        self._relays: dict[tuple[str, str], Relay] = {}
        self._lock = threading.Lock()

    def add(self, outbox: SqlOutbox, settings: RelaySettings) -> Relay:
        """Start relaying `outbox` (`ValueError` if this runtime relays it already)."""
        where = (outbox.target, outbox.table)
        with self._lock:
            if where in self._relays:
                raise ValueError(f"this runtime relays {outbox!r} already")
            relay = self._relays[where] = Relay(self._at, outbox, settings)
        relay.start()
        return relay

    def any(self) -> bool:
        with self._lock:
            return bool(self._relays)

    def pause(self) -> None:
        for relay in self._all():
            relay.pause()

    def stop(self, deadline: float) -> None:
        for relay in self._all():
            relay.stop(max(0.2, deadline - time.monotonic()))

    def health(self) -> dict[str, dict[str, Any]]:
        return {relay.name: relay.health() for relay in self._all()}

    def _all(self) -> list[Relay]:
        with self._lock:
            return list(self._relays.values())
