"""The console over HTTP (Starlette's TestClient on the real app and a real store)."""

from __future__ import annotations

import contextlib
import html
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from surelay import Outcome, PermanentError, RetryPolicy, Runtime, RuntimeConfig
from surelay.console import ConsoleSettings, create_app
from surelay.envelope import Envelope
from surelay.storage.store import Store
from tests.cli.test_dlq import hostile_record
from tests.helpers import free_port, listening
from tests.nats_server import wait_for


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
    for web in client(data, token="s3cret-s3cret-s3cret"):
        assert web.get("/").status_code == 401
        assert web.get("/", params={"token": "wrong"}).status_code == 401
        first = web.get("/", params={"token": "s3cret-s3cret-s3cret"})
        assert first.status_code == 200  # and a cookie for what follows
        assert web.get("/dead-letters").status_code == 200
    for web in client(data, token="s3cret-s3cret-s3cret"):
        assert (
            web.get("/", headers={"Authorization": "Bearer s3cret-s3cret-s3cret"}).status_code
            == 200
        )


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
    for web in client(data, token="s3cret-s3cret-s3cret"):
        first = web.get(
            "/dead-letters",
            params={"token": "s3cret-s3cret-s3cret", "key": "k0"},
            follow_redirects=False,
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


# -- hostile or careless input never breaks a page or the console's safety --------------------


def test_a_deeply_nested_json_payload_is_shown_as_its_text(tmp_path: Path) -> None:
    path = tmp_path / "data"
    deep = b"[" * 100_000 + b"]" * 100_000  # the parser's recursion: a 500 on every view
    config = RuntimeConfig(retry=RetryPolicy(max_attempts=1))
    with Runtime.open(path, transports={"sms": refuse}, config=config) as rt:
        assert rt.send("sms", deep).wait(10) is Outcome.DEAD_LETTERED
        assert rt.send("sms", b'{"a": {"b": [1]}}').wait(10) is Outcome.DEAD_LETTERED
        nested, shallow = (d.id for d in rt.dead_letters.list())
    for web in client(path):
        page = web.get(f"/dead-letters/{nested}")
        assert page.status_code == 200
        assert 'id="payload-text">[[[[' in page.text and 'id="payload-json"' not in page.text
        pretty = web.get(f"/dead-letters/{shallow}").text  # shallow JSON: still pretty
        assert 'id="payload-json"' in pretty


def test_a_limit_of_thousands_of_digits_is_a_400_that_says_why(web: TestClient) -> None:
    for huge in ("9" * 5000, "0" * 6, "1" * 40):
        answer = web.get("/dead-letters", params={"limit": huge})
        assert answer.status_code == 400, huge
        assert "limit must be a whole number from 1 to 10000" in answer.text
    assert "(5000 characters)" in web.get("/dead-letters", params={"limit": "9" * 5000}).text
    assert web.get("/dead-letters", params={"limit": "10000"}).status_code == 200


def test_an_action_from_another_port_or_scheme_of_the_same_host_is_refused(
    web: TestClient,
) -> None:
    ids = re.findall(r'/dead-letters/([0-9A-Z]{26})"', web.get("/dead-letters").text)
    secret = csrf_of(web.get("/confirm/archive", params={"id": ids[0]}).text)
    form = {"id": ids[0], "status": "dead", "csrf": secret}
    for origin in ("http://127.0.0.1:9999", "https://127.0.0.1:8787", "http://127.0.0.1"):
        refused = web.post("/actions/archive", data=form, headers={"Origin": origin})
        assert refused.status_code == 403, origin
        assert f"a request from {origin} may not act here" in refused.text
    same = web.post("/actions/archive", data=form, headers={"Origin": "http://127.0.0.1:8787"})
    assert same.status_code == 200 and "archived 1 dead letter(s)" in same.text


def test_short_tokens_and_script_links_are_refused(data: Path) -> None:
    with pytest.raises(ValueError, match="token must be at least 16 characters, got 1"):
        ConsoleSettings(data, token="x")
    for bad in ("javascript:alert(1)//{trace_id}", "data:text/html,{trace_id}", "/t/{trace_id}"):
        with pytest.raises(ValueError, match="must be an http:// or https:// URL with a host"):
            ConsoleSettings(data, trace_url=bad)
    with pytest.raises(ValueError, match="must contain"):
        ConsoleSettings(data, trace_url="http://traces.test/")
    ConsoleSettings(data, token="x" * 16, trace_url="https://traces.test/t/{trace_id}")


def console_command(path: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "surelay.cli", "console", "--path", str(path), *options]


def test_the_command_refuses_a_short_token_and_a_script_link(data: Path) -> None:
    for options, option, says in (
        (("--token", "x"), "--token", "at least 16 characters, got 1"),
        (("--trace-url", "javascript:alert(1)//{trace_id}"), "--trace-url", "http:// or https://"),
        (("--trace-url", "JavaScript:{trace_id}"), "--trace-url", "http:// or https://"),
    ):
        done = subprocess.run(
            console_command(data, *options), capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 2, options
        assert option in done.stderr and says in done.stderr, done.stderr


def test_the_command_never_prints_its_token(data: Path) -> None:
    token = "a-token-of-24-characters"
    port = free_port()
    server = subprocess.Popen(
        console_command(data, "--port", str(port), "--token", token),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: listening(port) or server.poll() is not None, 30, "the console")
    finally:
        server.terminate()
        shown, _ = server.communicate(timeout=10)
    assert f"http://127.0.0.1:{port}/" in shown and "a token is set" in shown
    assert token not in shown


def test_a_trace_link_carries_the_trace_id_quoted(tmp_path: Path) -> None:
    path = tmp_path / "data"
    record = replace(hostile_record(time.time()), trace_id='../admin?x="1"')
    with Store.open(path) as store:
        store.write(lambda txn: store.dead_letters.insert(txn, record)).result()
    for web in client(path, trace_url="http://traces.test/trace/{trace_id}"):
        page = web.get(f"/dead-letters/{record.id}").text
        assert 'href="http://traces.test/trace/..%2Fadmin%3Fx%3D%221%22"' in page


def test_the_icon_and_a_layout_for_narrow_screens(web: TestClient) -> None:
    for name in ("/favicon.ico", "/favicon.svg"):
        icon = web.get(name)
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
        assert icon.text.startswith("<svg")
    page = web.get("/").text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert '<link rel="icon" href="/favicon.svg"' in page and "@media (max-width: 600px)" in page


def test_the_search_box_finds_a_messages_status(tmp_path: Path) -> None:
    path = tmp_path / "data"
    with Runtime.open(path, transports={"sms": refuse}) as rt:
        dead = rt.send("sms", b"<script>x</script>", key="k<b>", idempotency_key="order-9")
        assert dead.wait(10) is Outcome.DEAD_LETTERED
        later = rt.send("sms", b"later", delay=3600)
    with contextlib.closing(client(path)) as clients:
        web = next(clients)
        assert 'action="/messages"' in web.get("/").text  # in every page's header
        found = web.get("/messages", params={"q": dead.message_id})
        assert found.status_code == 200
        assert re.search(r'id="state">dead<', found.text)
        assert "<script>" not in found.text and "k&lt;b&gt;" in found.text
        by_key = web.get("/messages", params={"q": "order-9", "by": "idempotency_key"})
        assert dead.message_id in by_key.text
        assert re.search(
            r'id="state">scheduled<', web.get("/messages", params={"q": later.message_id}).text
        )
        missing = web.get("/messages", params={"q": "nope"})
        assert missing.status_code == 200 and 'id="not-found"' in missing.text
        assert web.get("/messages", params={"q": "x" * 5000}).status_code == 400
        assert 'id="not-found"' not in web.get("/messages").text
