"""`surelay relay` as a real process: rows committed in SQLite and in PostgreSQL reach a
real HTTP receiver, the rows are deleted, and SIGTERM stops it cleanly (rows not yet
delivered stay in the table). Bad arguments are refused with exit code 2."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from surelay.cli import main
from surelay.cli.relay import line
from surelay.sql import SqlOutbox
from tests.transports.http_server import HttpServer, Reply


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        threading.Event().wait(0.02)


def start_relay(tmp_path: Path, url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "surelay.cli",
            "relay",
            "--url",
            url,
            "--path",
            str(tmp_path / "relay-data"),
            "--partitions",
            "8",
            "--poll-interval",
            "0.05",
            *args,
        ],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        _, errors = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, errors
    return errors


def write_rows(outbox: SqlOutbox, url: str, count: int) -> list[bytes]:
    """`count` committed messages (3 keys), and one in a transaction that rolls back."""
    sent = [json.dumps({"key": f"k{i % 3}", "n": i}).encode() for i in range(count)]
    if outbox.kind == "sqlite":
        conn = sqlite3.connect(outbox.target)
        try:
            with conn:
                for body in sent:
                    outbox.send(conn, "hooks", body, key=json.loads(body)["key"])
            conn.execute("BEGIN")
            outbox.send(conn, "hooks", b"rolled back", key="k0")
            conn.rollback()
        finally:
            conn.close()
        return sent

    with psycopg.connect(url) as pg:
        with pg.transaction():
            for body in sent:
                outbox.send(pg, "hooks", body, key=json.loads(body)["key"])
        with pg.transaction(force_rollback=True):
            outbox.send(pg, "hooks", b"rolled back", key="k0")
    return sent


def rows_left(outbox: SqlOutbox, url: str) -> int:
    query = f"SELECT count(*) FROM {outbox.table}"
    if outbox.kind == "sqlite":
        with sqlite3.connect(outbox.target) as conn:
            count: int = conn.execute(query).fetchone()[0]
            return count

    with psycopg.connect(url) as pg:
        row = pg.execute(query).fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return url


def test_relays_committed_rows_and_stops_on_sigterm(tmp_path: Path, db_url: str) -> None:
    outbox = SqlOutbox(db_url, partitions=8)
    outbox.create_table()
    with HttpServer() as receiver:
        relay = start_relay(tmp_path, db_url, "--transport", f"hooks={receiver.url}/hook")
        try:
            sent = write_rows(outbox, db_url, 30)
            wait_for(lambda: len(receiver.requests) >= 30 or relay.poll() is not None)
            assert relay.poll() is None, relay.communicate()[1]
            wait_for(lambda: rows_left(outbox, db_url) == 0)
        finally:
            errors = stop(relay)
    got = [r.body for r in receiver.requests]
    assert sorted(got) == sorted(sent)  # the rolled-back one never, each once
    for key in ("k0", "k1", "k2"):  # per key, in commit order
        assert [b for b in got if json.loads(b)["key"] == key] == [
            b for b in sent if json.loads(b)["key"] == key
        ]
    assert "surelay relay stopped: relayed 30 | deleted 30 |" in errors


def test_rows_not_delivered_stay_after_sigterm(tmp_path: Path, sqlite_url: str) -> None:
    outbox = SqlOutbox(sqlite_url, partitions=8)
    outbox.create_table()
    (tmp_path / "hosts.py").write_text(
        "import os\n"
        "from surelay.transports import HttpTransport\n"
        "TRANSPORTS = {'hooks': HttpTransport(os.environ['HOOK_URL'])}\n"
    )
    with HttpServer({"/hook": Reply(503, retry_after="60")}) as receiver:
        os.environ["HOOK_URL"] = f"{receiver.url}/hook"
        try:
            relay = start_relay(tmp_path, sqlite_url, "--transports", "hosts:TRANSPORTS")
        finally:
            del os.environ["HOOK_URL"]
        try:
            write_rows(outbox, sqlite_url, 5)
            wait_for(lambda: len(receiver.requests) >= 3 or relay.poll() is not None)
            assert relay.poll() is None, relay.communicate()[1]
        finally:
            errors = stop(relay)
    assert rows_left(outbox, sqlite_url) == 5, errors
    assert "deleted 0" in errors


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--url", "mysql://x/y"], "postgresql:// or sqlite:///"),
        (["--url", "sqlite:///:memory:"], ":memory:"),
        ([], "at least one --transport"),
        (["--transport", "hooks"], "is not NAME=URL"),
        (["--transport", "hooks=ftp://example.com/x"], "neither http(s):// nor nats://"),
        (["--transport", "hooks=nats://127.0.0.1:4222"], "nats://host:port/subject"),
        (["--transport", "a=http://x/1", "--transport", "a=http://x/2"], "given twice"),
        (["--transports", "nocolon"], "is not module:attribute"),
        (["--transports", "no_such_module_here:T"], "cannot import"),
        (["--transports", "os:sep"], "not a mapping"),
        (["--transports", "os:no_such_attr"], "has no 'no_such_attr'"),
        (["--partitions", "0", "--transport", "a=http://x/"], "--partitions"),
        (["--lease", "0.5", "--transport", "a=http://x/"], "--lease"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], problem: str) -> None:
    base = ["relay", "--url", f"sqlite:///{tmp_path / 'app.db'}", "--path", str(tmp_path / "d")]
    result = CliRunner().invoke(main, [*base, *args])
    assert result.exit_code == 2, result.output
    assert problem in result.output
    assert not (tmp_path / "d").exists()  # refused before opening anything


def test_the_live_line_escapes_the_database_error() -> None:
    relay = {
        "relayed": 7,
        "deleted": 5,
        "partitions": [0, 3],
        "in_flight": 2,
        "waiting": 4,
        "oldest_age": 1.25,
        "last_error": "OperationalError: \x1b]0;owned\x07 [bold]down",
    }
    shown = line({"host:1:ab": relay}, time.monotonic()).plain
    assert shown.startswith("relayed 7 | deleted 5 | partitions 2 | in flight 2 | waiting 4")
    assert "oldest 1.2s" in shown
    assert "error: OperationalError: \\x1b]0;owned\\x07 [bold]down" in shown
