"""`surelay stats`: what a data directory holds, and what its runtimes last published
(one per slot: the worker processes of a host each run one)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from surelay.cli.common import age, emit_json, json_option, open_store, out_console, path_option
from surelay.cli.escape import text
from surelay.storage.slots import holders

__all__ = ["stats"]


@click.command(help="Outbox, dead letters, storage, and each runtime's last status.")
@path_option
@json_option
def stats(path: Path, as_json: bool) -> None:
    with open_store(path) as store:
        store_stats = store.stats()
        with store.read() as txn:
            by_reason = store.dead_letters.count_by_reason(txn)
            requests = store.replay_requests.list(txn, limit=10_000)
            statuses = store.status.all(txn)
    running = holders(path)
    runtimes: list[dict[str, Any]] = [
        {
            "slot": slot,
            "running": slot in running,
            "pid": running.get(slot) or None,
            "last_status": statuses.get(slot),
        }
        for slot in sorted(set(running) | set(statuses))
    ]
    first = next((r for r in runtimes if r["running"]), None)
    data: dict[str, Any] = {
        "path": str(path),
        "runtime": {"running": first is not None, "pid": first["pid"] if first else None},
        "runtimes": runtimes,
        "outbox_pending": store_stats.outbox_pending,
        "scheduled": store_stats.scheduled,
        "dead_letters": store_stats.dead_letters,
        "dead_by_reason": by_reason,
        "dedup_records": store_stats.dedup_records,
        "quarantined": store_stats.quarantined,
        "map_size": store_stats.map_size,
        "map_used": store_stats.map_used,
        "replay_requests": {
            s: sum(1 for r in requests if r.status == s)
            for s in ("pending", "running", "done", "failed", "cancelled")
        },
        # the newest status any runtime published (one runtime: its own)
        "last_status": max(
            (r["last_status"] for r in runtimes if r["last_status"]),
            key=lambda status: status.get("at", 0.0),
            default=None,
        ),
    }
    if as_json:
        emit_json(data)
        return
    _print(data)


def _print(data: dict[str, Any]) -> None:
    table = Table(title=text(f"surelay {data['path']}"), title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    running = [r for r in data["runtimes"] if r["running"]]
    table.add_row(
        "runtimes",
        ", ".join(f"slot {r['slot']} (pid {r['pid']})" for r in running) or "none running",
    )
    table.add_row("outbox pending", str(data["outbox_pending"]))
    table.add_row("scheduled", str(data["scheduled"]))
    dead = data["dead_letters"]
    table.add_row("dead letters", ", ".join(f"{k} {v}" for k, v in dead.items()))
    reasons = ", ".join(f"{k} {v}" for k, v in data["dead_by_reason"].items() if v) or "-"
    table.add_row("dead by reason", reasons)
    table.add_row("dedup records", str(data["dedup_records"]))
    table.add_row("quarantined", str(data["quarantined"]))
    used = data["map_used"] / data["map_size"] if data["map_size"] else 0.0
    table.add_row("storage", f"{data['map_used']:,} of {data['map_size']:,} bytes ({used:.0%})")
    table.add_row(
        "replay requests", ", ".join(f"{k} {v}" for k, v in data["replay_requests"].items())
    )
    for runtime in data["runtimes"]:
        _status_rows(table, runtime)
    out_console.print(table)


def _status_rows(table: Table, runtime: dict[str, Any]) -> None:
    status = runtime["last_status"]
    if not status or "at" not in status:
        return
    table.add_section()
    slot = f"slot {runtime['slot']}"
    when = f"{age(status['at'], time.time())} ago" + (
        f" by pid {status.get('pid')}" if runtime["running"] else " (by a runtime since closed)"
    )
    table.add_row(f"{slot} status", when)
    table.add_row("pressure", str(status.get("pressure")))
    breakers = status.get("breakers") or {}
    table.add_row("breakers", text(", ".join(f"{t} {s}" for t, s in breakers.items()) or "-"))
    table.add_row("in flight", str(status.get("in_flight")))
    calls = status.get("calls_in_flight") or {}
    table.add_row("calls in flight", text(", ".join(f"{t} {n}" for t, n in calls.items()) or "-"))
    table.add_row("retry pending", str(status.get("retry_pending")))
    counters = ("accepted", "delivered", "retried", "dead_lettered", "duplicates")
    table.add_row("since open", ", ".join(f"{name} {status.get(name)}" for name in counters))
    table.add_row("refused / replayed", f"{status.get('refused')} / {status.get('replayed')}")
    unhealthy = status.get("unhealthy_actors") or []
    unhealthy += [f"transport {name} wedged" for name in status.get("wedged") or []]
    relays = status.get("relays") or {}
    unhealthy += ["a relay failing" for r in relays.values() if r.get("last_error")]
    table.add_row("health", text("ok" if status.get("ok") else f"NOT ok {unhealthy}"))
    if status.get("abandoned"):
        table.add_row("abandoned calls", str(status["abandoned"]))
    for name, relay in (status.get("relays") or {}).items():
        _relay_row(table, name, relay)


def _relay_row(table: Table, name: str, relay: dict[str, Any]) -> None:
    """One SQL outbox relay of that runtime (`rt.relay`): what it holds, what waits in
    its table, and the database's last error (its text escaped like any other)."""
    oldest = relay.get("oldest_age")
    waiting = relay.get("waiting")
    parts = relay.get("partitions") or []
    figures = (
        f"{name}: {relay.get('database')} table {relay.get('table')}: "
        f"partitions {len(parts)}, in flight {relay.get('in_flight')}, "
        f"waiting {'-' if waiting is None else waiting}, "
        f"oldest {'-' if oldest is None else age(0.0, float(oldest))}, "
        f"relayed {relay.get('relayed')}, deleted {relay.get('deleted')}"
    )
    table.add_row("relay", text(figures))
    error = relay.get("last_error")
    if error:
        since = relay.get("last_error_at")
        when = f" ({age(since, time.time())} ago)" if isinstance(since, int | float) else ""
        table.add_row("relay error", text(f"{error}{when}", style="red"))
