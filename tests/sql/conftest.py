"""Fixtures for the SQL outbox tests: one real PostgreSQL cluster for the session (see
tests/postgres_server.py), a fresh database per test, and a SQLite file per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres_server import PostgresServer, find_bin

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if find_bin("initdb") is None:
        if os.environ.get("SURELAY_POSTGRES_TESTS") == "required":
            pytest.fail("SURELAY_POSTGRES_TESTS=required but initdb is missing (postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """A database of its own for one test."""
    return postgres.create_database(f"t{os.getpid()}_{next(_names)}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"
