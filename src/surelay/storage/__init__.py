"""Persistence on LMDB with msgpack records: outbox, dead letters, dedup records, replay
requests, and a quarantine for records that fail to decode.

```python
from surelay.storage import Store

with Store.open("./data") as store:
    future = store.enqueue([(envelope, partition)])   # durable once future.result() returns
    with store.read() as txn:
        pending = store.outbox.scan(txn)
```
"""

from surelay.errors import RetryTransaction, SchemaMismatch, StorageError, StorageFull
from surelay.storage.codec import DecodeError
from surelay.storage.environment import SCHEMA_VERSION
from surelay.storage.keys import new_id
from surelay.storage.records import (
    DEAD_LETTER_STATUSES,
    REASON_CLASSES,
    DeadLetter,
    DedupRecord,
    OutboxEntry,
    QuarantinedRecord,
    ReplayRequest,
)
from surelay.storage.store import Store, StoreStats

__all__ = [
    "DEAD_LETTER_STATUSES",
    "REASON_CLASSES",
    "SCHEMA_VERSION",
    "DeadLetter",
    "DecodeError",
    "DedupRecord",
    "OutboxEntry",
    "QuarantinedRecord",
    "ReplayRequest",
    "RetryTransaction",
    "SchemaMismatch",
    "StorageError",
    "StorageFull",
    "Store",
    "StoreStats",
    "new_id",
]
