"""`surelay doctor`: check a data directory's store, and copy what is readable out of a
damaged one (`--salvage OUT`). Exit 0 when the store is healthy, 1 when a problem was
found (also after a salvage: the store itself is still damaged)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from surelay.cli.common import emit_json, json_option, out_console, path_option
from surelay.cli.escape import printable, text
from surelay.storage.checkup import Examination, Salvaged, examine, salvage

__all__ = ["doctor"]


@click.command(help="Check the store of a data directory; --salvage copies what is readable.")
@path_option
@click.option(
    "--salvage",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="copy every readable outbox entry, dead letter and dedup record into this new "
    "(empty or missing) directory",
)
@json_option
def doctor(path: Path, out: Path | None, as_json: bool) -> None:
    if not path.is_dir():
        raise click.BadParameter(f"{path} is not a directory", param_hint="--path")
    found = examine(path)
    saved = salvage(path, out) if out is not None else None
    if as_json:
        data = found.as_dict()
        if saved is not None:
            data["salvaged"] = {"to": str(out), **saved.as_dict()}
        emit_json(data)
    else:
        _print(found, out, saved)
    if not found.healthy:
        raise click.exceptions.Exit(1)


def _print(found: Examination, out: Path | None, saved: Salvaged | None) -> None:
    verdict = "healthy" if found.healthy else f"{len(found.problems)} problem(s)"
    table = Table(title=f"surelay doctor {found.path}: {verdict}", title_justify="left")
    for column in ("table", "expected", "readable", "undecodable"):
        table.add_column(column, justify="left" if column == "table" else "right")
    for check in found.tables:
        table.add_row(  # a table's name is read from a file that may be damaged
            text(check.name),
            f"{check.expected:,}",
            f"{check.readable:,}",
            f"{check.undecodable:,}",
        )
    out_console.print(table)
    out_console.print(
        f"{found.data_file}: {found.file_size:,} bytes, read with {found.read_with}",
        markup=False,
    )
    for problem in found.problems:
        out_console.print(f"problem: {printable(problem)}", markup=False)
    for damage in found.damage[:20]:
        out_console.print(
            printable(f"damaged: table {damage.table!r}, page {damage.page}: {damage.why}"),
            markup=False,
        )
    if len(found.damage) > 20:
        out_console.print(f"... and {len(found.damage) - 20} more damaged pages")
    if saved is not None:
        out_console.print(
            f"salvaged into {out}: {saved.outbox:,} outbox entries, {saved.dead_letters:,} "
            f"dead letters, {saved.dedup:,} dedup records, {saved.inbox:,} inbox records",
            markup=False,
        )
