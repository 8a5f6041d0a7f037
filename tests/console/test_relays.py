"""The console overview shows each SQL outbox relay a runtime published, escaped."""

from __future__ import annotations

import html
import re
from pathlib import Path

from starlette.testclient import TestClient

from surelay.console import ConsoleSettings, create_app
from tests.cli.test_dlq import HOSTILE
from tests.cli.test_stats import MARKUP, hostile_relay, relayed_directory


def overview(path: Path) -> str:
    app = create_app(ConsoleSettings(path))
    with TestClient(app, base_url="http://127.0.0.1:8787") as web:
        page = web.get("/")
    assert page.status_code == 200
    return page.text


def relay_cells(page: str) -> list[str]:
    table = re.search(r'<table id="relays">(.*?)</table>', page, re.S)
    assert table, "no relays table in the overview"
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)
    assert len(rows) == 2  # the header and one relay
    return [c.strip() for c in re.findall(r"<td>(.*?)</td>", rows[1], re.S)]


def test_the_overview_shows_each_relay(tmp_path: Path) -> None:
    path = relayed_directory(tmp_path)
    cells = relay_cells(overview(path))
    slot, name, table, partitions, in_flight, _waiting, _oldest, relayed, deleted, error = cells
    assert (slot, table, partitions, in_flight, relayed, deleted) == (
        "0",
        "sqlite surelay_outbox",
        "0",
        "0",
        "3",
        "3",
    )
    assert name.count(":") == 2  # host:pid:nonce
    assert "none" in error


def test_the_overview_escapes_what_the_relay_reported(tmp_path: Path) -> None:
    path = relayed_directory(tmp_path)
    hostile_relay(path)
    page = overview(path)
    assert MARKUP not in page and html.escape(MARKUP) in page
    cells = relay_cells(page)
    assert html.unescape(cells[1]) == f"host{HOSTILE}:1:ab"
    assert html.unescape(cells[2]) == f"sqlite t{HOSTILE}"
    assert cells[5] == "7"
    assert (
        html.unescape(cells[9]) == f'<span class="bad">OperationalError: {HOSTILE} {MARKUP}</span>'
    )

    assert "<" not in re.sub(r"</?span[^>]*>", "", cells[9])  # nothing but its own markup
