"""surelay on RabbitMQ beside bare aio-pika and aiormq, Celery and Dramatiq, against one
local broker node, in one run.

Run: .venv/bin/python benchmarks/rabbitmq.py [--messages N] (`make bench` installs the
`bench` extra: aio-pika, Celery, Dramatiq)

Starts a RabbitMQ node of its own (Debian's `rabbitmq-server`, as the tests do) on free
loopback ports, then measures, each on a fresh durable queue, messages of 100 bytes:

- publish, confirmed: surelay end to end (`send_batch` of 1000 → `RabbitMQTransport` →
  broker confirm, AT_LEAST_ONCE, 1000 calls in flight) against aio-pika and aiormq
  publishing the same persistent messages with publisher confirms and `mandatory`, 1000
  in flight; Celery's `apply_async` (`confirm_publish`) and Dramatiq's `send`
  (`confirm_delivery`);
- consume, acked: `rt.consume(RabbitMQSource(...))` into a no-op handler (queue → inbox
  and outbox, fsynced → ack → handler → delivered) against an aio-pika consumer acking
  each message (prefetch 256), and a Celery worker (late acks, 8 threads) and a
  Dramatiq worker (8 threads) running a no-op task, timed from their first ack until the
  queue is empty.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
from pamqp.commands import Basic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.rabbitmq_server import RabbitMQServer  # noqa: E402

from surelay import Envelope, PressurePolicy, Runtime, RuntimeConfig  # noqa: E402
from surelay.sources import RabbitMQSource  # noqa: E402
from surelay.transports import RabbitMQTransport  # noqa: E402

PAYLOAD = b"x" * 100
WINDOW = 1000


async def queue_counts(url: str, queue: str) -> tuple[int, int]:
    """(ready, consumers) of `queue`, declaring it (durable) if it is not there."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.queue_declare(queue, durable=True)
        return int(declared.message_count), int(declared.consumer_count)
    finally:
        await connection.close()


def unacked(server: RabbitMQServer, queue: str) -> int:
    for line in server.ctl("list_queues", "name", "messages", "-q").splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    return 0


async def fresh(url: str, queue: str) -> None:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_delete(queue)
        await channel.queue_declare(queue, durable=True)
    finally:
        await connection.close()


def aio_pika_publish(url: str, queue: str, count: int) -> float:
    async def run() -> float:
        await fresh(url, queue)
        connection = await aio_pika.connect(url)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        window = asyncio.Semaphore(WINDOW)

        async def one(i: int) -> None:
            async with window:
                message = aio_pika.Message(
                    PAYLOAD, message_id=f"m{i}", delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                )
                await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = time.perf_counter() - start
        await connection.close()
        assert (await queue_counts(url, queue))[0] == count
        return count / elapsed

    return asyncio.run(run())


def aiormq_publish(url: str, queue: str, count: int) -> float:
    async def run() -> float:
        await fresh(url, queue)
        connection = await aiormq.connect(url)
        channel = await connection.channel(publisher_confirms=True)
        window = asyncio.Semaphore(WINDOW)

        async def one(i: int) -> None:
            async with window:
                properties = Basic.Properties(message_id=f"m{i}", delivery_mode=2)
                await channel.basic_publish(
                    PAYLOAD, routing_key=queue, properties=properties, mandatory=True
                )

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = time.perf_counter() - start
        await connection.close()
        assert (await queue_counts(url, queue))[0] == count
        return count / elapsed

    return asyncio.run(run())


def surelay_publish(url: str, queue: str, count: int) -> float:
    asyncio.run(fresh(url, queue))
    config = RuntimeConfig(
        concurrency_per_transport={"mq": WINDOW}, pressure=PressurePolicy(capacity=1_000_000)
    )
    transport = RabbitMQTransport(url, routing_key=queue)
    with (
        tempfile.TemporaryDirectory() as path,
        Runtime.open(path, transports={"mq": transport}, config=config) as rt,
    ):
        start = time.perf_counter()
        for first in range(0, count, 1000):
            rt.send_batch(
                [{"transport": "mq", "payload": PAYLOAD} for _ in range(min(1000, count - first))]
            )
        assert rt.flush(300)
        elapsed = time.perf_counter() - start
    assert asyncio.run(queue_counts(url, queue))[0] == count
    return count / elapsed


def fill(url: str, queue: str, count: int) -> None:
    aiormq_publish(url, queue, count)


def aio_pika_consume(url: str, queue: str, count: int) -> float:
    fill(url, queue, count)

    async def run() -> float:
        connection = await aio_pika.connect(url)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=256)
        declared = await channel.declare_queue(queue, durable=True)
        done = asyncio.Event()
        got = 0

        async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal got
            await message.ack()
            got += 1
            if got == count:
                done.set()

        start = time.perf_counter()
        await declared.consume(take)
        await asyncio.wait_for(done.wait(), 300)
        elapsed = time.perf_counter() - start
        await connection.close()
        return count / elapsed

    return asyncio.run(run())


def surelay_consume(url: str, queue: str, count: int) -> float:
    fill(url, queue, count)
    done = threading.Event()
    handled = 0
    lock = threading.Lock()

    def handler(_envelope: Envelope) -> None:
        nonlocal handled
        with lock:
            handled += 1
            if handled == count:
                done.set()

    config = RuntimeConfig(pressure=PressurePolicy(capacity=1_000_000))
    with (
        tempfile.TemporaryDirectory() as path,
        Runtime.open(path, transports={}, config=config) as rt,
    ):
        start = time.perf_counter()
        rt.consume(RabbitMQSource(url, queue, prefetch=1000), handler, name="in")
        assert done.wait(300), f"only {handled} of {count} handled"
        assert rt.flush(60)
        elapsed = time.perf_counter() - start
    return count / elapsed


# -- Celery and Dramatiq: a module of tasks in a directory of its own -------------------------

PEERS = """
import os

import dramatiq
from celery import Celery
from dramatiq.brokers.rabbitmq import RabbitmqBroker

URL = os.environ["BENCH_AMQP_URL"]
app = Celery("peers", broker=URL)
app.conf.update(
    broker_transport_options={"confirm_publish": True},
    task_acks_late=True,
    task_default_queue="celery-bench",
    worker_prefetch_multiplier=32,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
)


@app.task
def celery_noop(payload):
    return None


dramatiq.set_broker(RabbitmqBroker(url=URL, confirm_delivery=True))


@dramatiq.actor(queue_name="dramatiq-bench", max_retries=0)
def dramatiq_noop(payload):
    return None
"""


def peers_module(url: str) -> tuple[Path, dict[str, str]]:
    where = Path(tempfile.mkdtemp(prefix="surelay-bench-peers-"))
    (where / "peers.py").write_text(textwrap.dedent(PEERS))
    env = {**os.environ, "BENCH_AMQP_URL": url, "PYTHONPATH": str(where)}
    return where, env


def peer_publish(kind: str, env: dict[str, str], count: int) -> float:
    """Publish `count` tasks in a subprocess (each library's own process, as in a real
    service), timing only the publishing."""
    call = (
        "peers.celery_noop.apply_async((payload,))"
        if kind == "celery"
        else "peers.dramatiq_noop.send(payload)"
    )
    code = textwrap.dedent(
        f"""
        import time
        import peers
        payload = "x" * 100
        start = time.perf_counter()
        for _ in range({count}):
            {call}
        print({count} / (time.perf_counter() - start))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def peer_consume(kind: str, server: RabbitMQServer, env: dict[str, str], count: int) -> float:
    """Run the library's worker on a queue that holds `count` tasks; time from the first
    task taken until the queue is empty."""
    queue = "celery-bench" if kind == "celery" else "dramatiq-bench"
    celery = ["celery", "-A", "peers", "worker", "--pool=threads", "--concurrency=8"]
    celery += ["--loglevel=WARNING", "--without-gossip", "--without-mingle"]
    dramatiq = ["dramatiq", "peers", "--processes", "1", "--threads", "8"]
    command = [sys.executable, "-m", *(celery if kind == "celery" else dramatiq)]
    assert unacked(server, queue) == count, unacked(server, queue)
    worker = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while unacked(server, queue) >= count:
            assert time.monotonic() < deadline, f"{kind}'s worker took nothing"
            time.sleep(0.05)
        start = time.perf_counter()
        left_at_start = unacked(server, queue)
        while unacked(server, queue) > 0:
            assert time.monotonic() < deadline + 600, f"{kind}'s worker did not finish"
            time.sleep(0.05)
        return left_at_start / (time.perf_counter() - start)
    finally:
        worker.terminate()
        worker.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--no-peers", action="store_true", help="skip Celery and Dramatiq")
    count = parser.parse_args().messages
    peers = not parser.parse_args().no_peers
    server = RabbitMQServer().start()
    rows: list[tuple[str, Any]] = []
    try:
        url = server.url
        publish = {
            "surelay": surelay_publish(url, "s-out", count),
            "aio-pika": aio_pika_publish(url, "p-out", count),
            "aiormq": aiormq_publish(url, "r-out", count),
        }
        consume = {
            "surelay": surelay_consume(url, "s-in", count),
            "aio-pika": aio_pika_consume(url, "p-in", count),
        }
        if peers:
            _, env = peers_module(url)
            for kind in ("celery", "dramatiq"):
                publish[kind] = peer_publish(kind, env, count)
                consume[kind] = peer_consume(kind, server, env, count)
        rows = [("publish, confirmed", publish), ("consume, acked", consume)]
    finally:
        server.close()
    print(
        f"{count} messages of {len(PAYLOAD)} bytes, one local RabbitMQ node, "
        f"{os.cpu_count()} cores; msg/s (surelay's share of each)"
    )
    for what, rates in rows:
        ours = rates["surelay"]
        print(f"{what}:")
        for name, rate in rates.items():
            share = "" if name == "surelay" else f"  (surelay: {ours / rate:.2f}x)"
            print(f"  {name:10} {rate:>10,.0f}{share}")


if __name__ == "__main__":
    main()
