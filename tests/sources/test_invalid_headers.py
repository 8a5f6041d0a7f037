"""Consumed messages whose headers `send` would refuse are dead-lettered `invalid` before
any transport sees them, and acknowledged once that is durable: a publisher to a stream
consumed into an HTTP transport cannot smuggle a request to the downstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from surelay import Runtime, RuntimeConfig
from surelay.sources import JetStreamSource
from surelay.transports import AsyncHttpTransport, HttpTransport
from tests.nats_server import NatsServer, add_stream, wait_for
from tests.sources.test_jetstream import consumer_pending, publish
from tests.transports.framing_server import FramingServer

SMUGGLED = b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: internal\r\n\r\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as running:
        add_stream(running.url, name="ORDERS", subjects=["orders.>"])
        yield running


@pytest.mark.parametrize("kind", [HttpTransport, AsyncHttpTransport], ids=["sync", "async"])
def test_a_publisher_cannot_smuggle_a_request_through_consume(
    server: NatsServer, tmp_path: Path, kind: type[HttpTransport | AsyncHttpTransport]
) -> None:
    publish(
        server.url,
        [
            ("orders.a", b"first", {"Nats-Msg-Id": "m1"}),
            ("orders.a", SMUGGLED, {"Nats-Msg-Id": "m2", "Transfer-Encoding": "chunked"}),
            ("orders.a", b"routed", {"Nats-Msg-Id": "m3", "Host": "internal"}),
            ("orders.a", b"hop", {"Nats-Msg-Id": "m4", "Proxy-Authorization": "Basic x"}),
            ("orders.a", b"last", {"Nats-Msg-Id": "m5", "X-Fine": "yes"}),
        ],
    )
    hooked: list[bytes] = []
    config = RuntimeConfig(on_dead_letter=lambda letter: hooked.append(letter.payload))
    with FramingServer() as downstream:
        with Runtime.open(tmp_path / "d", transports={}, config=config) as rt:
            rt.consume(
                JetStreamSource(server.url, "ORDERS", durable="hooks"),
                kind(downstream.url + "/hook"),
                name="hooks",
            )
            wait_for(lambda: len(rt.dead_letters.list()) == 3, 30, "the dead letters")
            assert downstream.wait_for(2)
            assert rt.flush(10)
            wait_for(lambda: consumer_pending(server.url, "hooks") == 0, 10, "every ack")
            wait_for(lambda: len(hooked) == 3, 10, "the hook of each dead letter")
            stats = rt.stats()
            letters = rt.dead_letters.list()
        requests = list(downstream.requests)
    assert sorted((r.method, r.target, r.body) for r in requests) == [
        ("POST", "/hook", b"first"),
        ("POST", "/hook", b"last"),
    ]  # (no key: no order between them)
    assert {r.headers["host"] for r in requests} == {downstream.authority}
    assert [r.headers.get("x-fine") for r in requests if r.body == b"last"] == ["yes"]
    assert stats.received == 5
    assert stats.dead_lettered == 3
    refused = {
        letter.payload: (letter.reason_class, letter.transport, letter.attempts, letter.reason)
        for letter in letters
    }
    assert set(refused) == {SMUGGLED, b"routed", b"hop"} == set(hooked)
    for payload, header in [
        (SMUGGLED, "Transfer-Encoding"),
        (b"routed", "Host"),
        (b"hop", "Proxy-Authorization"),
    ]:
        reason_class, transport, attempts, reason = refused[payload]
        assert (reason_class, transport, attempts) == ("invalid", "hooks", 0)
        assert f"header '{header}' is refused" in reason
    smuggler = next(letter for letter in letters if letter.payload == SMUGGLED)
    assert smuggler.headers["Transfer-Encoding"] == "chunked"  # kept, for the operator
    assert smuggler.headers["nats-stream"] == "ORDERS"
    assert smuggler.idempotency_key == "hooks/m2"
