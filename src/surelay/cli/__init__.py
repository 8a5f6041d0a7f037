"""The `surelay` command line (click for parsing, rich for output).

Needs the `cli` extra (`pip install 'surelay[cli]'`). Exit codes: 0 on success, 1 on an
operational failure, 2 on bad usage (click's own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from surelay.cli.console import console
from surelay.cli.dlq import dlq
from surelay.cli.doctor import doctor
from surelay.cli.push import push
from surelay.cli.relay import relay
from surelay.cli.stats import stats
from surelay.cli.status import status
from surelay.errors import StorageError

__all__ = ["main"]


class _Group(click.Group):
    """Store errors (a read-only filesystem, a full map) end a command with their
    message and exit code 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StorageError as error:
            raise click.ClickException(str(error)) from error


@click.group(cls=_Group, help="surelay: reliable delivery, supervised.")
@click.version_option(package_name="surelay", message="surelay %(version)s")
def main() -> None:
    """Entry point of the `surelay` script."""


@main.command(help="Send messages to a simulated flaky downstream and show what happens.")
@click.option("--messages", type=click.IntRange(min=2), default=3000, show_default=True)
@click.option(
    "--path",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("surelay-data"),
    show_default=True,
    help="data directory (created if missing)",
)
def demo(messages: int, path: Path) -> None:
    from surelay.cli.demo import run_demo  # noqa: PLC0415  # the SDK and the demo load only here

    result = run_demo(path, messages)
    if not result.flushed:
        raise click.ClickException("the demo ended with messages still in flight")


main.add_command(console)
main.add_command(dlq)
main.add_command(doctor)
main.add_command(push)
main.add_command(relay)
main.add_command(stats)
main.add_command(status)
