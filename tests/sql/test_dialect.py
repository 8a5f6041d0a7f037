"""The SQL text of an outbox: placeholders rendered per driver, statements only from a
checked table name."""

from __future__ import annotations

import re
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surelay.sql.dialect import COLUMNS, Dialect, parse_url, render

names = st.from_regex(r"[a-z_0-9]{1,12}", fullmatch=True)
plain = st.text(alphabet=st.characters(exclude_characters="{}$%:"), max_size=8)
templates = st.lists(st.tuples(plain, names), max_size=8).map(
    lambda parts: (parts, "".join(f"{text}{{{name}}}" for text, name in parts) + "end")
)


@given(templates)
def test_every_style_renders_every_placeholder_in_order(
    template: tuple[list[tuple[str, str]], str],
) -> None:
    parts, sql = template
    order = tuple(name for _, name in parts)
    expected = {
        "named": "".join(f"{text}:{name}" for text, name in parts) + "end",
        "pyformat": "".join(f"{text}%({name})s" for text, name in parts) + "end",
        "format": "".join(f"{text}%s" for text, _ in parts) + "end",
        "numeric": "".join(f"{text}${i}" for i, (text, _) in enumerate(parts, 1)) + "end",
        "qmark": "".join(f"{text}?" for text, _ in parts) + "end",
    }
    for style, text in expected.items():
        assert render(sql, style) == (text, order)


def test_an_unknown_style_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown parameter style 'dollar'"):
        render("SELECT {x}", "dollar")


@pytest.mark.parametrize("rows", [1, 2, 7])
def test_an_insert_of_n_rows_names_each_column_of_each_row_once(rows: int) -> None:
    statement, order = render(Dialect("sqlite", "jobs").insert(rows), "named")
    assert order == tuple(f"{c}_{i}" for i in range(rows) for c in COLUMNS)
    assert statement.startswith(f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES (")
    with sqlite3.connect(":memory:") as conn:
        conn.executescript(Dialect("sqlite", "jobs").ddl())
        conn.execute(statement, dict.fromkeys(order, 1))
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (rows,)


@given(st.text(max_size=60))
def test_only_a_plain_identifier_becomes_a_table_name(table: str) -> None:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,47}", table):
        dialect = Dialect("postgresql", table)
        assert dialect.leases == f"{table}_leases"
        assert dialect.relays == f"{table}_relays"
    else:
        with pytest.raises(ValueError, match="plain SQL identifier"):
            Dialect("postgresql", table)


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_the_ddl_names_only_its_own_tables(kind: str) -> None:
    ddl = Dialect(kind, "jobs").ddl()  # type: ignore[arg-type]
    created = set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", ddl))
    waiting = {"jobs_idle"} if kind == "postgresql" else set()  # (SQLite has no NOTIFY)
    assert created == {"jobs", "jobs_leases", "jobs_relays"} | waiting
    assert "orders" not in ddl


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("postgresql+asyncpg://u@db/app?ssl=require", "ssl"),
        ("postgresql://u@db/app?sslmode=require&ssl=true", "ssl"),
        (
            "postgresql+asyncpg://u@db/app?prepared_statement_cache_size=0",
            "prepared_statement_cache_size",
        ),
    ],
)
def test_a_postgres_url_with_a_drivers_parameter_is_refused_naming_it(url: str, name: str) -> None:
    with pytest.raises(ValueError, match=f"url parameter '{name}' is a driver's"):
        parse_url(url)


def test_a_postgres_url_with_libpq_parameters_passes() -> None:
    url = "postgresql+psycopg://u@db/app?sslmode=require&options=-csearch_path%3Da"
    assert parse_url(url) == (
        "postgresql",
        "postgresql://u@db/app?sslmode=require&options=-csearch_path%3Da",
    )


@pytest.mark.parametrize("url", ["sqlite:///x.db?mode=ro", "sqlite:////tmp/x.db?timeout=5"])
def test_a_sqlite_url_with_parameters_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="a SQLite url takes no parameters"):
        parse_url(url)
