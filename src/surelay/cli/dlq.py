"""`surelay dlq`: list, get, replay, archive and purge dead letters of a data directory,
and cancel a replay request no runtime has taken yet.

Reads and archive/purge work on the store directly (LMDB is safe across processes).
Transports live in the host, so `replay` records a request that a runtime on the
directory carries out (one of them, when several worker processes share it); `--wait`
follows its progress.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from surelay.cli.common import (
    age,
    dead_letter_json,
    emit_json,
    err_console,
    json_option,
    open_store,
    out_console,
    path_option,
)
from surelay.cli.escape import printable, text
from surelay.operations.dead_letters import archive as archive_records
from surelay.operations.dead_letters import cancel_replay, purged_by, record_replay
from surelay.operations.dead_letters import purge as purge_records
from surelay.replay_report import ReplayReport
from surelay.storage.dead_letters import MAX_LIMIT
from surelay.storage.records import (
    DEAD_LETTER_STATUSES,
    REASON_CLASSES,
    DeadLetter,
    ReplayRequest,
)
from surelay.storage.replay_requests import request_filters
from surelay.storage.slots import holders
from surelay.storage.store import Store

__all__ = ["dlq"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


if TYPE_CHECKING:
    _ParamType = click.ParamType[float, Any]  # generic only in newer click's stubs
else:
    _ParamType = click.ParamType


class Duration(_ParamType):
    """Seconds, or a number with a unit: 90, 90s, 15m, 12h, 7d."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        text = str(value).strip().lower()
        scale = _UNITS.get(text[-1:])
        number = text[:-1] if scale is not None else text
        try:
            seconds = float(number) * (scale or 1.0)
        except ValueError:
            self.fail(f"{value!r} is not a duration like 90, 90s, 15m, 12h or 7d", param, ctx)
        if not seconds >= 0 or seconds == float("inf"):
            self.fail(f"{value!r} must be a finite duration >= 0", param, ctx)
        return seconds


def filter_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--reason-class", type=click.Choice(REASON_CLASSES), help="only this reason class"
            ),
            click.option("--key", help="only records of this message key"),
            click.option("--transport", help="only records for this transport"),
        ]
    ):
        command = option(command)
    return command


def selection_options(command: Any) -> Any:
    """Ids, or the filters, or `--all`: how `replay` and `archive` choose records."""
    command = click.option(
        "--all", "everything", is_flag=True, help="every dead record (no ids, no filter)"
    )(command)
    command = filter_options(command)
    return click.argument("ids", nargs=-1, metavar="[ID]...")(command)


@click.group(help="Dead letters: see what failed and why, replay it safely, clean up.")
def dlq() -> None:
    """The `surelay dlq` group."""


# -- list and get ----------------------------------------------------------------------------


@dlq.command("list", help="Dead letters, oldest failure first.")
@path_option
@click.option(
    "--status",
    type=click.Choice([*DEAD_LETTER_STATUSES, "any"]),
    default="dead",
    show_default=True,
)
@filter_options
@click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=50, show_default=True)
@click.option("--after", metavar="ID", help="the last id of the previous page")
@json_option
def list_command(
    *,
    path: Path,
    status: str,
    reason_class: str | None,
    key: str | None,
    transport: str | None,
    limit: int,
    after: str | None,
    as_json: bool,
) -> None:
    with open_store(path) as store, store.read() as txn:
        records = store.dead_letters.list(
            txn,
            status=None if status == "any" else status,
            reason_class=reason_class,
            key=key,
            transport=transport,
            limit=limit,
            after=after,
        )
    if as_json:
        emit_json([dead_letter_json(r) for r in records])
        return
    if not records:
        out_console.print("no dead letters match")
        return
    if out_console.width < WIDE:
        _print_narrow(records, status)
    else:
        _print_wide(records, status)
    if len(records) == limit:
        out_console.print(Text(f"more may follow: --after {printable(records[-1].id)}"))


WIDE = 110
"""Columns from which `dlq list` is a table; narrower, each record takes three lines, so
nothing is cut (an 80-column terminal dropped the age and cut error types before)."""


def _reason(record: DeadLetter) -> str:
    status = "" if record.status == "dead" else f" ({record.status})"
    return record.reason_class + status


def _attempts(record: DeadLetter) -> str:
    replays = f" +{record.replay_count}r" if record.replay_count else ""
    return f"{record.attempts}{replays}"


def _print_narrow(records: Sequence[DeadLetter], status: str) -> None:
    now = time.time()
    out_console.print(f"dead letters ({status})")
    for r in records:
        key = r.key if r.key is not None else "-"
        out_console.print(
            Text.assemble(
                text(r.id, "bold"),
                f"  {_reason(r)}  {_attempts(r)} attempt(s)  {age(r.failed_at, now)} ago",
            )
        )
        out_console.print(Text(f"  key {printable(key)}  transport {printable(r.transport)}"))
        out_console.print(Text(f"  {printable(r.reason)}"), overflow="fold")


def _print_wide(records: Sequence[DeadLetter], status: str) -> None:
    table = Table(title=f"dead letters ({status})", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True, min_width=26)
    table.add_column("reason", no_wrap=True, min_width=9)
    table.add_column("key", no_wrap=True, min_width=6, max_width=32)
    table.add_column("transport", no_wrap=True, min_width=9, max_width=24)
    table.add_column("attempts", no_wrap=True, min_width=8)
    table.add_column("age", no_wrap=True, min_width=5)
    table.add_column("error", no_wrap=True, overflow="ellipsis", min_width=12, ratio=1)
    now = time.time()
    for r in records:
        table.add_row(
            text(r.id),
            _reason(r),
            text(r.key if r.key is not None else "-"),
            text(r.transport),
            _attempts(r),
            age(r.failed_at, now),
            text(r.reason),
        )
    out_console.print(table)


@dlq.command(help="One dead letter, every field.")
@path_option
@click.argument("dead_letter_id", metavar="ID")
@json_option
def get(path: Path, dead_letter_id: str, as_json: bool) -> None:
    with open_store(path) as store, store.read() as txn:
        record = store.dead_letters.get(txn, dead_letter_id)
    if record is None:
        raise click.ClickException(f"no dead letter {dead_letter_id!r} in {path}")
    data = dead_letter_json(record)
    if as_json:
        emit_json(data)
        return
    title = Text.assemble("dead letter ", text(record.id))
    table = Table(show_header=False, title=title, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in _fields_for_people(data):
        table.add_row(name, _shown(name, value))
    out_console.print(table)


_TIMES = ("failed_at", "first_attempt_at", "lease_until")


def _fields_for_people(data: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """A record's fields in the order `dlq get` shows them: the payload as text (when it
    is UTF-8) before its base64, which matters only for binary payloads."""
    fields: list[tuple[str, Any]] = []
    for name, value in data.items():
        if name == "payload":
            fields.append(("payload_text", data["payload_text"]))
            fields.append(("payload_base64", value))
        elif name != "payload_text":
            fields.append((name, value))
    return fields


def _shown(name: str, value: Any) -> Text:
    """One field's value as a person reads it, escaped (see `surelay.cli.escape`)."""
    if value is None:
        return Text("-")
    if name in _TIMES:
        return Text(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(value))}Z ({age(value)} ago)")
    if name == "headers":
        lines = [f"{printable(k)}: {printable(v)}" for k, v in sorted(value.items())]
        return Text("\n".join(lines) or "-")
    return text(value)


# -- replay ------------------------------------------------------------------------------


@dlq.command(help="Replay dead letters through the running runtime (canary first: --limit 1).")
@path_option
@selection_options
@click.option(
    "--limit",
    type=click.IntRange(1),
    help="only the first N matching (oldest first); alone, the N oldest dead records",
)
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="records per second")
@click.option("--wait/--no-wait", default=False, help="follow progress until done")
@click.option(
    "--timeout",
    type=Duration(),
    default="60s",
    show_default=True,
    help="with --wait: give up waiting after this (the replay goes on); 0: no limit",
)
@json_option
def replay(
    *,
    path: Path,
    ids: Sequence[str],
    reason_class: str | None,
    key: str | None,
    transport: str | None,
    everything: bool,
    limit: int | None,
    rate: float | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    # `--limit N` without ids chooses too: the N oldest dead records (the help's canary)
    alone = limit is not None and not ids
    filters = _selection(
        "replay", ids, reason_class, key, transport, everything=everything or alone
    )
    with open_store(path) as store:
        selected: tuple[str, ...] | None = tuple(ids) if ids else None
        if selected is not None:
            _refuse_unknown(store, selected, path)
        if limit is not None:
            selected = _first(store, selected, filters, limit)
        request = record_replay(store, ids=selected, filters=filters, rate=rate, now=time.time())
        pids = sorted(holders(path).values())
        owner = pids[0] if len(pids) == 1 else None
        if not as_json:
            where = (
                f"the runtime in process {owner} will carry it out"
                if len(pids) == 1
                else f"one of the runtimes in processes {', '.join(map(str, pids))} will "
                "carry it out"
                if pids
                else f"NO runtime runs on {path} now, so nothing carries it out until one "
                "opens there (Runtime.open picks it up)"
            )
            err_console.print(f"replay request {request.id} recorded; {where}")
            if wait and not pids:
                err_console.print(f"waiting up to {timeout:g}s for a runtime to open")
        if not wait:
            if as_json:
                emit_json(
                    {
                        "request_id": request.id,
                        "status": "pending",
                        "runtime_pid": owner,
                        "runtime_pids": pids,
                    }
                )
            return
        report, finished = _follow(store, request.id, timeout or None, quiet=as_json)
    if as_json:
        emit_json(
            {
                "request_id": request.id,
                "done": finished,
                **report.progress(),
                "pending": report.pending,
            }
        )
    else:
        _print_report(report)
    if not finished:
        nobody = "" if holders(path) else "; no runtime runs there to carry it out"
        raise click.ClickException(
            f"gave up waiting after {timeout:g}s (request {request.id} is "
            f"{_request_status(path, request.id)}{nobody}); it goes on when a runtime has it"
        )
    if report.failed or report.refused:
        with open_store(path) as store:
            note = _request(store, request.id).error
        raise click.ClickException(
            f"{report.failed} failed and {report.refused} refused"
            + (f" ({printable(note)})" if note else "")
            + _not_replayed(path, request.ids, note)
        )


def _selection(
    verb: str,
    ids: Sequence[str],
    reason_class: str | None,
    key: str | None,
    transport: str | None,
    *,
    everything: bool,
) -> Mapping[str, str]:
    """The filters given, after checking that exactly one way of choosing was used."""
    filters = request_filters(reason_class, key, transport)
    if ids and (filters or everything):
        raise click.UsageError("give ids, or filters/--all, not both")
    if not ids and not filters and not everything:
        raise click.UsageError(f"say what to {verb}: ids, a filter, or --all")
    return filters


def _first(
    store: Store, ids: tuple[str, ...] | None, filters: Mapping[str, str], limit: int
) -> tuple[str, ...]:
    """The first `limit` of the ids given, or of the dead records matching `filters`."""
    if ids is not None:
        return tuple(sorted(ids)[:limit])
    with store.read() as txn:
        return tuple(
            r.id for r in itertools.islice(store.dead_letters.matching(txn, **filters), limit)
        )


def _refuse_unknown(store: Store, ids: Sequence[str], path: Path) -> None:
    """Ids that name no dead letter are refused before anything is recorded."""
    with store.read() as txn:
        unknown = [i for i in ids if store.dead_letters.get(txn, i) is None]
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise click.ClickException(
            f"no dead letter {shown} in {path}; nothing was recorded "
            "(`surelay dlq list` shows the ids)"
        )


def _request_status(path: Path, request_id: str) -> str:
    with open_store(path) as store:
        return _request(store, request_id).status


def _not_replayed(path: Path, ids: Sequence[str] | None, note: str | None = None) -> str:
    """Which of `ids` were not replayed, and why (as their records say now, and the
    request's `note` on transports no runtime offered)."""
    if not ids:
        return ": see `surelay dlq list`"
    lines = []
    with open_store(path) as store, store.read() as txn:
        for dead_letter_id in ids:
            record = store.dead_letters.get(txn, dead_letter_id)
            if record is None:
                lines.append(f"{dead_letter_id}: refused, no such dead letter")
            elif record.status == "archived":
                lines.append(f"{dead_letter_id}: refused, it is archived")
            elif record.status == "dead" and note and f"'{record.transport}'" in note:
                lines.append(
                    f"{dead_letter_id}: refused, no runtime on {path} offers transport "
                    f"'{printable(record.transport)}'"
                )
            elif record.status == "dead":
                lines.append(f"{dead_letter_id}: failed again, {printable(record.reason)}")
    return ":\n  " + "\n  ".join(lines[:20]) if lines else ""


def _request(store: Store, request_id: str) -> ReplayRequest:
    with store.read() as txn:
        request = store.replay_requests.get(txn, request_id)
    if request is None:
        raise click.ClickException(f"replay request {request_id} vanished from the store")
    return request


def _follow(
    store: Store, request_id: str, timeout: float | None, *, quiet: bool
) -> tuple[ReplayReport, bool]:
    """Show the request's progress until it is done (True) or `timeout` passes (False)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    progress = Progress(
        TextColumn("replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=err_console,
        disable=quiet,
    )
    with progress:
        task = progress.add_task("replay", total=None, detail="waiting for the runtime")
        while True:
            request = _request(store, request_id)
            report = ReplayReport.from_progress(request.progress, request_id)
            if request.status != "pending":
                finished = report.requested - report.pending
                detail = (
                    f"{report.replayed} replayed, {report.skipped_duplicate} skipped, "
                    f"{report.failed} failed, {report.refused} refused"
                )
                progress.update(task, total=report.requested, completed=finished, detail=detail)
            if request.status == "failed":
                raise click.ClickException(
                    f"replay request {request_id} failed: {printable(request.error)}"
                )
            if request.status == "cancelled":
                raise click.ClickException(f"replay request {request_id} was cancelled")
            if request.status == "done":
                return report, True
            if deadline is not None and time.monotonic() >= deadline:
                return report, False
            time.sleep(0.2)  # polling another process's progress: nothing to wait on


def _print_report(report: ReplayReport) -> None:
    table = Table(title=f"replay {report.request_id}", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("count", justify="right")
    for name, value in report.progress().items():
        table.add_row(name.replace("_", " "), str(value))
    if report.pending:
        table.add_row("pending", str(report.pending))
    out_console.print(table)


@dlq.command(help="Cancel a pending replay request (one no runtime has taken yet).")
@path_option
@click.argument("request_id")
@json_option
def cancel(*, path: Path, request_id: str, as_json: bool) -> None:
    with open_store(path) as store:
        try:
            cancelled = cancel_replay(store, request_id, now=time.time())
        except (LookupError, ValueError) as error:
            raise click.ClickException(printable(str(error))) from None
    if as_json:
        emit_json({"request_id": cancelled.id, "status": cancelled.status})
    else:
        out_console.print(f"replay request {cancelled.id} cancelled; nothing of it was replayed")


# -- cleanup -------------------------------------------------------------------------------


@dlq.command(help="Archive dead letters (dead or replayed): kept, but never replayed.")
@path_option
@selection_options
@json_option
def archive(
    *,
    path: Path,
    ids: Sequence[str],
    reason_class: str | None,
    key: str | None,
    transport: str | None,
    everything: bool,
    as_json: bool,
) -> None:
    filters = _selection("archive", ids, reason_class, key, transport, everything=everything)
    with open_store(path) as store:
        changed = archive_records(store, ids or None, filters)
    if as_json:
        emit_json({"archived": changed})
    else:
        out_console.print(f"archived {changed} dead letter(s)")


@dlq.command(help="Delete dead letters for good (archived ones by default).")
@path_option
@click.option(
    "--status",
    type=click.Choice([s for s in DEAD_LETTER_STATUSES if s != "replaying"]),
    default="archived",
    show_default=True,
)
@click.option("--older-than", type=Duration(), help="only those that failed longer ago (7d, 12h)")
@click.option("--dry-run", is_flag=True, help="show what would be deleted, delete nothing")
@click.option("--yes", is_flag=True, help="do not ask (needed to purge dead records in a script)")
@json_option
def purge(
    *, path: Path, status: str, older_than: float | None, dry_run: bool, yes: bool, as_json: bool
) -> None:
    with open_store(path) as store:
        now = time.time()
        doomed = purged_by(store, status=status, older_than=older_than, now=now)
        what = _described(len(doomed), status, older_than)
        if dry_run:
            _print_doomed(doomed, what, as_json=as_json)
            return
        if doomed and not yes:
            _confirm_purge(doomed, what, status)
        # Records that fail after `now` were not counted above: they stay.
        removed = purge_records(store, status=status, older_than=older_than or 0.0, now=now)
    if as_json:
        emit_json({"purged": removed})
    else:
        out_console.print(f"purged {removed} {status} dead letter(s)")


_SAMPLE = 10
"""Records a dry run or a confirmation names (the count covers them all)."""


def _described(count: int, status: str, older_than: float | None) -> str:
    older = f" that failed more than {_duration_text(older_than)} ago" if older_than else ""
    return f"{count} {status} dead letter(s){older}"


def _duration_text(seconds: float) -> str:
    for unit, scale in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= scale and seconds % scale == 0:
            return f"{seconds / scale:g}{unit}"
    return f"{seconds:g}s"


def _print_doomed(doomed: Sequence[DeadLetter], what: str, *, as_json: bool) -> None:
    if as_json:
        emit_json({"would_purge": len(doomed), "sample": [r.id for r in doomed[:_SAMPLE]]})
        return
    out_console.print(Text(f"would purge {what}; nothing was deleted (--dry-run)"))
    _print_sample(doomed, out_console)


def _print_sample(doomed: Sequence[DeadLetter], console: Console) -> None:
    """The first few records, one line each, escaped (their reasons are a downstream's)."""
    for r in doomed[:_SAMPLE]:
        key = r.key if r.key is not None else "-"
        line = Text(f"  {printable(r.id)}  key {printable(key)}  {r.reason_class}: ")
        console.print(line + text(r.reason), overflow="ellipsis", no_wrap=True)
    if len(doomed) > _SAMPLE:
        console.print(f"  ... and {len(doomed) - _SAMPLE} more")


def _confirm_purge(doomed: Sequence[DeadLetter], what: str, status: str) -> None:
    """Ask before deleting for good. With no terminal to ask on, dead records (never
    delivered) need `--yes`; other statuses go ahead (a retention job in a script)."""
    if not sys.stdin.isatty():
        if status == "dead":
            raise click.UsageError(
                f"this would delete {what}: messages that were never delivered. Nothing "
                "was deleted: there is no terminal to ask on, so confirm with --yes (or "
                "look first with --dry-run)"
            )
        return
    err_console.print(Text(f"this deletes {what} for good:"))
    _print_sample(doomed, err_console)
    if not click.confirm("purge them?", default=False, err=True):
        raise click.ClickException("nothing was deleted")
