"""Consuming hosts in real processes, killed with SIGKILL, against a real nats-server."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nats_server import NatsServer, add_stream, wait_for
from tests.sources.test_jetstream import consumer_pending, publish

ROOT = Path(__file__).resolve().parent.parent.parent


def lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().split("\n")[:-1] if line]


def host(data: Path, url: str, durable: str, delivered: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.consume_host", str(data), url, durable, str(delivered)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None and process.stdout.readline() == "consuming\n"
    return process


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as running:
        add_stream(running.url, name="ORDERS", subjects=["orders.>"])
        yield running


def load(url: str, count: int) -> set[str]:
    publish(
        url,
        [
            (f"orders.o{i % 7}", b"%d" % i, {"Nats-Msg-Id": f"m{i}", "order": f"o{i % 7}"})
            for i in range(count)
        ],
    )
    return {f"m{i}" for i in range(count)}


def test_a_consuming_host_killed_mid_load_loses_nothing(server: NatsServer, tmp_path: Path) -> None:
    published = load(server.url, 3000)
    delivered = tmp_path / "delivered"
    first = host(tmp_path / "d", server.url, "billing", delivered)
    try:
        wait_for(lambda: len(lines(delivered)) >= 500, 60, "the first deliveries")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    # what it made durable is delivered when it comes back; what it had taken but not
    # made durable, JetStream delivers again after the ack wait
    second = host(tmp_path / "d", server.url, "billing", delivered)
    try:
        wait_for(lambda: published <= set(lines(delivered)), 90, "every message")
        wait_for(lambda: consumer_pending(server.url, "billing") == 0, 30, "every ack")
    finally:
        second.kill()
        second.wait(10)


def test_three_runtimes_share_a_stream_and_one_killed_loses_nothing(
    server: NatsServer, tmp_path: Path
) -> None:
    files = [tmp_path / f"delivered-{n}" for n in range(3)]
    hosts = [host(tmp_path / f"d{n}", server.url, "shared", files[n]) for n in range(3)]
    published = load(server.url, 6000)
    try:
        wait_for(lambda: sum(len(lines(f)) for f in files) >= 1500, 60, "deliveries")
        hosts[0].send_signal(signal.SIGKILL)
        hosts[0].wait(10)
        wait_for(lambda: sum(len(lines(f)) for f in files) >= 3000, 60, "more deliveries")
        hosts[0] = host(tmp_path / "d0", server.url, "shared", files[0])  # it comes back
        wait_for(
            lambda: published <= set().union(*(set(lines(f)) for f in files)),
            120,
            "every message",
        )
        wait_for(lambda: consumer_pending(server.url, "shared") == 0, 30, "every ack")
    finally:
        for process in hosts:
            process.kill()
            process.wait(10)
    shares = [set(lines(f)) for f in files]
    assert all(shares), "the stream's messages are spread over the three runtimes"
    for survivor in (1, 2):  # never twice in one runtime that was not killed
        counts = collections.Counter(lines(files[survivor]))
        assert max(counts.values()) == 1
