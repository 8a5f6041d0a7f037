"""JetStreamTransport against a real nats-server (JetStream on), started per test."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from surelay import (
    BreakerPolicy,
    Envelope,
    Outcome,
    PermanentError,
    RetryPolicy,
    Runtime,
    RuntimeConfig,
    TransientError,
)
from surelay.transports import JetStreamTransport, subject_by_key
from tests.nats_server import NatsServer, add_stream, cluster, run, stream_messages, wait_for

FAST_RETRY = RuntimeConfig(
    retry=RetryPolicy(max_attempts=10_000, base_delay=0.05, max_delay=0.2),
    breaker=BreakerPolicy(open_for=0.2),
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as running:
        add_stream(running.url, name="ORDERS", subjects=["orders.>"], max_msg_size=1024)
        yield running


def test_a_message_is_stored_with_its_headers(server: NatsServer, tmp_path: Path) -> None:
    transport = JetStreamTransport(server.url, "orders.new")
    with Runtime.open(tmp_path / "d", transports={"js": transport}) as rt:
        receipt = rt.send(
            "js", b"paid", key="order-7", idempotency_key="pay-7", headers={"x-tenant": "a"}
        )
        assert receipt.wait(10) is Outcome.DELIVERED
    (stored,) = stream_messages(server.url, "ORDERS")
    assert stored.data == b"paid" and stored.subject == "orders.new"
    headers = stored.headers or {}
    assert headers["Nats-Msg-Id"] == "pay-7"
    assert headers["Surelay-Message-Id"] == receipt.message_id
    assert headers["Surelay-Key"] == "order-7" and headers["Surelay-Attempt"] == "1"
    assert headers["x-tenant"] == "a"


def test_a_producers_nats_headers_do_not_steer_the_stream(
    server: NatsServer, tmp_path: Path
) -> None:
    transport = JetStreamTransport(server.url, "orders.new")
    steering = {
        "Nats-Expected-Last-Sequence": "999",
        "nats-rollup": "all",
        "Nats-TTL": "1s",
        "Nats-Msg-Id": "theirs",
    }
    with Runtime.open(tmp_path / "d", transports={"js": transport}) as rt:
        first = rt.send("js", b"one", idempotency_key="one")
        second = rt.send("js", b"two", idempotency_key="two", headers=steering)
        assert first.wait(10) is second.wait(10) is Outcome.DELIVERED
    stored = stream_messages(server.url, "ORDERS")
    # both kept (a rollup honoured would have purged "one"); without a key, in any order
    assert sorted(m.data for m in stored) == [b"one", b"two"]
    (two,) = [m for m in stored if m.data == b"two"]
    headers = two.headers or {}
    assert headers["Nats-Msg-Id"] == "two"
    assert not [
        name for name in headers if name.lower().startswith("nats-") and name != "Nats-Msg-Id"
    ]


def test_the_same_envelope_published_twice_is_stored_once(server: NatsServer) -> None:
    transport = JetStreamTransport(server.url, "orders.new")
    envelope = Envelope("m1", "js", b"once", idempotency_key="k1")

    async def twice() -> None:
        await transport(envelope)
        await transport(envelope)  # a retry after a lost ack: the duplicate window drops it
        await transport.aclose()

    run(twice)
    assert [m.data for m in stream_messages(server.url, "ORDERS")] == [b"once"]


def test_permanent_and_transient_failures_say_which(server: NatsServer, tmp_path: Path) -> None:
    async def attempt(transport: JetStreamTransport, payload: bytes) -> Exception | None:
        try:
            await transport(Envelope("m", "js", payload))
            return None
        except Exception as error:
            return error
        finally:
            await transport.aclose()

    too_big = run(lambda: attempt(JetStreamTransport(server.url, "orders.x"), b"x" * 2000))
    assert isinstance(too_big, PermanentError) and "JetStream error 10054" in str(too_big)
    nowhere = run(lambda: attempt(JetStreamTransport(server.url, "invoices.x"), b"x"))
    assert isinstance(nowhere, PermanentError)
    assert "no JetStream stream captures subject 'invoices.x'" in str(nowhere)
    server.kill()
    down = run(lambda: attempt(JetStreamTransport(server.url, "orders.x", timeout=0.5), b"x"))
    assert isinstance(down, TransientError) and "cannot connect to NATS" in str(down)


def test_bad_arguments_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="servers must be"):
        JetStreamTransport([], "s")
    with pytest.raises(ValueError, match="subject must be"):
        JetStreamTransport("nats://127.0.0.1:1", "")
    for bad in (0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="timeout must be a finite number > 0"):
            JetStreamTransport("nats://127.0.0.1:1", "s", timeout=bad)
    with pytest.raises(TypeError, match="timeout must be"):
        JetStreamTransport("nats://127.0.0.1:1", "s", timeout="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="partitions must be"):
        subject_by_key("orders", 0)


def test_subject_by_key_keeps_a_key_on_one_subject() -> None:
    subject_for = subject_by_key("orders", 8)
    subjects = {subject_for(Envelope(f"m{i}", "js", b"", key="order-1")) for i in range(5)}
    assert len(subjects) == 1 and subjects.pop().startswith("orders.")
    assert subject_for(Envelope("m", "js", b"")) == "orders.0"


def _load(rt: Runtime, count: int, accepted: list[str], stop: threading.Event) -> None:
    for i in range(count):
        if stop.is_set():
            return
        receipt = rt.send("js", b"%d" % i, key=f"k{i % 10}")
        accepted.append(receipt.message_id)


def test_a_server_killed_mid_load_and_restarted_loses_nothing_and_doubles_nothing(
    server: NatsServer, tmp_path: Path
) -> None:
    transport = JetStreamTransport(server.url, "orders.new", timeout=1.0)
    accepted: list[str] = []
    with Runtime.open(tmp_path / "d", transports={"js": transport}, config=FAST_RETRY) as rt:
        stop = threading.Event()
        sender = threading.Thread(target=_load, args=(rt, 600, accepted, stop))
        sender.start()
        wait_for(lambda: len(accepted) >= 150, 30, "the first sends")
        server.kill()  # in the middle of the load
        wait_for(lambda: len(accepted) >= 300, 30, "sends while the server is down")
        server.start()
        sender.join(60)
        assert rt.flush(60), rt.stats()
    stored = stream_messages(server.url, "ORDERS")
    ids = [m.headers["Surelay-Message-Id"] for m in stored if m.headers]
    assert len(accepted) == 600
    assert sorted(ids) == sorted(accepted)  # every accepted message, each exactly once


def test_a_cluster_node_killed_mid_load_loses_nothing(tmp_path: Path) -> None:
    nodes = cluster(tmp_path / "cluster")
    for node in nodes:
        node.start()
    try:
        urls = [node.url for node in nodes]
        add_stream(urls, name="ORDERS", subjects=["orders.>"], num_replicas=3)
        transport = JetStreamTransport(urls, "orders.new", timeout=2.0)
        accepted: list[str] = []
        with Runtime.open(tmp_path / "d", transports={"js": transport}, config=FAST_RETRY) as rt:
            stop = threading.Event()
            sender = threading.Thread(target=_load, args=(rt, 600, accepted, stop))
            sender.start()
            wait_for(lambda: len(accepted) >= 200, 60, "the first sends")
            nodes[0].kill()  # perhaps the stream's leader, perhaps our connection's server
            sender.join(120)
            assert rt.flush(120), rt.stats()
        stored = stream_messages(urls[1:], "ORDERS")
        ids = [m.headers["Surelay-Message-Id"] for m in stored if m.headers]
        assert len(accepted) == 600
        assert sorted(ids) == sorted(accepted)
    finally:
        for node in nodes:
            node.kill()


def test_a_lost_server_after_connecting_and_an_oversized_payload(server: NatsServer) -> None:
    transport = JetStreamTransport(server.url, "orders.x", timeout=0.5)

    async def go() -> list[Exception | None]:
        results: list[Exception | None] = []
        for payload, kill in ((b"x" * (2 << 20), False), (b"ok", False), (b"late", True)):
            if kill:
                server.kill()
            try:
                await transport(Envelope("m", "js", payload))
                results.append(None)
            except Exception as error:
                results.append(error)
        await transport.aclose()
        return results

    too_big, fine, lost = run(go)
    assert isinstance(too_big, PermanentError) and "max_payload" in str(too_big)
    assert fine is None
    assert isinstance(lost, TransientError) and "no publish ack" in str(lost)


def test_a_clean_close_is_not_reported_as_a_lost_connection(
    server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    transport = JetStreamTransport(server.url, "orders.new")
    with (
        caplog.at_level(logging.DEBUG, "surelay.transports"),
        Runtime.open(tmp_path / "d", transports={"js": transport}) as rt,
    ):
        assert rt.send("js", b"paid").wait(10) is Outcome.DELIVERED
    said = [r for r in caplog.records if r.name == "surelay.transports"]
    assert not [r.getMessage() for r in said if r.levelno >= logging.WARNING]
    assert any("closed" in r.getMessage() for r in said)  # said, quietly
