"""RabbitMQTransport against a real RabbitMQ node (`tests/rabbitmq_server.py`)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest

from surelay import Envelope, PermanentError, Priority, RetryPolicy, Runtime, RuntimeConfig
from surelay.errors import TransientError
from surelay.sources import RabbitMQSource
from surelay.transports import RabbitMQTransport
from tests.helpers import Recorder, free_port, wait_until
from tests.rabbitmq_server import (
    MAX_MESSAGE_SIZE,
    RabbitMQServer,
    declare,
    declare_exchange,
    depth,
    drain,
)


def queue_name(what: str) -> str:
    """A queue of the test's own on the worker's shared broker."""
    return f"{what}-{uuid.uuid4().hex[:12]}"


def test_a_confirmed_publish_carries_id_headers_priority_and_persistence(
    rabbitmq: RabbitMQServer, tmp_path: Path
) -> None:
    queue = queue_name("orders")
    declare(rabbitmq.url, queue, arguments={"x-max-priority": 10})
    with Runtime.open(tmp_path / "d", transports={queue: RabbitMQTransport(rabbitmq.url)}) as rt:
        receipt = rt.send(
            queue,
            b"o-1",
            key="customer-7",
            idempotency_key="order-1",
            priority=Priority.HIGH,
            headers={"tenant": "acme", "CC": "elsewhere", "x-delay": "60000"},
            type="order.created",
        )
        assert receipt.wait(10).name == "DELIVERED"  # returned only once confirmed
    (message,) = drain(rabbitmq.url, queue)
    properties = message.header.properties
    assert message.body == b"o-1"
    assert properties.message_id == "order-1"
    assert properties.delivery_mode == 2
    assert properties.priority == 9
    assert properties.message_type == "order.created"
    headers = properties.headers
    assert headers["tenant"] == "acme"
    assert "CC" not in headers and "x-delay" not in headers  # they would steer the broker
    assert headers["Surelay-Message-Id"] == receipt.message_id
    assert headers["Surelay-Key"] == "customer-7"
    assert headers["Surelay-Attempt"] == "1"


def test_priorities_map_to_amqp_and_routing_key_for_picks_the_queue(
    rabbitmq: RabbitMQServer, tmp_path: Path
) -> None:
    exchange, queues = queue_name("by-region"), [queue_name("eu"), queue_name("us")]
    for queue in queues:
        declare(rabbitmq.url, queue, exchange=exchange, routing_key=queue)
    transport = RabbitMQTransport(
        rabbitmq.url,
        exchange=exchange,
        routing_key_for=lambda e: queues[0] if e.headers["region"] == "eu" else queues[1],
        persistent=False,
    )
    with Runtime.open(tmp_path / "d", transports={"out": transport}) as rt:
        for priority in Priority:
            rt.send("out", priority.value.encode(), priority=priority, headers={"region": "eu"})
        rt.send("out", b"us", headers={"region": "us"})
        assert rt.flush(10)
    eu = drain(rabbitmq.url, queues[0])
    assert {m.body: m.header.properties.priority for m in eu} == {
        b"high": 9,
        b"normal": 5,
        b"low": 1,
    }
    assert all(m.header.properties.delivery_mode == 1 for m in eu)
    assert [m.body for m in drain(rabbitmq.url, queues[1])] == [b"us"]


def test_an_unroutable_message_is_a_permanent_dead_letter(
    rabbitmq: RabbitMQServer, tmp_path: Path
) -> None:
    exchange = queue_name("nobody-bound")
    declare_exchange(rabbitmq.url, exchange)
    transport = RabbitMQTransport(rabbitmq.url, exchange=exchange, routing_key="nowhere")
    with Runtime.open(tmp_path / "d", transports={"out": transport}) as rt:
        assert rt.send("out", b"x").wait(10).name == "DEAD_LETTERED"
        (record,) = rt.dead_letters.list()
    assert record.reason_class == "permanent" and record.attempts == 1
    assert "no queue is bound" in record.reason and "NO_ROUTE" in record.reason
    assert repr(exchange) in record.reason and "'nowhere'" in record.reason


def test_an_exchange_the_broker_does_not_have_is_permanent_and_says_which(
    rabbitmq: RabbitMQServer,
) -> None:
    queue = queue_name("fine")
    declare(rabbitmq.url, queue)
    transport = RabbitMQTransport(rabbitmq.url, exchange="no-such-exchange")
    good = RabbitMQTransport(rabbitmq.url, routing_key=queue)

    async def go() -> None:
        with pytest.raises(PermanentError, match=r"'no-such-exchange'.*does not exist"):
            await transport(Envelope("m1", "out", b"x"))
        # the channel the broker closed is made again: the next call works
        await good(Envelope("m2", "out", b"y"))
        await good(Envelope("m3", "out", b"z"))
        with pytest.raises(PermanentError, match="does not exist"):
            await transport(Envelope("m4", "out", b"x"))
        await transport.aclose()
        await good.aclose()

    asyncio.run(go())
    assert [m.body for m in drain(rabbitmq.url, queue)] == [b"y", b"z"]


def test_a_message_over_the_brokers_size_is_refused_and_only_it(
    rabbitmq: RabbitMQServer, tmp_path: Path
) -> None:
    """The broker closes the channel for one oversized message; the publishes under way
    with it on that channel are published again, not dead-lettered."""
    queue = queue_name("sizes")
    declare(rabbitmq.url, queue)
    transport = RabbitMQTransport(rabbitmq.url, routing_key=queue)
    config = RuntimeConfig(retry=RetryPolicy(base_delay=0.05, max_delay=0.2))
    with Runtime.open(tmp_path / "d", transports={"out": transport}, config=config) as rt:
        small = [rt.send("out", b"s%d" % i) for i in range(100)]
        big = rt.send("out", b"x" * (MAX_MESSAGE_SIZE + 1))
        small += [rt.send("out", b"t%d" % i) for i in range(100)]
        assert big.wait(20).name == "DEAD_LETTERED"
        assert all(r.wait(20).name == "DELIVERED" for r in small)
        (record,) = rt.dead_letters.list()
    assert record.reason_class == "permanent" and "larger than configured max size" in record.reason
    # every small one is in the queue: a publish whose confirm the closing channel cut
    # off may have been stored too and is published again (at least once, by message_id)
    stored = [m.body for m in drain(rabbitmq.url, queue)]
    expected = {b"s%d" % i for i in range(100)} | {b"t%d" % i for i in range(100)}
    assert set(stored) == expected


def test_an_idempotency_key_amqp_cannot_carry_is_permanent(rabbitmq: RabbitMQServer) -> None:
    transport = RabbitMQTransport(rabbitmq.url, routing_key="anything")

    async def go() -> None:
        with pytest.raises(PermanentError, match="idempotency key is 300 bytes"):
            await transport(Envelope("m1", "out", b"x", idempotency_key="k" * 300))
        with pytest.raises(PermanentError, match="type is 256 bytes"):
            await transport(Envelope("m1", "out", b"x", type="t" * 256))

    asyncio.run(go())


def test_a_broker_that_cannot_be_reached_is_transient() -> None:
    transport = RabbitMQTransport(f"amqp://guest:secret@127.0.0.1:{free_port()}/", timeout=1.0)

    async def go() -> None:
        with pytest.raises(TransientError, match=r"cannot connect to RabbitMQ at amqp://\*\*\*@"):
            await transport(Envelope("m1", "out", b"x"))

    asyncio.run(go())


def test_bad_arguments_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="url must be an amqp"):
        RabbitMQTransport("http://localhost")
    with pytest.raises(TypeError, match="exchange must be a str"):
        RabbitMQTransport("amqp://h/", exchange=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="routing_key must be a str of at most 255"):
        RabbitMQTransport("amqp://h/", routing_key="k" * 256)
    with pytest.raises(TypeError, match="routing_key_for must be a callable"):
        RabbitMQTransport("amqp://h/", routing_key_for="k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be"):
        RabbitMQTransport("amqp://h/", timeout=0)
    with pytest.raises(TypeError, match="persistent must be a bool"):
        RabbitMQTransport("amqp://h/", persistent=1)  # type: ignore[arg-type]
    assert RabbitMQTransport("amqp://h/", timeout=2).ack_timeout == 7.0


def test_a_routing_key_for_that_gives_no_routing_key_is_permanent(
    rabbitmq: RabbitMQServer,
) -> None:
    transport = RabbitMQTransport(rabbitmq.url, routing_key_for=lambda _e: None)  # type: ignore[arg-type,return-value]

    async def go() -> None:
        with pytest.raises(PermanentError, match="routing_key_for gave None"):
            await transport(Envelope("m1", "out", b"x"))

    asyncio.run(go())


def test_broker_killed_mid_load_every_message_arrives_and_is_handled_once(
    tmp_path: Path,
) -> None:
    """SIGKILL the broker while messages are published, start it again: every accepted
    message is in the queue at least once (confirms), and a surelay consumer hands each
    message id to its handler once (the inbox)."""
    from tests.conftest import rabbitmq_or_skip  # noqa: PLC0415

    rabbitmq_or_skip()
    broker = RabbitMQServer().start()
    try:
        queue = "load"
        # a classic durable queue: on one node, Debian's RabbitMQ 3.10 does not elect a
        # quorum queue's leader again after SIGKILL (confirms never come; surelay holds)
        declare(broker.url, queue)
        total = 3000
        config = RuntimeConfig(retry=RetryPolicy(max_attempts=1000, base_delay=0.05, max_delay=0.5))
        transport = RabbitMQTransport(broker.url, routing_key=queue, timeout=2.0)
        with Runtime.open(
            tmp_path / "producer", config=config, transports={"out": transport}
        ) as rt:
            killed = threading.Event()
            pending_at_kill: list[int] = []

            def kill_midway() -> None:
                wait_until(lambda: depth(broker.url, queue) >= 300, 60)
                broker.kill()
                pending_at_kill.append(rt.stats().outbox_pending)
                killed.set()

            killer = threading.Thread(target=kill_midway)
            killer.start()
            receipts = [rt.send("out", b"%d" % i, idempotency_key=f"m{i}") for i in range(total)]
            assert killed.wait(90)
            killer.join()
            assert pending_at_kill[0] > 0, "everything was confirmed before the kill"
            broker.start()
            assert rt.flush(120), rt.health()
            # none dead-lettered; DUPLICATE would still mean delivered (by an earlier
            # attempt): that every message arrived is proven by the consumer below
            outcomes = Counter(r.wait(0).name for r in receipts)
            assert outcomes.keys() <= {"DELIVERED", "DUPLICATE"}, (
                outcomes,
                rt.dead_letters.list(limit=3),
            )
        handler = Recorder()
        with Runtime.open(tmp_path / "consumer", transports={}) as rt:
            rt.consume(RabbitMQSource(broker.url, queue, prefetch=500), handler, name="load")
            wait_until(lambda: len({e.payload for e in handler.delivered}) >= total, 120)
            wait_until(lambda: depth(broker.url, queue) == 0, 60)
            assert rt.flush(30)
            ids = [e.headers["rabbitmq-message-id"] for e in handler.delivered]
        assert sorted(set(ids)) == sorted(f"m{i}" for i in range(total))
        assert len(ids) == total, "a message id reached the handler twice"
    finally:
        broker.close()
