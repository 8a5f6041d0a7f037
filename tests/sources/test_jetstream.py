"""rt.consume with JetStreamSource, against a real nats-server started per test."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from surelay import Envelope, PermanentError, PressurePolicy, Runtime, RuntimeConfig
from surelay.sources import JetStreamSource
from surelay.sources.jetstream import _stream_sequence
from tests.helpers import Gate, Recorder
from tests.nats_server import NatsServer, add_stream, connect, run, wait_for


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as running:
        add_stream(running.url, name="ORDERS", subjects=["orders.>"], duplicate_window=1.0)
        yield running


def publish(url: str, messages: list[tuple[str, bytes, dict[str, str]]]) -> None:
    async def go() -> None:
        client = await connect(url)
        js = client.jetstream()
        for subject, data, headers in messages:
            await js.publish(subject, data, headers=headers or None)
        await client.close()

    run(go)


def consumer_pending(url: str, durable: str) -> int:
    async def ask() -> int:
        client = await connect(url)
        try:
            info = await client.jetstream().consumer_info("ORDERS", durable)
            return int(info.num_pending) + int(info.num_ack_pending)
        finally:
            await client.close()

    return run(ask)


def order_of(envelope: Envelope) -> str | None:
    return envelope.headers.get("order")


def test_messages_reach_the_handler_in_order_per_key(server: NatsServer, tmp_path: Path) -> None:
    messages = [
        (f"orders.o{i % 3}", b"%d" % i, {"Nats-Msg-Id": f"m{i}", "order": f"o{i % 3}"})
        for i in range(60)
    ]
    publish(server.url, messages)
    handler = Recorder()
    with Runtime.open(tmp_path / "d", transports={"noop": Recorder()}) as rt:
        rt.consume(
            JetStreamSource(server.url, "ORDERS", durable="billing"),
            handler,
            name="billing",
            key=order_of,
        )
        wait_for(lambda: len(handler.delivered) >= 60, 30, "the handler to get everything")
        assert rt.flush(10)
        assert rt.stats().received == 60
        health = rt.health()["sources"]["billing"]
        assert health["ok"] and health["taken"] == 60
    for order in ("o0", "o1", "o2"):
        assert handler.payloads(order) == [b"%d" % i for i in range(60) if f"o{i % 3}" == order]
    first = handler.delivered[0]
    assert first.transport == "billing"
    assert first.idempotency_key.startswith("billing/m")
    assert first.headers["nats-stream"] == "ORDERS" and first.headers["nats-subject"]
    assert consumer_pending(server.url, "billing") == 0  # every message acknowledged


def test_one_message_id_reaches_the_handler_once_across_redeliveries_and_restarts(
    server: NatsServer, tmp_path: Path
) -> None:
    handler = Recorder()
    source = JetStreamSource(server.url, "ORDERS", durable="billing")
    publish(server.url, [("orders.a", b"first", {"Nats-Msg-Id": "same"})])
    with Runtime.open(tmp_path / "d", transports={"noop": Recorder()}) as rt:
        rt.consume(source, handler, name="billing")
        wait_for(lambda: len(handler.delivered) == 1, 30, "the first message")
    threading.Event().wait(1.5)  # past the stream's 1 s duplicate window: stored again
    publish(
        server.url,
        [
            ("orders.a", b"again", {"Nats-Msg-Id": "same"}),
            ("orders.a", b"new", {"Nats-Msg-Id": "n"}),
        ],
    )
    with Runtime.open(tmp_path / "d", transports={"noop": Recorder()}) as rt:
        rt.consume(
            JetStreamSource(server.url, "ORDERS", durable="billing"), handler, name="billing"
        )
        wait_for(lambda: len(handler.delivered) == 2, 30, "the new message")
        wait_for(lambda: rt.stats().duplicates == 1, 30, "the inbox to drop the redelivery")
        assert rt.flush(10)
    assert handler.payloads() == [b"first", b"new"]
    assert consumer_pending(server.url, "billing") == 0


def test_handler_failures_are_dead_lettered_with_their_source_and_replayed(
    server: NatsServer, tmp_path: Path
) -> None:
    broken = threading.Event()
    broken.set()

    def handler(envelope: Envelope) -> None:
        if broken.is_set():
            raise PermanentError("the ledger refuses it")

    publish(server.url, [("orders.x", b"pay", {"Nats-Msg-Id": "p1"})])
    with Runtime.open(tmp_path / "d", transports={"noop": Recorder()}) as rt:
        rt.consume(JetStreamSource(server.url, "ORDERS", durable="ledger"), handler, name="ledger")
        wait_for(lambda: len(rt.dead_letters.list()) == 1, 30, "the dead letter")
        (dead,) = rt.dead_letters.list()
        assert dead.transport == "ledger" and dead.payload == b"pay"
        assert dead.headers["nats-stream"] == "ORDERS"
        assert dead.headers["nats-sequence"] == "1"
        assert dead.headers["nats-subject"] == "orders.x"
        broken.clear()  # the cause is fixed
        report = rt.dead_letters.replay([dead.id])
        assert report.replayed == 1
    assert consumer_pending(server.url, "ledger") == 0


def test_a_slow_handler_leaves_the_messages_in_the_stream(
    server: NatsServer, tmp_path: Path
) -> None:
    gate = Gate()
    handler = Recorder(gate)
    publish(server.url, [("orders.s", b"%d" % i, {}) for i in range(500)])
    config = RuntimeConfig(pressure=PressurePolicy(capacity=50))
    with Runtime.open(tmp_path / "d", transports={"noop": Recorder()}, config=config) as rt:
        rt.consume(JetStreamSource(server.url, "ORDERS", durable="slow"), handler, name="slow")
        assert gate.entered.wait(30)
        wait_for(lambda: rt.stats().received >= 40, 30, "the runtime to fill up")
        threading.Event().wait(0.5)  # a while for it to take more, were it to
        assert rt.stats().in_flight <= 50  # surelay holds at most its bound...
        assert consumer_pending(server.url, "slow") >= 440  # ...the stream holds the rest
        held = rt.health()["sources"]["slow"]
        assert held["ok"] and held["last_error"] is None  # holding off is not a failure
        gate.open()
        wait_for(lambda: len(handler.delivered) >= 500, 60, "everything, once the gate opens")
        assert rt.flush(10)
    assert sorted(handler.payloads()) == sorted(b"%d" % i for i in range(500))


def test_a_coroutine_handler_and_an_unreachable_source(tmp_path: Path) -> None:
    seen: list[bytes] = []

    async def handler(envelope: Envelope) -> None:
        await asyncio.sleep(0)
        seen.append(envelope.payload)

    with NatsServer(tmp_path / "nats", port=None) as server:
        url = server.url
        server.kill()  # not there when the runtime starts consuming
        with Runtime.open(tmp_path / "d", transports={"noop": Recorder()}) as rt:
            rt.consume(JetStreamSource(url, "ORDERS", durable="late"), handler, name="late")
            wait_for(
                lambda: rt.health()["sources"]["late"]["last_error"] is not None,
                30,
                "the failure to show",
            )
            assert not rt.health()["sources"]["late"]["ok"]
            server.start()  # the broker comes up: the consumer finds it by itself
            add_stream(url, name="ORDERS", subjects=["orders.>"])
            publish(url, [("orders.l", b"late", {})])
            wait_for(lambda: seen == [b"late"], 60, "the message, once the broker is up")
            assert rt.health()["sources"]["late"]["ok"]


def test_bad_arguments_are_refused_clearly(server: NatsServer, tmp_path: Path) -> None:
    source = JetStreamSource(server.url, "ORDERS", durable="d")
    with Runtime.open(tmp_path / "d", transports={"noop": Recorder()}) as rt:
        with pytest.raises(ValueError, match="'noop' is taken"):
            rt.consume(source, Recorder(), name="noop")
        with pytest.raises(TypeError, match="source must be a surelay source"):
            rt.consume(object(), Recorder(), name="x")
        with pytest.raises(TypeError, match="handler must be callable"):
            rt.consume(source, "nope", name="x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="name must be"):
            rt.consume(source, Recorder(), name="")
    with pytest.raises(ValueError, match="durable must be"):
        JetStreamSource(server.url, "ORDERS", durable="")
    with pytest.raises(ValueError, match="subjects must be"):
        JetStreamSource(server.url, "ORDERS", durable="d", subjects="orders.>")  # type: ignore[arg-type]


def test_a_message_with_a_status_header_of_its_own_is_taken(
    server: NatsServer, tmp_path: Path
) -> None:
    handler = Recorder()
    publish(server.url, [("orders.s", b"mine", {"Status": "200", "Nats-Msg-Id": "st"})])
    with Runtime.open(tmp_path / "d", transports={}) as rt:
        rt.consume(JetStreamSource(server.url, "ORDERS", durable="st"), handler, name="st")
        wait_for(lambda: handler.payloads() == [b"mine"], 30, "the message")


def test_a_consumer_surelay_cannot_rely_on_is_refused_clearly(
    server: NatsServer, tmp_path: Path
) -> None:
    async def make() -> None:
        client = await connect(server.url)
        config = ConsumerConfig(durable_name="all", ack_policy=AckPolicy.ALL)
        await client.jetstream().add_consumer("ORDERS", config)
        await client.close()

    run(make)
    with Runtime.open(tmp_path / "d", transports={}) as rt:
        rt.consume(JetStreamSource(server.url, "ORDERS", durable="all"), Recorder(), name="x")
        wait_for(
            lambda: "ack policy 'all'" in (rt.health()["sources"]["x"]["last_error"] or ""),
            30,
            "the refusal to show",
        )
        assert not rt.health()["sources"]["x"]["ok"]


def test_the_stream_sequence_is_read_from_every_form_of_ack_subject() -> None:
    forms = [
        "$JS.ACK.S.c.1.42.7.1700000000000000000.3",  # without a domain
        "$JS.ACK.dom.HASH.S.c.1.42.7.1700000000000000000.3",  # a domain, no token
        "$JS.ACK.dom.HASH.S.c.1.42.7.1700000000000000000.3.tok",  # and a token
    ]
    for reply in forms:
        assert _stream_sequence(SimpleNamespace(reply=reply)) == 42, reply


def test_a_replay_asked_before_the_consumer_is_added_waits_for_it(
    server: NatsServer, tmp_path: Path
) -> None:
    """The CLI asks to replay a consumed message while no runtime runs; the runtime
    that opens next must not refuse it before `rt.consume` has added the handler."""
    broken = threading.Event()
    broken.set()

    def handler(envelope: Envelope) -> None:
        if broken.is_set():
            raise PermanentError("down")

    publish(server.url, [("orders.r", b"late", {"Nats-Msg-Id": "r1"})])
    with Runtime.open(tmp_path / "d", transports={}) as rt:
        rt.consume(JetStreamSource(server.url, "ORDERS", durable="r"), handler, name="ledger")
        wait_for(lambda: len(rt.dead_letters.list()) == 1, 30, "the dead letter")
        (dead,) = rt.dead_letters.list()
    ask = subprocess.run(
        [
            sys.executable,
            "-m",
            "surelay.cli",
            "dlq",
            "replay",
            "--path",
            str(tmp_path / "d"),
            dead.id,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ask.returncode == 0, ask.stderr
    broken.clear()
    with Runtime.open(tmp_path / "d", transports={}) as rt:
        threading.Event().wait(0.6)  # the replay coordinator looks (every 0.25 s) first
        rt.consume(JetStreamSource(server.url, "ORDERS", durable="r"), handler, name="ledger")
        wait_for(lambda: rt.dead_letters.get(dead.id).status == "replayed", 30, "the replay")


def test_a_missing_stream_is_named_with_what_to_do(server: NatsServer, tmp_path: Path) -> None:
    with Runtime.open(tmp_path / "d", transports={}) as rt:
        rt.consume(JetStreamSource(server.url, "INVOICES", durable="i"), Recorder(), name="i")
        wait_for(lambda: rt.health()["sources"]["i"]["last_error"] is not None, 30, "the failure")
        error = rt.health()["sources"]["i"]["last_error"]
        assert "no stream 'INVOICES'" in error and "nats stream add INVOICES" in error
        assert not rt.health()["sources"]["i"]["ok"]
