"""The console's cancel button on a pending replay request: a POST with the form's
secret, refused from elsewhere, and only while no runtime has taken the request."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from surelay.console.app import ConsoleSettings, create_app
from surelay.storage.store import Store
from tests.cli.test_dlq import surelay_json
from tests.cli.test_dlq_requests import dead_letter


@pytest.fixture
def pending(tmp_path: Path) -> tuple[Path, str]:
    """A directory with a pending replay request (no runtime runs there)."""
    path = tmp_path / "data"
    dead = dead_letter(path, "mail")
    return path, surelay_json("dlq", "replay", "--path", str(path), dead)["request_id"]


def client(store: Store, **settings: object) -> Iterator[TestClient]:
    app = create_app(ConsoleSettings(store.path, **settings), store)  # type: ignore[arg-type]
    with TestClient(app, base_url="http://127.0.0.1:8787") as test_client:
        yield test_client


def status_of(store: Store, request_id: str) -> str:
    with store.read() as txn:
        request = store.replay_requests.get(txn, request_id)
    assert request is not None
    return request.status


def test_a_pending_replay_is_cancelled_with_the_button(pending: tuple[Path, str]) -> None:
    path, request_id = pending
    with Store.open(path, create=False) as store:
        cancel_with_the_button(store, request_id)


def cancel_with_the_button(store: Store, request_id: str) -> None:
    for web in client(store):
        page = web.get(f"/replays/{request_id}")
        assert page.status_code == 200 and 'id="cancel"' in page.text
        secret = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert secret is not None
        url = f"/replays/{request_id}/cancel"
        assert web.post(url, data={"csrf": "guess"}).status_code == 403
        elsewhere = web.post(
            url, data={"csrf": secret.group(1)}, headers={"Origin": "http://evil.test"}
        )
        assert elsewhere.status_code == 403
        assert status_of(store, request_id) == "pending"
        done = web.post(url, data={"csrf": secret.group(1)}, follow_redirects=False)
        assert (done.status_code, done.headers["location"]) == (303, f"/replays/{request_id}")
        assert status_of(store, request_id) == "cancelled"
        shown = web.get(f"/replays/{request_id}")
        assert "cancelled" in shown.text and 'id="cancel"' not in shown.text
        again = web.post(url, data={"csrf": secret.group(1)})
        assert again.status_code == 409 and "not pending" in again.text
        missing = web.post("/replays/01NOSUCH/cancel", data={"csrf": secret.group(1)})
        assert missing.status_code == 404


def test_a_read_only_console_has_no_cancel_button(pending: tuple[Path, str]) -> None:
    path, request_id = pending
    with Store.open(path, create=False, readonly=True) as store:
        for web in client(store, read_only=True):
            assert 'id="cancel"' not in web.get(f"/replays/{request_id}").text
            refused = web.post(f"/replays/{request_id}/cancel", data={"csrf": "x"})
            assert refused.status_code == 403
        assert status_of(store, request_id) == "pending"
