"""The SQL outbox recipes of docs/recipes.md run as written: FastAPI + SQLAlchemy (async)
under a real uvicorn on PostgreSQL, Django on SQLite with its migration, and the
standalone `surelay relay` process; each delivers to a real HTTP receiver."""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import psycopg
import pytest

from surelay.sql import SqlOutbox
from tests.helpers import free_port
from tests.test_recipes import SCRIPTS, program, start_uvicorn, wait_for
from tests.transports.http_server import HttpServer


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def post(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def stopped(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return output


def start_relay(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """`relay.sh` as written (its variables from `env`)."""
    return subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", "exec " + SCRIPTS["relay.sh"].strip()],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_fastapi_sqlalchemy_recipe_on_postgres(tmp_path: Path, pg_url: str) -> None:
    program(tmp_path, "shop.py")
    port = free_port()
    with HttpServer() as receiver:
        env = environment(
            DATABASE_URL=pg_url,
            HOOK_URL=receiver.url + "/hook",
            SURELAY_PATH=str(tmp_path / "data"),
        )
        server = start_uvicorn(tmp_path, "shop:app", port, env)
        try:
            assert [post(port, f"/orders/o{i}") for i in range(5)] == [200] * 5
            assert post(port, "/orders/o1") == 409  # rolled back: no second message
            wait_for(lambda: len(receiver.requests) >= 5)
        finally:
            output = stopped(server)
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    got = sorted(json.loads(r.body)["order"] for r in receiver.requests)
    assert got == [f"o{i}" for i in range(5)]  # the 409 sent nothing
    keys = {r.headers["idempotency-key"] for r in receiver.requests}
    assert keys == {f"order-o{i}-placed" for i in range(5)}


def test_django_recipe_migrates_writes_in_atomic_and_the_relay_delivers(tmp_path: Path) -> None:
    for name in (
        "settings.py",
        "orders/outbox.py",
        "orders/models.py",
        "orders/migrations/0001_initial.py",
        "place_orders.py",
    ):
        program(tmp_path, name)
    (tmp_path / "orders" / "__init__.py").write_text("")
    (tmp_path / "orders" / "migrations" / "__init__.py").write_text("")
    env = environment()

    def run(*command: str) -> str:
        done = subprocess.run(
            [sys.executable, *command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("-m", "django", "migrate", "--settings=settings")
    database = tmp_path / "app.db"
    with sqlite3.connect(database) as conn:  # the migration made the outbox table
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"surelay_outbox", "surelay_outbox_leases", "orders_order"} <= tables
    shown = run("place_orders.py", "o1", "o2!", "o3")
    assert "order o2! refused" in shown
    with sqlite3.connect(database) as conn:
        orders = [r[0] for r in conn.execute("SELECT id FROM orders_order ORDER BY id")]
    assert orders == ["o1", "o3"]
    with HttpServer() as receiver:
        relay_env = {
            **env,
            "DATABASE_URL": f"sqlite:///{database}",
            "HOOK_URL": receiver.url + "/hook",
        }
        relay = start_relay(tmp_path, relay_env)
        try:
            wait_for(lambda: len(receiver.requests) >= 2 or relay.poll() is not None)
            assert relay.poll() is None
            wait_for(lambda: _rows(database) == 0)
        finally:
            output = stopped(relay)
    assert relay.returncode == 0, output
    assert sorted(json.loads(r.body)["order"] for r in receiver.requests) == ["o1", "o3"]


def _rows(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        count: int = conn.execute("SELECT count(*) FROM surelay_outbox").fetchone()[0]
        return count


def _pg_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM surelay_outbox").fetchone()
        assert row is not None
        return int(row[0])


def test_standalone_relay_recipe_on_postgres(tmp_path: Path, pg_url: str) -> None:
    program(tmp_path, "writer.py")
    with HttpServer() as receiver:
        env = environment(DATABASE_URL=pg_url, HOOK_URL=receiver.url + "/hook")
        done = subprocess.run(
            [sys.executable, "writer.py", "20"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        relay = start_relay(tmp_path, env)
        try:
            wait_for(lambda: len(receiver.requests) >= 20 or relay.poll() is not None)
            assert relay.poll() is None
            wait_for(lambda: _pg_rows(pg_url) == 0)  # each deleted once delivered
        finally:
            output = stopped(relay)
    assert relay.returncode == 0, output
    assert "surelay relay stopped: relayed 20 | deleted 20" in " ".join(output.split())
    got = [json.loads(r.body)["n"] for r in receiver.requests]
    assert sorted(got) == list(range(20))
    for customer in range(4):  # one customer's messages in the order they were written
        mine = [n for n in got if n % 4 == customer]
        assert mine == sorted(mine)
    assert shlex.split(SCRIPTS["relay.sh"].replace("\\\n", " "))[:2] == ["surelay", "relay"]


def alembic_migration() -> str:
    text = (Path(__file__).parents[2] / "docs" / "recipes.md").read_text()
    found = re.search(r"Alembic \(PostgreSQL.*?```python\n(.*?)```", text, re.S)
    assert found is not None, "the Alembic migration is gone from docs/recipes.md"
    return found.group(1)


def test_the_alembic_migration_makes_and_drops_every_table(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented upgrade and downgrade, run as written (`op.execute` on a real
    connection to the database: Alembic itself passes the SQL through)."""
    outbox = SqlOutbox(pg_url, table="jobs")
    listed = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    functions = "SELECT count(*) FROM pg_proc WHERE proname = 'jobs_notify'"
    with psycopg.connect(outbox.target, autocommit=True) as conn:
        alembic = types.ModuleType("alembic")
        alembic.op = types.SimpleNamespace(execute=conn.execute)  # type: ignore[attr-defined]
        myapp = types.ModuleType("myapp.outbox")
        myapp.outbox = outbox  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "alembic", alembic)
        monkeypatch.setitem(sys.modules, "myapp", types.ModuleType("myapp"))
        monkeypatch.setitem(sys.modules, "myapp.outbox", myapp)
        migration: dict[str, Any] = {}
        exec(alembic_migration(), migration)  # the documented code, as written
        migration["upgrade"]()
        made = {r[0] for r in conn.execute(listed).fetchall()}
        assert made == {"jobs", "jobs_leases", "jobs_relays", "jobs_idle"}
        assert conn.execute(functions).fetchone() == (1,)
        migration["downgrade"]()
        assert conn.execute(listed).fetchall() == []
        assert conn.execute(functions).fetchone() == (0,)
