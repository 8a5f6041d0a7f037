"""What the console reads from a data directory, as plain values for the templates."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from surelay.storage.dead_letters import matches
from surelay.storage.environment import keys_with_prefix
from surelay.storage.keys import index_prefix, time_prefix
from surelay.storage.records import DEAD_LETTER_STATUSES, REASON_CLASSES, DeadLetter
from surelay.storage.slots import holders
from surelay.storage.store import Store

__all__ = ["PAGE", "Filters", "by_transport", "overview", "page_of", "payload_views"]

PAGE = 100
"""Dead letters per page."""


@dataclass(frozen=True)
class Filters:
    """A dead-letter selection (every field optional; `status` None: any)."""

    status: str | None = "dead"
    reason_class: str | None = None
    key: str | None = None
    transport: str | None = None
    since: float | None = None
    until: float | None = None

    def query(self) -> dict[str, str]:
        """As query parameters (for links)."""
        out = {"status": self.status or "any"}
        for name in ("reason_class", "key", "transport"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                out[name] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(value))
        return out

    def selects_by_index(self) -> bool:
        return (self.since, self.until) == (None, None)


def page_of(
    store: Store, filters: Filters, after: str | None, limit: int = PAGE
) -> list[DeadLetter]:
    """One page of matching records, oldest first, after id `after`. Ids are ordered by
    failure time, so a time range is a range of ids: no scan beyond the page."""
    if filters.since is not None:
        floor = time_prefix(filters.since) + "0" * 16
        after = max(after or "", floor)
    ceiling = None if filters.until is None else time_prefix(filters.until) + "Z" * 16
    with store.read() as txn:
        records = store.dead_letters.list(
            txn,
            status=filters.status,
            reason_class=filters.reason_class,
            key=filters.key,
            transport=filters.transport,
            limit=limit,
            after=after or None,
        )
    if ceiling is not None:
        records = [r for r in records if r.id <= ceiling]
    return records


def by_transport(store: Store, status: str = "dead") -> dict[str, int]:
    """How many records in `status` each transport has (index keys only)."""
    db = store.env.db("dead_idx")
    status_prefix = index_prefix(b"s", status)
    counts: dict[str, int] = {}
    with store.read() as txn:
        in_status = {k[len(status_prefix) :] for k in keys_with_prefix(txn, db, status_prefix)}
        for entry in keys_with_prefix(txn, db, b"t"):
            length = int.from_bytes(entry[1:3], "big")
            if length == 0xFFFF:
                continue
            name, record_id = entry[3 : 3 + length], entry[3 + length :]
            if record_id in in_status:
                transport = name.decode("utf-8", "replace")
                counts[transport] = counts.get(transport, 0) + 1
    return counts


def overview(store: Store) -> dict[str, Any]:
    """The directory at a glance: what it holds, and each runtime's last status."""
    stats = store.stats()
    with store.read() as txn:
        by_reason = store.dead_letters.count_by_reason(txn)
        statuses = store.status.all(txn)
        requests = store.replay_requests.list(txn, limit=10_000)
    running = holders(store.path)
    runtimes = []
    for slot in sorted(set(running) | set(statuses)):
        status = statuses.get(slot) or {}
        runtimes.append(
            {
                "slot": slot,
                "running": slot in running,
                "pid": running.get(slot) or status.get("pid"),
                "status": status,
                "age": time.time() - status["at"] if "at" in status else None,
            }
        )
    return {
        "outbox_pending": stats.outbox_pending,
        "scheduled": stats.scheduled,
        "dead_letters": stats.dead_letters,
        "by_reason": {r: by_reason.get(r, 0) for r in REASON_CLASSES},
        "by_transport": by_transport(store),
        "map_used": stats.map_used,
        "map_size": stats.map_size,
        "runtimes": runtimes,
        "requests": [r for r in requests if r.status in ("pending", "running")],
        "statuses": DEAD_LETTER_STATUSES,
    }


MAX_JSON_DEPTH = 64
"""Nesting beyond which a JSON payload is shown as its raw text, not pretty-printed: a
deeply nested one would exhaust the parser's recursion (every view of it a 500), and its
indentation would grow with the square of its depth."""


def payload_views(payload: bytes) -> dict[str, str | None]:
    """The payload as text (if UTF-8), pretty JSON (if JSON nested at most
    `MAX_JSON_DEPTH` deep) and hex (first 4 KiB)."""
    try:
        text: str | None = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    pretty = None if text is None else _pretty_json(text)
    shown = payload[:4096]
    hexed = "\n".join(shown[i : i + 32].hex(" ") for i in range(0, len(shown), 32))
    if len(payload) > len(shown):
        hexed += f"\n... ({len(payload) - len(shown)} more bytes)"
    return {"text": text, "json": pretty, "hex": hexed}


def _pretty_json(text: str) -> str | None:
    """`text` pretty-printed if it is JSON nested at most `MAX_JSON_DEPTH` deep."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # the C parser refuses deep nesting with the latter
        return None
    if _depth(value) > MAX_JSON_DEPTH:
        return None
    return json.dumps(value, indent=2, sort_keys=True)


def _depth(value: Any) -> int:
    """How deep lists and objects nest in a parsed JSON value (without recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def replay_history(store: Store, record: DeadLetter) -> list[dict[str, Any]]:
    """The replay requests that named this record, or whose filters take it in, newest
    first."""
    with store.read() as txn:
        requests = store.replay_requests.list(txn, limit=10_000)
    out = []
    for request in reversed(requests):
        if request.ids is not None:
            if record.id not in request.ids:
                continue
            how = "by id"
        else:
            wanted = dict(request.filters)
            if not matches(record, wanted):
                continue
            how = "by filter " + (", ".join(f"{k}={v}" for k, v in wanted.items()) or "(all)")
        out.append({"request": request, "how": how})
    return out


def headers_of(record: DeadLetter) -> Mapping[str, str]:
    return dict(sorted(record.headers.items()))
