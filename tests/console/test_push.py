"""The console's push page over HTTP: devices online, what waits longest, a pushed
message's status by id, names escaped."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from surelay import Runtime
from surelay.push import PushConfig
from tests.console.test_app import client as pages

SECRET = "push-test-secret-0123456789"
client = contextmanager(pages)


def test_the_push_page_shows_who_waits_and_finds_a_message(tmp_path: Path) -> None:
    with Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET)) as rt:
        old = rt.push.send("<b>ann</b>", b"x")
        rt.push.send("bob", b"y")
        rt.push.send("bob", b"z")
        done = rt.push.send("cy", b"w")
        with rt._store.env.write() as txn:
            rt.push.mailboxes.ack(txn, "cy", "phone", 1, rt.push.now())
            rt.push.mailboxes.claim(txn, "cy", "phone", slot=9, connection="c1", now=1.0)
    with client(tmp_path) as web:
        page = web.get("/push")
        assert page.status_code == 200
        text = page.text
        assert 'id="online">1<' in text and 'id="pending">3<' in text
        assert text.index("&lt;b&gt;ann&lt;/b&gt;") < text.index("bob")  # oldest first
        assert "<b>ann</b>" not in text
        assert ">cy<" not in text  # nothing waits for cy
        found = web.get("/push", params={"q": old.msg_id})
        assert 'id="state">queued<' in found.text
        delivered = web.get("/push", params={"q": done.msg_id})
        assert 'id="state">delivered<' in delivered.text and "phone" in delivered.text
        assert 'id="not-found"' in web.get("/push", params={"q": "nope"}).text
        assert web.get("/push", params={"q": "x" * 10_000}).status_code == 400
        assert 'href="/push"' in web.get("/").text


def test_a_directory_with_nothing_pushed(tmp_path: Path) -> None:
    Runtime.open(tmp_path, transports={}).close()
    with client(tmp_path) as web:
        page = web.get("/push")
        assert "Every pushed message has reached a device." in page.text
