"""What every `surelay` subcommand shares: the data directory option, opening the store
of a runtime that may be running in another process, output for people and for scripts.

Exit codes: 0 success, 1 operational failure (`click.ClickException`), 2 bad usage
(`click.UsageError`, and a `--path` that is missing or not a surelay directory).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from surelay.ages import age
from surelay.errors import StorageError
from surelay.storage.records import DeadLetter, as_dict
from surelay.storage.store import Store

__all__ = [
    "age",
    "dead_letter_json",
    "emit_json",
    "err_console",
    "open_store",
    "out_console",
    "path_option",
]

F = TypeVar("F", bound=Callable[..., Any])

# Piped output (less, grep) gets wide lines rather than 80 columns of wrapped cells.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200
out_console = Console(highlight=False, soft_wrap=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False)


def path_option(command: F) -> F:
    """`--path DIR`: the data directory, `./surelay-data` by default (as `surelay demo`)."""
    option = click.option(
        "--path",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("surelay-data"),
        show_default=True,
        help="data directory of the runtime",
    )
    return option(command)


def json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")(command)


@contextlib.contextmanager
def open_store(path: Path) -> Iterator[Store]:
    """The store at `path`, never created here: a missing or foreign directory is a bad
    `--path` (exit 2); a directory that cannot be opened otherwise is exit 1."""
    if not path.exists():
        raise click.BadParameter(f"{path} does not exist", param_hint="--path")
    if not path.is_dir() or not (path / "data.mdb").exists():
        raise click.BadParameter(
            f"{path} is not a surelay data directory (no data.mdb in it)", param_hint="--path"
        )
    try:
        store = Store.open(path, create=False)
    except StorageError as error:
        raise click.ClickException(str(error)) from error
    try:
        yield store
    finally:
        store.close()


def emit_json(value: Any) -> None:
    """`value` as JSON on stdout. `ensure_ascii` writes every character outside printable
    ASCII as `\\uXXXX` (control characters, bidi overrides, lone surrogates): still valid
    JSON with the same strings, and nothing a producer sent reaches the terminal raw."""
    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=True))


def dead_letter_json(record: DeadLetter) -> dict[str, Any]:
    """A dead letter as JSON: the payload in base64, and as text when it is UTF-8."""
    out = as_dict(record)
    payload = record.payload
    out["payload"] = base64.b64encode(payload).decode("ascii")
    try:
        out["payload_text"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        out["payload_text"] = None
    out["headers"] = dict(record.headers)
    out["priority"] = record.priority.name
    return out
