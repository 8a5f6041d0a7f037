"""The console over HTTP (Starlette's TestClient on the real app and a real store)."""

from __future__ import annotations

import html
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from surelay import Outcome, PermanentError, RetryPolicy, Runtime, RuntimeConfig
from surelay.console import ConsoleSettings, create_app
from surelay.envelope import Envelope


def refuse(envelope: Envelope) -> None:
    raise PermanentError(f"HTTP 422 for {envelope.payload.decode()}")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A directory with five dead letters (keys k0, k1) and no runtime running."""
    path = tmp_path / "data"
    config = RuntimeConfig(retry=RetryPolicy(max_attempts=1))
    with Runtime.open(path, transports={"sms": refuse}, config=config) as rt:
        for i in range(5):
            receipt = rt.send("sms", b'{"n": %d}' % i, key=f"k{i % 2}")
            assert receipt.wait(10) is Outcome.DEAD_LETTERED
    return path


def client(path: Path, **settings: object) -> Iterator[TestClient]:
    app = create_app(ConsoleSettings(path, **settings))  # type: ignore[arg-type]
    with TestClient(app, base_url="http://127.0.0.1:8787") as test_client:
        yield test_client


@pytest.fixture
def web(data: Path) -> Iterator[TestClient]:
    yield from client(data)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no form secret in the page"
    return found.group(1)


def test_the_pages_render(web: TestClient) -> None:
    overview = web.get("/")
    assert overview.status_code == 200
    assert "Overview" in overview.text and "permanent" in overview.text
    listed = web.get("/dead-letters", params={"key": "k0"})
    ids = re.findall(r'href="/dead-letters/([0-9A-Z]{26})"', listed.text)
    assert len(ids) == 3
    record = web.get(f"/dead-letters/{ids[0]}")
    assert record.status_code == 200
    shown = html.unescape(record.text)
    assert '"n": 0' in shown and "HTTP 422 for" in shown
    assert web.get("/dead-letters/NOPE").status_code == 404
    assert (
        web.get("/dead-letters", params={"since": "1h", "until": "2099-01-01"}).status_code == 200
    )


def test_bad_query_parameters_get_a_400_page_that_says_what_was_wrong(web: TestClient) -> None:
    cases = {
        "status": ("bogus", "status must be one of"),
        "reason_class": ("nope", "reason_class must be one of"),
        "limit": ("0", "limit must be a whole number from 1"),
        "since": ("yesterday", "since must be a UTC time"),
    }
    for name, (value, says) in cases.items():
        answer = web.get("/dead-letters", params={name: value})
        assert answer.status_code == 400, name
        assert says in answer.text
    rate = web.get("/confirm/replay", params={"rate": "-1"})
    assert rate.status_code == 400 and "rate must be records per second" in rate.text
    assert web.get("/confirm/explode").status_code == 404


def test_an_action_is_confirmed_first_and_needs_the_forms_secret(
    web: TestClient, data: Path
) -> None:
    ids = re.findall(r'/dead-letters/([0-9A-Z]{26})"', web.get("/dead-letters").text)
    confirm = web.get("/confirm/archive", params={"id": ids[:2]})
    assert confirm.status_code == 200
    assert re.search(r'id="count">2<', confirm.text)  # says what it will touch
    secret = csrf_of(confirm.text)
    form = {"id": ids[:2], "status": "dead"}
    assert web.post("/actions/archive", data=form).status_code == 403  # no secret
    wrong = web.post("/actions/archive", data={**form, "csrf": "guess"})
    assert wrong.status_code == 403 and "secret is missing or wrong" in wrong.text
    cross = web.post(
        "/actions/archive", data={**form, "csrf": secret}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert cross.status_code == 403 and "another site" in cross.text
    elsewhere = web.post(
        "/actions/archive", data={**form, "csrf": secret}, headers={"Origin": "http://evil.test"}
    )
    assert elsewhere.status_code == 403
    done = web.post(
        "/actions/archive",
        data={**form, "csrf": secret},
        headers={"Origin": "http://127.0.0.1:8787", "Sec-Fetch-Site": "same-origin"},
    )
    assert done.status_code == 200 and "archived 2 dead letter(s)" in done.text
    purge = web.get("/confirm/purge")
    assert re.search(r'id="count">2<', purge.text)
    purged = web.post("/actions/purge", data={"status": "archived", "csrf": csrf_of(purge.text)})
    assert "purged 2 archived dead letter(s)" in purged.text


def test_a_replay_is_recorded_and_its_progress_shown(data: Path) -> None:
    for web in client(data):  # no runtime runs: the request waits
        ids = re.findall(r'/dead-letters/([0-9A-Z]{26})"', web.get("/dead-letters").text)
        confirm = web.get("/confirm/replay", params={"id": ids[0]})
        assert "No runtime runs on this directory now" in confirm.text
        answer = web.post(
            "/actions/replay",
            data={"id": ids[0], "csrf": csrf_of(confirm.text)},
            follow_redirects=False,
        )
        assert answer.status_code == 303
        progress_page = answer.headers["location"]
        assert 'id="replay-status">pending<' in web.get(progress_page).text
    delivered: list[bytes] = []
    with Runtime.open(data, transports={"sms": lambda e: delivered.append(e.payload)}) as rt:
        # a console in the host's own process shares the runtime's store
        app = create_app(ConsoleSettings(data), store=rt._store)
        with TestClient(app, base_url="http://127.0.0.1:8787") as web:
            deadline = time.monotonic() + 30
            while 'id="replay-status">done<' not in web.get(progress_page).text:
                assert time.monotonic() < deadline, "the replay did not end"
                threading.Event().wait(0.05)  # another actor's progress: polled
            assert 'id="replayed">1<' in web.get(progress_page).text
    assert delivered == [b'{"n": 0}']


def test_read_only_hides_and_refuses_actions(data: Path) -> None:
    for web in client(data, read_only=True):
        listed = web.get("/dead-letters")
        assert "Replay selected" not in listed.text and 'type="checkbox"' not in listed.text
        assert web.get("/confirm/replay").status_code == 403
        ids = re.findall(r'/dead-letters/([0-9A-Z]{26})"', listed.text)
        refused = web.post("/actions/archive", data={"id": ids[0], "csrf": "x"})
        assert refused.status_code == 403 and "read-only" in refused.text


def test_a_token_is_required_when_set(data: Path) -> None:
    for web in client(data, token="s3cret"):
        assert web.get("/").status_code == 401
        assert web.get("/", params={"token": "wrong"}).status_code == 401
        first = web.get("/", params={"token": "s3cret"})
        assert first.status_code == 200  # and a cookie for what follows
        assert web.get("/dead-letters").status_code == 200
    for web in client(data, token="s3cret"):
        assert web.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_the_command_refuses_an_open_address_without_a_token(data: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "surelay.cli", "console", "--path", str(data), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert "refuses to listen on 0.0.0.0 without an access token" in done.stderr


def test_another_host_name_is_turned_away_without_a_token(web: TestClient) -> None:
    """A page of another site that made its name resolve to 127.0.0.1 (DNS rebinding)."""
    rebound = web.get("/", headers={"Host": "attacker.example:8787"})
    assert rebound.status_code == 400 and "its own address only" in rebound.text
    assert web.get("/", headers={"Host": "localhost:8787"}).status_code == 200


def test_the_token_moves_from_the_address_into_a_cookie(data: Path) -> None:
    for web in client(data, token="s3cret"):
        first = web.get(
            "/dead-letters", params={"token": "s3cret", "key": "k0"}, follow_redirects=False
        )
        assert first.status_code == 303
        assert first.headers["location"] == "/dead-letters?key=k0"
        assert "httponly" in first.headers["set-cookie"].lower()
        assert web.get("/dead-letters", params={"key": "k0"}).status_code == 200


def test_replaying_the_filter_at_a_rate_records_the_filter_and_the_rate(web: TestClient) -> None:
    confirm = web.get("/confirm/replay", params={"key": "k1", "rate": "5"})
    assert re.search(r'id="count">2<', confirm.text)
    assert 'id="rate" size="6" value="5.0"' in confirm.text  # the rate can be set here
    answer = web.post(
        "/actions/replay",
        data={"key": "k1", "status": "dead", "rate": "2.5", "csrf": csrf_of(confirm.text)},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    request_id = answer.headers["location"].rsplit("/", 1)[1]
    shown = web.get(answer.headers["location"]).text
    assert "at most 2.5/s" in shown and request_id in shown


def test_time_filters_purge_counts_and_the_record_views(data: Path) -> None:
    for web in client(data, trace_url="http://traces.test/trace/{trace_id}"):
        assert len(re.findall(r'/dead-letters/[0-9A-Z]{26}"', web.get("/dead-letters").text)) == 5
        future = web.get("/dead-letters", params={"since": "2099-01-01"})
        assert "No dead letters match" in future.text  # a time range really filters
        past = web.get("/dead-letters", params={"until": "2000-01-01T00:00"})
        assert "No dead letters match" in past.text
        ids = re.findall(r'/dead-letters/([0-9A-Z]{26})"', web.get("/dead-letters").text)
        record = web.get(f"/dead-letters/{ids[0]}").text
        assert 'id="payload-hex">7b 22 6e 22' in record  # {"n" in hex
        assert "Never replayed" in record
        secret = csrf_of(web.get("/confirm/archive", params={"id": ids}).text)
        answer = web.post("/actions/purge", data={"status": "replaying", "csrf": secret})
        assert answer.status_code == 400 and "replaying records cannot be purged" in answer.text
        web.post("/actions/archive", data={"id": ids, "status": "dead", "csrf": secret})
        young = web.get("/confirm/purge", params={"status": "archived", "older_than": "1d"})
        assert re.search(r'id="count">0<', young.text)  # none is a day old
        assert re.search(r'id="count">5<', web.get("/confirm/purge").text)
