"""`surelay push`: the push mailboxes of a data directory, as an operator sees them."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import click
from rich.table import Table

from surelay.ages import age
from surelay.cli.common import emit_json, json_option, open_store, out_console, path_option
from surelay.cli.escape import text

__all__ = ["push"]


@click.group(help="Push to clients: what became of a pushed message.")
def push() -> None:
    pass


@push.command(
    help="A pushed message's state (queued, sent, delivered, read, failed), by its msg_id."
)
@path_option
@json_option
@click.argument("msg_id", metavar="ID")
def status(path: Path, as_json: bool, msg_id: str) -> None:
    if not msg_id:
        raise click.BadParameter("must not be empty", param_hint="ID")
    with open_store(path) as store, store.read() as txn:
        found = store.mailboxes.status(txn, msg_id)
    if found is None:
        raise click.ClickException(
            f"no pushed message {msg_id!r} in {path} (never sent there, or past its retention)"
        )
    if as_json:
        emit_json(dataclasses.asdict(found))
        return
    now = time.time()
    table = Table(title=text(f"push {found.msg_id}"), title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("state", found.state + (f" ({found.reason})" if found.reason else ""))
    table.add_row("recipient", text(found.recipient))
    table.add_row("seq", str(found.seq))
    table.add_row("frames sent", str(found.attempts))
    for what, at in (
        ("sent", found.sent_at),
        ("delivered", found.delivered_at),
        ("read", found.read_at),
    ):
        table.add_row(what, f"{age(at, now)} ago" if at is not None else "-")
    if found.delivered_device is not None:
        table.add_row("delivered to", text(found.delivered_device))
    table.add_row("updated", f"{age(found.updated_at, now)} ago")
    out_console.print(table)
