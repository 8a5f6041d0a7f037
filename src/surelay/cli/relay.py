"""`surelay relay`: a process that only relays a SQL outbox table (`surelay.sql`).

For hosts that write rows with `outbox.send(conn, ...)` and run no runtime of their own:
this process opens a runtime on `--path`, relays the table at `--url` into the given
transports, and runs until SIGTERM or SIGINT. It then closes the runtime; rows whose
messages have not been delivered stay in the table for the next relay.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from surelay.cli.escape import printable

__all__ = ["relay"]

REFRESH = 0.5
"""Seconds between two refreshes of the live line on a terminal."""

LOG_EVERY = 30.0
"""Seconds between two status lines when stderr is not a terminal (a service's log)."""

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
"""One line per status, never wrapped (a service's log is read with grep)."""


def http_or_nats(name: str, url: str) -> Any:
    """The transport for `--transport NAME=URL`: http(s) makes an `HttpTransport`,
    `nats://host:port/subject` a `JetStreamTransport` publishing to `subject`."""
    hint = f"--transport {name}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https"):
        from surelay.transports import HttpTransport  # noqa: PLC0415

        try:
            return HttpTransport(url)
        except (TypeError, ValueError) as error:
            raise click.BadParameter(str(error), param_hint=hint) from error
    if parts.scheme in ("nats", "tls"):
        subject = parts.path.lstrip("/")
        if not subject or not parts.hostname:
            raise click.BadParameter(
                f"{url!r}: a NATS transport is nats://host:port/subject", param_hint=hint
            )
        try:
            from surelay.transports import JetStreamTransport  # noqa: PLC0415

            return JetStreamTransport(f"{parts.scheme}://{parts.netloc}", subject)
        except ImportError as error:
            raise click.ClickException(
                f"{hint}: JetStream needs the nats extra (pip install 'surelay[nats]')"
            ) from error
        except (TypeError, ValueError) as error:
            raise click.BadParameter(str(error), param_hint=hint) from error
    raise click.BadParameter(
        f"{url!r} is neither http(s):// nor nats://host:port/subject", param_hint=hint
    )


def given_transports(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, url = pair.partition("=")
        name = name.strip()
        if not sep or not name or not url:
            raise click.BadParameter(f"{pair!r} is not NAME=URL", param_hint="--transport")
        if name in out:
            raise click.BadParameter(f"transport {name!r} given twice", param_hint="--transport")
        out[name] = http_or_nats(name, url)
    return out


def imported_transports(spec: str) -> dict[str, Any]:
    """`module:attr`, a mapping of name -> transport (the current directory is on the
    import path, as for uvicorn's `app:app`)."""
    hint = "--transports"
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise click.BadParameter(f"{spec!r} is not module:attribute", param_hint=hint)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise click.BadParameter(
            f"cannot import {module_name!r}: {error}", param_hint=hint
        ) from error
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise click.BadParameter(f"{module_name} has no {attr!r}", param_hint=hint) from None
    if not isinstance(value, Mapping):
        raise click.BadParameter(
            f"{spec} is a {type(value).__name__}, not a mapping of name -> transport",
            param_hint=hint,
        )
    return dict(value)


def line(health: Mapping[str, Mapping[str, Any]], started: float) -> Text:
    """One line over this process's relays (one per table: here, one)."""
    relays = list(health.values())
    relayed = sum(r["relayed"] for r in relays)
    deleted = sum(r["deleted"] for r in relays)
    partitions = sum(len(r["partitions"]) for r in relays)
    waiting = [r["waiting"] for r in relays if r["waiting"] is not None]
    ages = [r["oldest_age"] for r in relays if r["oldest_age"] is not None]
    parts = [
        f"relayed {relayed}",
        f"deleted {deleted}",
        f"partitions {partitions}",
        f"in flight {sum(r['in_flight'] for r in relays)}",
        f"waiting {sum(waiting) if waiting else '-'}",
        f"oldest {max(ages):.1f}s" if ages else "oldest -",
        f"up {time.monotonic() - started:.0f}s",
    ]
    out = Text(" | ".join(parts))
    errors = [r["last_error"] for r in relays if r["last_error"]]
    if errors:
        out.append(f" | error: {printable(errors[0])}", style="bold red")
    return out


@click.command(help="Relay a SQL outbox table (surelay.sql) into transports until SIGTERM.")
@click.option("--url", required=True, help="postgresql://... or sqlite:///path.db")
@click.option(
    "--path",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="data directory of this relay's runtime (created if missing)",
)
@click.option("--table", default="surelay_outbox", show_default=True)
@click.option(
    "--partitions",
    type=click.IntRange(1, 4096),
    default=64,
    show_default=True,
    help="the same for every relay of the table",
)
@click.option(
    "--transport",
    "transport_pairs",
    multiple=True,
    metavar="NAME=URL",
    help="http(s)://... (HttpTransport) or nats://host:port/subject (JetStreamTransport); "
    "repeat for several",
)
@click.option(
    "--transports",
    "transports_spec",
    metavar="MODULE:ATTR",
    help="import a mapping of name -> transport",
)
@click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True)
@click.option("--poll-interval", type=click.FloatRange(0.01, 3600), default=1.0, show_default=True)
@click.option(
    "--lease",
    type=click.FloatRange(1.0, 3600),
    default=10.0,
    show_default=True,
    help="seconds after which a dead relay's partitions go to the others",
)
def relay(
    *,
    url: str,
    path: Path,
    table: str,
    partitions: int,
    transport_pairs: tuple[str, ...],
    transports_spec: str | None,
    batch: int,
    poll_interval: float,
    lease: float,
) -> None:
    from surelay import Runtime  # noqa: PLC0415
    from surelay.sql import SqlOutbox  # noqa: PLC0415

    try:
        outbox = SqlOutbox(url, table=table, partitions=partitions)
    except (TypeError, ValueError) as error:
        raise click.BadParameter(str(error), param_hint="--url / --table") from error
    transports = given_transports(transport_pairs)
    if transports_spec is not None:
        for name, transport in imported_transports(transports_spec).items():
            if name in transports:
                raise click.BadParameter(
                    f"transport {name!r} is given by --transport too", param_hint="--transports"
                )
            transports[name] = transport
    if not transports:
        raise click.UsageError("give at least one --transport NAME=URL or --transports MODULE:ATTR")
    if path.exists() and not path.is_dir():
        raise click.BadParameter(f"{path} is not a directory", param_hint="--path")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

    stop = threading.Event()

    def stopping(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, stopping) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            rt = Runtime.open(path, transports=transports)
        except (TypeError, ValueError) as error:
            raise click.UsageError(str(error)) from error
        try:
            rt.relay(outbox, batch=batch, poll_interval=poll_interval, lease=lease)
            names = ", ".join(sorted(transports))
            err_console.print(
                Text(
                    f"surelay relay: {outbox.kind} table {table} into {names} "
                    f"(runtime at {path}); SIGTERM or ctrl-C stops"
                )
            )
            started = time.monotonic()
            _watch(rt, stop, started)
        finally:
            rt.close()
        relays = _relays(rt).values()  # what it had relayed, and deleted once ended
        err_console.print(
            Text(
                f"surelay relay stopped: relayed {sum(r['relayed'] for r in relays)} | "
                f"deleted {sum(r['deleted'] for r in relays)} | "
                f"up {time.monotonic() - started:.0f}s"
            )
        )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _relays(rt: Any) -> dict[str, Any]:
    relays: dict[str, Any] = rt.health()["relays"]
    return relays


def _watch(rt: Any, stop: threading.Event, started: float) -> None:
    """Until `stop`: a live line on a terminal, a status line every `LOG_EVERY` seconds
    otherwise (a service's log)."""
    if err_console.is_terminal:
        with Live(line(_relays(rt), started), console=err_console) as live:
            while not stop.wait(REFRESH):
                live.update(line(_relays(rt), started))
        return
    while not stop.wait(LOG_EVERY):
        err_console.print(line(_relays(rt), started))
