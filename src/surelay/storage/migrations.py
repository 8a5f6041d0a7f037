"""Upgrades of a data directory's layout, one schema version at a time.

`MIGRATIONS[n]` upgrades a schema-n directory to n + 1 inside the one write transaction
that opening the directory runs, so a directory is either wholly upgraded or untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import lmdb

from surelay.storage.codec import DecodeError, decode, encode
from surelay.storage.keys import micros, text_key, u16, u64
from surelay.storage.records import OutboxEntry, QuarantinedRecord

__all__ = ["MIGRATIONS"]

logger = logging.getLogger("surelay.storage")

Migration = Callable[[Any, Any, dict[str, Any]], None]
"""(LMDB environment, write transaction, the current schema's tables by name)."""


def _outbox_by_partition(env: Any, txn: Any, dbs: dict[str, Any]) -> None:
    """Schema 1 → 2. Schema 1 kept outbox records by sequence number, with an index entry
    by due time and one by partition for every message. Schema 2 keeps them by
    (partition, sequence), which is the partition index, and indexes by due time only the
    retried ones. Records that do not decode go to quarantine, as a scan would send them."""
    outbox, ids, due = dbs["outbox"], dbs["outbox_id"], dbs["outbox_due"]
    # Only the keys are held in memory (8 bytes each); each record is moved on its own.
    old = [bytes(k) for k in txn.cursor(db=outbox).iternext(keys=True, values=False)]
    for index in (ids, due):
        txn.drop(index, delete=False)  # both are rebuilt below
    moved = quarantined = 0
    for key in old:
        raw = bytes(txn.get(key, db=outbox))
        txn.delete(key, db=outbox)
        try:
            entry = decode(OutboxEntry, raw)
        except DecodeError as error:
            record = QuarantinedRecord("outbox", key, raw, str(error), time.time())
            txn.put(b"outbox\x00" + key, encode(record), db=dbs["quarantine"])
            quarantined += 1
            continue
        where = u16(entry.partition) + u64(entry.seq)  # schema 2's location
        txn.put(where, raw, db=outbox)
        txn.put(text_key(entry.envelope.message_id), where, db=ids)
        if entry.envelope.attempt > 1:
            txn.put(micros(entry.due_at) + where, b"", db=due)
        moved += 1
    try:
        partition_index = env.open_db(b"outbox_part", txn=txn, create=False)
    except lmdb.NotFoundError:
        pass
    else:
        txn.drop(partition_index, delete=True)
    logger.info("outbox re-keyed by partition: %d moved, %d quarantined", moved, quarantined)


def _outbox_by_slot(env: Any, txn: Any, dbs: dict[str, Any]) -> None:
    """Schema 2 → 3. Schema 3 puts the slot of the runtime holding an entry before its
    partition (`surelay.storage.slots`); a directory of the single-owner layout becomes
    slot 0, whose lock file (`owner.lock`) it already has."""
    outbox, ids, due = dbs["outbox"], dbs["outbox_id"], dbs["outbox_due"]
    slot0 = u16(0)
    old = [bytes(k) for k in txn.cursor(db=outbox).iternext(keys=True, values=False)]
    for key in old:
        raw = bytes(txn.get(key, db=outbox))
        txn.delete(key, db=outbox)
        txn.put(slot0 + key, raw, db=outbox)
    index = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=ids)]
    txn.cursor(db=ids).putmulti([(k, slot0 + v) for k, v in index])
    retried = [bytes(k) for k in txn.cursor(db=due).iternext(keys=True, values=False)]
    txn.drop(due, delete=False)
    txn.cursor(db=due).putmulti([(k[:8] + slot0 + k[8:], b"") for k in retried])
    logger.info("outbox re-keyed by slot: %d entries are slot 0's", len(old))


def _scheduled_tables(_env: Any, _txn: Any, _dbs: dict[str, Any]) -> None:
    """Schema 3 → 4. Schema 4 adds the tables of scheduled messages and of how messages
    ended (created empty by the open): nothing to move, but an older surelay must not
    open a directory whose scheduled messages it would never send."""
    logger.info("tables for scheduled messages and message status added")


def _push_tables(_env: Any, _txn: Any, _dbs: dict[str, Any]) -> None:
    """Schema 4 → 5. Schema 5 adds the tables of push mailboxes (created empty by the
    open): nothing to move, but an older surelay must not open a directory whose
    mailboxes it would neither deliver nor expire."""
    logger.info("tables for push mailboxes added")


MIGRATIONS: dict[int, Migration] = {
    1: _outbox_by_partition,
    2: _outbox_by_slot,
    3: _scheduled_tables,
    4: _push_tables,
}
