"""`surelay status`: what became of one message, read from the data directory."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import click
from rich.table import Table

from surelay.ages import age
from surelay.cli.common import emit_json, json_option, open_store, out_console, path_option
from surelay.cli.escape import text
from surelay.operations.message_status import message_status

__all__ = ["status"]


@click.command(
    help="A message's state (scheduled, pending, delivered, duplicate, dead, replayed), "
    "by its id or, with --idempotency-key, by the key it was sent with."
)
@path_option
@json_option
@click.option(
    "--idempotency-key", "by_key", is_flag=True, help="ID is an idempotency key, not a message id"
)
@click.argument("identifier", metavar="ID")
def status(path: Path, as_json: bool, by_key: bool, identifier: str) -> None:
    if not identifier:
        raise click.BadParameter("must not be empty", param_hint="ID")
    with open_store(path) as store:
        found = message_status(
            store,
            None if by_key else identifier,
            identifier if by_key else None,
            now=time.time(),
            in_flight=lambda _message_id: False,  # (known only to the process calling it)
        )
    if found is None:
        what = "idempotency key" if by_key else "message"
        raise click.ClickException(
            f"no {what} {identifier!r} in {path} (never sent there, or ended longer than "
            "dedup_ttl ago)"
        )
    if as_json:
        emit_json(dataclasses.asdict(found))
        return
    table = Table(
        title=text(f"message {found.message_id}"), title_justify="left", show_header=False
    )
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("state", found.state)
    table.add_row("transport", text(found.transport))
    table.add_row("key", text(found.key) if found.key is not None else "-")
    table.add_row("attempts", str(found.attempts))
    now = time.time()
    if found.next_attempt_at is not None:
        due = found.next_attempt_at
        table.add_row("next attempt", f"in {age(now, due)}" if due > now else "due now")
    table.add_row("last error", text(found.last_error) if found.last_error else "-")
    table.add_row("updated", f"{age(found.updated_at, now)} ago")
    out_console.print(table)
