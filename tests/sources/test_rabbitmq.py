"""rt.consume with RabbitMQSource, against a real RabbitMQ node (`tests/rabbitmq_server.py`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from surelay import (
    Envelope,
    PermanentError,
    Priority,
    Runtime,
    RuntimeConfig,
)
from surelay.sources import RabbitMQSource
from surelay.sources.rabbitmq import header_text
from surelay.transports import RabbitMQTransport
from tests.helpers import Gate, Recorder, wait_until
from tests.rabbitmq_server import RabbitMQServer, declare, delete_queue, depth, drain, publish

ROOT = Path(__file__).resolve().parents[2]


def queue_name(what: str) -> str:
    """A queue of the test's own on the worker's shared broker."""
    return f"{what}-{uuid.uuid4().hex[:12]}"


def order_of(envelope: Envelope) -> str | None:
    return envelope.headers.get("order")


def test_messages_reach_the_handler_in_order_per_key_with_headers_and_origin(
    rabbitmq: RabbitMQServer, tmp_path: Path
) -> None:
    queue = queue_name("orders")
    declare(rabbitmq.url, queue)
    publish(
        rabbitmq.url,
        queue,
        [(b"%d" % i, {"order": f"o{i % 3}", "n": i, "tags": ["a", 1]}) for i in range(90)],
        message_ids=[f"m{i}" for i in range(90)],
    )
    handler = Recorder()
    with Runtime.open(tmp_path / "d", transports={}) as rt:
        rt.consume(RabbitMQSource(rabbitmq.url, queue), handler, name="billing", key=order_of)
        wait_until(lambda: len(handler.delivered) >= 90, 30)
        assert rt.flush(10)
        assert rt.stats().received == 90
        health = rt.health()["sources"]["billing"]
        assert health["ok"] and health["connected"] and health["taken"] == 90
        assert health["source"] == f"RabbitMQ queue {queue!r}"
    for order in ("o0", "o1", "o2"):
        assert handler.payloads(order) == [b"%d" % i for i in range(90) if f"o{i % 3}" == order]
    (first,) = [e for e in handler.delivered if e.payload == b"0"]
    assert first.transport == "billing" and first.idempotency_key == "billing/m0"
    assert first.headers["n"] == "0" and first.headers["tags"] == '["a",1]'
    assert first.headers["rabbitmq-queue"] == queue
    assert first.headers["rabbitmq-message-id"] == "m0"
    assert first.headers["rabbitmq-redelivered"] == "false"
    assert first.headers["rabbitmq-routing-key"] == queue
    assert depth(rabbitmq.url, queue) == 0  # every one acknowledged


def test_a_message_seen_before_never_reaches_the_handler_twice(
    rabbitmq: RabbitMQServer, tmp_path: Path
) -> None:
    queue = queue_name("dup")
    declare(rabbitmq.url, queue)
    # the same message_id three times: twice in one batch, once after it is durable
    publish(rabbitmq.url, queue, [(b"a", {}), (b"a-again", {})], message_ids=["same", "same"])
    handler = Recorder()
    with Runtime.open(tmp_path / "d", transports={}) as rt:
        rt.consume(RabbitMQSource(rabbitmq.url, queue), handler, name="c")
        wait_until(lambda: rt.stats().duplicates == 1, 30)
        publish(rabbitmq.url, queue, [(b"a-third", {})], message_ids=["same"])
        wait_until(lambda: rt.stats().duplicates == 2, 30)
        assert rt.flush(10)
        assert rt.health()["sources"]["c"]["duplicates"] == 2
    assert [e.payload for e in handler.delivered] == [b"a"]
    assert depth(rabbitmq.url, queue) == 0  # every copy settled, none left unacknowledged


def test_a_consumer_killed_mid_load_hands_each_message_over_once(
    rabbitmq: RabbitMQServer, tmp_path: Path
) -> None:
    """SIGKILL a consuming host: what it made durable is delivered when it comes back,
    and what the broker delivers again (redelivered) is dropped by the inbox."""
    queue = queue_name("crash")
    declare(rabbitmq.url, queue)
    total = 3000
    publish(
        rabbitmq.url,
        queue,
        [(b"%d" % i, {"order": f"o{i % 7}"}) for i in range(total)],
        message_ids=[f"m{i}" for i in range(total)],
    )
    delivered = tmp_path / "delivered"

    arguments = [str(tmp_path / "d"), rabbitmq.url, queue, str(delivered)]

    def host() -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.rabbitmq_consume_host", *arguments],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert process.stdout is not None and process.stdout.readline() == "consuming\n"
        return process

    def lines() -> list[str]:
        text = delivered.read_text() if delivered.exists() else ""
        return [x for x in text.split("\n")[:-1] if x]

    first = host()
    try:
        wait_until(lambda: len(lines()) >= 500, 60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    assert len(lines()) < total, "everything was handled before the kill"
    second = host()
    try:
        wait_until(lambda: len(set(lines())) >= total, 90)
        wait_until(lambda: depth(rabbitmq.url, queue) == 0, 30)
    finally:
        second.kill()
        second.wait(10)
    handled = lines()
    assert set(handled) == {f"m{i}" for i in range(total)}
    # a message handled just before the kill, its success not yet durable, is handed
    # over again (at least once); the broker's redeliveries never are
    assert len(handled) - total <= 200, len(handled) - total


def test_handler_failures_are_dead_lettered_with_queue_and_redelivered_then_replayed(
    rabbitmq: RabbitMQServer, tmp_path: Path
) -> None:
    queue = queue_name("fail")
    declare(rabbitmq.url, queue)
    publish(rabbitmq.url, queue, [(b"bad", {"order": "o1"})], message_ids=["m-bad"])
    healthy = threading.Event()

    def handler(envelope: Envelope) -> None:
        if not healthy.is_set():
            raise PermanentError("the order service refused it")

    with Runtime.open(tmp_path / "d", transports={}) as rt:
        rt.consume(RabbitMQSource(rabbitmq.url, queue), handler, name="orders")
        wait_until(lambda: rt.stats().dead_lettered == 1, 30)
        (record,) = rt.dead_letters.list()
        assert record.transport == "orders" and record.reason_class == "permanent"
        assert record.headers["rabbitmq-queue"] == queue
        assert record.headers["rabbitmq-redelivered"] == "false"
        assert record.headers["rabbitmq-message-id"] == "m-bad"
        healthy.set()
        report = rt.dead_letters.replay(ids=[record.id])
        assert report.replayed == 1, report
    assert depth(rabbitmq.url, queue) == 0


def test_dead_letters_are_also_forwarded_to_the_dead_letter_exchange(
    rabbitmq: RabbitMQServer, tmp_path: Path
) -> None:
    queue, dlx, parked = queue_name("work"), queue_name("dlx"), queue_name("parked")
    victim = queue_name("victim")
    declare(rabbitmq.url, queue)
    declare(rabbitmq.url, victim)
    declare(rabbitmq.url, parked, exchange=dlx, exchange_type="fanout")
    steering = {"CC": [victim], "BCC": [victim]}  # would route copies to `victim`
    publish(
        rabbitmq.url,
        queue,
        [
            (b"poison", {"order": "o9", **steering}),
            (b"fine", {}),
            (b"crlf", {"bad": "a\r\nHost: evil"}),
        ],
        message_ids=["m-poison", "m-fine", "m-crlf"],
    )

    def handler(envelope: Envelope) -> None:
        if envelope.payload == b"poison":
            raise PermanentError("cannot parse\nline two")

    with Runtime.open(tmp_path / "d", transports={}) as rt:
        rt.consume(
            RabbitMQSource(rabbitmq.url, queue, dead_letter_exchange=dlx),
            handler,
            name="work",
        )
        wait_until(lambda: depth(rabbitmq.url, parked) == 2, 30)
        assert rt.flush(10)
        reasons = {r.headers.get("rabbitmq-message-id"): r for r in rt.dead_letters.list()}
        assert set(reasons) == {"m-poison", "m-crlf"}  # surelay's own dead letters stay
        assert rt.stats().delivered >= 3  # the handler's one and the two copies
    copies = {m.header.properties.message_id: m for m in drain(rabbitmq.url, parked)}
    assert set(copies) == {"m-poison", "m-crlf"}
    poison = copies["m-poison"]
    assert poison.body == b"poison"
    headers = poison.header.properties.headers
    assert headers["order"] == "o9"
    assert "CC" not in headers and "BCC" not in headers
    # the producer's own publish put one there; the forwarded copy added none
    assert depth(rabbitmq.url, victim) == 1
    (death,) = headers["x-death"]
    assert death["queue"] == queue and death["reason"] == "rejected"
    assert death["routing-keys"] == [queue] and death["count"] == 1
    assert death["surelay-reason-class"] == "permanent"
    assert "cannot parse line two" in death["surelay-reason"]  # one line
    assert headers["x-first-death-queue"] == queue
    assert headers["Surelay-Dead-Letter-Id"] == reasons["m-poison"].id
    refused = copies["m-crlf"].header.properties.headers
    assert refused["Surelay-Dead-Letter-Reason-Class"] == "invalid"
    assert "bad" not in refused  # the header refused is not sent on


def test_a_slow_handler_leaves_messages_in_the_queue(
    rabbitmq: RabbitMQServer, tmp_path: Path
) -> None:
    queue = queue_name("slow")
    declare(rabbitmq.url, queue)
    total = 4000
    publish(rabbitmq.url, queue, [(b"%d" % i, {}) for i in range(total)])
    gate = Gate()
    handler = Recorder(lambda _e: gate.wait())
    try:
        with Runtime.open(tmp_path / "d", transports={}) as rt:
            rt.consume(RabbitMQSource(rabbitmq.url, queue, prefetch=50), handler, name="slow")
            # the runtime takes what it has room for (2048 waiting for a slow handler)
            wait_until(lambda: rt.stats().received >= 2048, 30)
            assert rt.stats().received == 2048
            # and the broker keeps the rest: no more than `prefetch` arrive meanwhile
            assert depth(rabbitmq.url, queue) >= total - 2048 - 50
            gate.open()
    finally:
        gate.open()


def test_under_a_backlog_high_priority_is_consumed_before_low(
    rabbitmq: RabbitMQServer, tmp_path: Path
) -> None:
    queue = queue_name("prio")
    declare(rabbitmq.url, queue, arguments={"x-max-priority": 10})
    transport = RabbitMQTransport(rabbitmq.url, routing_key=queue)
    with Runtime.open(tmp_path / "p", transports={"out": transport}) as rt:
        for i in range(200):
            rt.send("out", b"low-%d" % i, priority=Priority.LOW)
        assert rt.flush(20)
        for i in range(20):
            rt.send("out", b"high-%d" % i, priority=Priority.HIGH)
        assert rt.flush(20)
    handler = Recorder()
    with Runtime.open(
        tmp_path / "c",
        transports={},
        config=RuntimeConfig(partitions=1, concurrency=1),
    ) as rt:
        rt.consume(RabbitMQSource(rabbitmq.url, queue, prefetch=10), handler, name="prio")
        wait_until(lambda: len(handler.delivered) >= 220, 30)
    first = [e.payload for e in handler.delivered[:20]]
    assert all(p.startswith(b"high-") for p in first), first


def test_a_missing_queue_shows_in_health_and_is_tried_again(
    rabbitmq: RabbitMQServer, tmp_path: Path
) -> None:
    queue = queue_name("later")
    handler = Recorder()
    with Runtime.open(tmp_path / "d", transports={}) as rt:
        rt.consume(RabbitMQSource(rabbitmq.url, queue), handler, name="later")
        wait_until(lambda: rt.health()["sources"]["later"]["last_error"] is not None, 30)
        health = rt.health()["sources"]["later"]
        assert not health["ok"] and f"no queue {queue!r}" in health["last_error"]
        declare(rabbitmq.url, queue)
        publish(rabbitmq.url, queue, [(b"x", {})], message_ids=["m1"])
        wait_until(lambda: len(handler.delivered) == 1, 30)
        assert rt.health()["sources"]["later"]["ok"]


def test_a_consumer_the_broker_cancels_shows_in_health_and_comes_back(
    rabbitmq: RabbitMQServer, tmp_path: Path
) -> None:
    queue = queue_name("deleted")
    declare(rabbitmq.url, queue)
    handler = Recorder()
    with Runtime.open(tmp_path / "d", transports={}) as rt:
        rt.consume(RabbitMQSource(rabbitmq.url, queue), handler, name="c")
        wait_until(lambda: rt.health()["sources"]["c"]["connected"], 30)
        delete_queue(rabbitmq.url, queue)  # the broker cancels the consumer
        wait_until(lambda: rt.health()["sources"]["c"]["last_error"] is not None, 30)
        error = rt.health()["sources"]["c"]["last_error"]
        assert "cancelled the consumer" in error or "no queue" in error
        declare(rabbitmq.url, queue)
        publish(rabbitmq.url, queue, [(b"back", {})], message_ids=["m1"])
        wait_until(lambda: len(handler.delivered) == 1, 30)


def test_bad_arguments_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="url must be an amqp"):
        RabbitMQSource("nats://x", "q")
    with pytest.raises(ValueError, match="queue must be a queue name"):
        RabbitMQSource("amqp://h/", "")
    with pytest.raises(ValueError, match="prefetch must be an int"):
        RabbitMQSource("amqp://h/", "q", prefetch=0)
    with pytest.raises(TypeError, match="dead_letter_exchange must be"):
        RabbitMQSource("amqp://h/", "q", dead_letter_exchange=1)  # type: ignore[arg-type]
    assert RabbitMQSource("amqp://h/", "q").dead_letter_forwarder() is None


def test_header_values_become_text() -> None:
    import datetime  # noqa: PLC0415
    import decimal  # noqa: PLC0415

    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert header_text("s") == "s" and header_text(b"b\xff") == "b\ufffd"
    assert header_text(True) == "true" and header_text(3) == "3"
    assert header_text(decimal.Decimal("1.5")) == "1.5"
    assert header_text(when) == "2026-01-02T03:04:05+00:00"
    assert json.loads(header_text({"t": when, "b": b"x", "o": object})) == {
        "b": "x",
        "o": str(object),
        "t": "2026-01-02T03:04:05+00:00",
    }


def test_a_name_taken_by_the_forwarding_transport_is_refused(tmp_path: Path) -> None:
    with Runtime.open(tmp_path / "d", transports={"work.dead-letters": Recorder()}) as rt:
        source = RabbitMQSource("amqp://nowhere/", "q", dead_letter_exchange="dlx")
        with pytest.raises(ValueError, match=r"'work\.dead-letters' is taken"):
            rt.consume(source, Recorder(), name="work")


def test_the_forwarder_is_made_only_with_an_exchange() -> None:
    forwarder = RabbitMQSource("amqp://h/", "q", dead_letter_exchange="dlx").dead_letter_forwarder()
    assert forwarder is not None and forwarder.exchange == "dlx" and forwarder.ack_timeout == 16.0
    asyncio.run(forwarder.aclose())  # nothing to close yet


def test_a_message_without_an_id_is_known_by_its_content() -> None:
    delivery = SimpleNamespace(exchange="", routing_key="q", delivery_tag=1, redelivered=True)
    properties = SimpleNamespace(message_id=None, correlation_id=None, timestamp=None, headers={})
    one = SimpleNamespace(delivery=delivery, header=SimpleNamespace(properties=properties))
    source = RabbitMQSource("amqp://h/", "q")
    first = source._inbound(SimpleNamespace(**vars(one), body=b"x", channel=None))
    again = source._inbound(SimpleNamespace(**vars(one), body=b"x", channel=None))
    other = source._inbound(SimpleNamespace(**vars(one), body=b"y", channel=None))
    assert first.message_id == again.message_id != other.message_id
    # a quorum queue counts deliveries in a header: a redelivery is still the same one
    counted = SimpleNamespace(**{**vars(properties), "headers": {"x-delivery-count": 1}})
    redelivered = SimpleNamespace(
        delivery=delivery, header=SimpleNamespace(properties=counted), body=b"x", channel=None
    )
    assert source._inbound(redelivered).message_id == first.message_id
    assert first.message_id.startswith("q:") and "rabbitmq-message-id" not in first.origin
    assert first.origin["rabbitmq-redelivered"] == "true"
