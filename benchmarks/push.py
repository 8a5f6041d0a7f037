"""Push to clients under uvicorn worker processes, beside a bare WebSocket fan-out.

Run: .venv/bin/python benchmarks/push.py [--seconds S] [--idle N] [--storm N --kills K]

- latency: messages sent at 1,000 a second to 100 connected devices, each timed from
  `rt.push.send` (durable: the fsync included) to the client reading it; with the send in
  the worker serving the devices, and in another worker on the same directory. Beside
  it, the bare fan-out: the same frames written straight to the sockets (no mailbox, no
  ack, nothing on disk).
- idle: the resident memory a worker adds per idle connection (hello'd, answering
  pings), for N connections, beside the bare server's.
- storm: N devices on two workers while messages flow; one worker is SIGKILLed and
  started again K times; the devices reconnect to whichever answers and resume after
  their cursor. Counted at the end: messages lost, reordered, handed to the app twice,
  and how long after the last kill every device had everything.

The clients run in a process of their own (`client` mode of this script; the storm's
devices are the test suite's, tests/push/storm_client.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECRET = "push-bench-secret-0123456789"


# -- the client process ---------------------------------------------------------------------


async def _connect(url: str, recipient: str, bare: bool, acked: int = 0) -> Any:
    import websockets  # noqa: PLC0415

    from surelay.push.tokens import issue  # noqa: PLC0415

    ws = await websockets.connect(url, subprotocols=["surelay.push.v1"], max_queue=None)  # type: ignore[list-item]
    token = recipient if bare else issue(SECRET.encode(), recipient, None, time.time() + 3600)
    hello = {"t": "hello", "v": 1, "token": token, "device": "d", "resume": {"acked": acked}}
    await ws.send(json.dumps(hello))
    welcome = json.loads(await ws.recv())
    assert welcome["t"] == "welcome", welcome
    return ws


async def _open_all(url: str, recipients: list[str], bare: bool) -> list[Any]:
    gate = asyncio.Semaphore(200)

    async def one(recipient: str) -> Any:
        async with gate:
            return await _connect(url, recipient, bare)

    return list(await asyncio.gather(*(one(r) for r in recipients)))


async def _latency_client(url: str, prefix: str, count: int, expect: int, bare: bool) -> None:
    sockets = await _open_all(url, [f"{prefix}{i}" for i in range(count)], bare)
    print("ready", flush=True)
    latencies: list[float] = []
    done = asyncio.Event()

    async def read(ws: Any) -> None:
        async for raw in ws:
            now = time.time()
            frame = json.loads(raw)
            if frame["t"] == "ping":
                await ws.send('{"t":"pong"}')
            elif frame["t"] == "msg":
                data = frame["data"] if bare else base64.b64decode(frame["data"]).decode()
                latencies.append(now - float(data))
                if not bare:
                    await ws.send(json.dumps({"t": "ack", "upto": frame["seq"]}))
                if len(latencies) >= expect:
                    done.set()

    readers = [asyncio.ensure_future(read(ws)) for ws in sockets]
    try:
        await asyncio.wait_for(done.wait(), 120)
    finally:
        for reader in readers:
            reader.cancel()
    print(json.dumps({"latencies": latencies}), flush=True)


async def _count_client(url: str, prefix: str, count: int, expect: int) -> None:
    """Push devices that ack each message; prints how many distinct messages arrived
    and when the last did."""
    sockets = await _open_all(url, [f"{prefix}{i}" for i in range(count)], False)
    print("ready", flush=True)
    seen: set[bytes] = set()
    done = asyncio.Event()
    last = 0.0

    async def read(ws: Any) -> None:
        nonlocal last
        async for raw in ws:
            frame = json.loads(raw)
            if frame["t"] == "ping":
                await ws.send('{"t":"pong"}')
            elif frame["t"] == "msg":
                seen.add(base64.b64decode(frame["data"]))
                last = time.time()
                await ws.send(json.dumps({"t": "ack", "upto": frame["seq"]}))
                if len(seen) >= expect:
                    done.set()

    readers = [asyncio.ensure_future(read(ws)) for ws in sockets]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 300)
    for reader in readers:
        reader.cancel()
    print(json.dumps({"received": len(seen), "last": last}), flush=True)


async def _socketio_client(url: str, count: int, expect: int, quiet: float) -> None:
    """python-socketio clients, one per recipient, reconnecting on their own; prints how
    many distinct messages arrived (and when the last did) once `expect` have, or when
    none came for `quiet` seconds after the driver says it is done (stdin closed)."""
    import socketio  # noqa: PLC0415

    seen: set[int] = set()
    last = 0.0
    clients = []
    for i in range(count):
        client = socketio.AsyncClient(reconnection=True, reconnection_delay=0.1)

        @client.on("msg")  # type: ignore[misc]
        async def on_msg(data: dict[str, Any]) -> None:
            nonlocal last
            seen.add(int(data["n"]))
            last = time.time()

        await client.connect(url, auth={"recipient": f"r{i}"}, transports=["websocket"])
        clients.append(client)
    print("ready", flush=True)
    stdin_closed = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    while len(seen) < expect:
        await asyncio.sleep(0.1)
        if stdin_closed.done() and time.time() - max(last, 0.0) > quiet:
            break
    print(json.dumps({"received": len(seen), "last": last}), flush=True)
    for client in clients:
        await client.disconnect()


async def _idle_client(url: str, count: int, bare: bool) -> None:
    sockets = await _open_all(url, [f"idle{i}" for i in range(count)], bare)

    async def answer(ws: Any) -> None:
        async for raw in ws:
            if json.loads(raw)["t"] == "ping":
                await ws.send('{"t":"pong"}')

    readers = [asyncio.ensure_future(answer(ws)) for ws in sockets]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until told
    for reader in readers:
        reader.cancel()


# -- the driver -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Worker:
    def __init__(self, data: Path, app: str = "benchmarks.push_app:app") -> None:
        self.data, self.port, self.app = data, _free_port(), app
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                self.app,
                "--port",
                str(self.port),
                "--ws",
                "websockets-sansio",
                # compression costs a zlib context per connection (tens of KiB): push
                # frames are small JSON, so the runbook says to turn it off
                "--ws-per-message-deflate",
                "false",
                "--ws-max-size",
                "65536",
                "--log-level",
                "error",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "SURELAY_PUSH_DATA": str(self.data)},
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                self.get("/rss")
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the worker did not start")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as reply:
            return json.load(reply)

    def ws(self, bare: bool = False) -> str:
        return f"ws://127.0.0.1:{self.port}/{'bare' if bare else 'push'}/ws"

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def _client(*args: str, module: str | None = None) -> subprocess.Popen[str]:
    """A client process: this script's `client` mode, or with `module`, the test suite's
    storm devices (tests/push/storm_client.py)."""
    command = (
        [sys.executable, "-m", "tests.push.storm_client", *args]
        if module
        else [sys.executable, __file__, "client", *args]
    )
    process = subprocess.Popen(
        command,
        # python-socketio's clients report each session the server dropped: noise here
        stderr=subprocess.DEVNULL if args[:1] == ("socketio",) else None,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def _percentiles(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=100)
    return f"p50 {q[49]:6.2f} ms  p99 {q[98]:6.2f} ms  max {ms[-1]:6.2f} ms  ({len(ms)} messages)"


def latency(data: Path, seconds: float, rate: float, devices: int) -> None:
    serving, accepting = Worker(data).start(), Worker(data).start()
    try:
        rows = []
        for prefix, what, client_url, start_on, bare in (
            ("b", "bare fan-out (no mailbox)", serving.ws(bare=True), serving, True),
            ("s", "push, sent in the serving worker", serving.ws(), serving, False),
            ("x", "push, sent in another worker", serving.ws(), accepting, False),
        ):
            expect = int(rate * seconds)
            client = _client(
                "latency",
                client_url,
                prefix,
                str(devices),
                str(expect),
                *(["--bare"] if bare else []),
            )
            query = f"rate={rate}&seconds={seconds}&recipients={devices}&prefix={prefix}"
            start_on.get(f"/start?{query}{'&bare=1' if bare else ''}")
            out, _ = client.communicate(timeout=seconds + 150)
            rows.append((what, json.loads(out)["latencies"]))
        print(f"latency, {rate:.0f} msg/s to {devices} devices for {seconds:.0f} s:")
        for what, values in rows:
            print(f"  {what:34} {_percentiles(values)}")
    finally:
        serving.stop()
        accepting.stop()


def idle(data: Path, count: int) -> None:
    print(f"idle connections, {count} on one worker (resident memory added per connection):")
    for what, bare in (("bare server", True), ("push", False)):
        worker = Worker(data).start()
        try:
            before = worker.get("/rss")["rss_kib"]
            client = _client("idle", worker.ws(bare), str(count), *(["--bare"] if bare else []))
            time.sleep(1.0)
            after = worker.get("/rss")["rss_kib"]
            client.communicate("", timeout=60)
            each = (after - before) / count
            print(f"  {what:12} {each:6.1f} KiB each ({after / 1024:.0f} MiB in all)")
        finally:
            worker.stop()


def storm(data: Path, count: int, kills: int, per_device: int) -> None:
    from surelay import Runtime  # noqa: PLC0415
    from surelay.push import PushConfig  # noqa: PLC0415

    one, two = Worker(data).start(), Worker(data).start()
    push = PushConfig(SECRET, max_pending=1_000_000)
    try:
        with Runtime.open(data, transports={}, push=push) as rt:
            client = _client(str(count), str(per_device), one.ws(), two.ws(), module="storm")
            started = time.time()
            pool = ThreadPoolExecutor(64)  # sends of many threads share an fsync
            for n in range(per_device):
                payload = b"%d" % n
                list(pool.map(lambda i, p=payload: rt.push.send(f"s{i}", p), range(count)))
                if n < kills:
                    one.kill()  # in the middle of the flow: half the devices drop
                    one.start()
            last_kill = time.time()
            out, _ = client.communicate(timeout=600)
            result = json.loads(out)
        print(
            f"storm, {count} devices on two workers, {per_device} messages each, one worker "
            f"SIGKILLed {kills} times in {last_kill - started:.1f} s:"
        )
        print(
            f"  lost {result['lost']}, reordered {result['reordered']}, handed twice "
            f"{result['duplicates']} (dropped by the cursor: {result['dropped']}); every "
            f"device had everything {max(0.0, result['last'] - last_kill):.1f} s after the "
            "last kill"
        )
    finally:
        one.stop()
        two.stop()


def beside_socketio(data: Path, messages: int, devices: int, kills: int) -> None:
    """Throughput to `devices` clients of one worker, and what reaches them of what was
    accepted while the server is SIGKILLed `kills` times (python-socketio keeps nothing:
    a message it accepted and did not deliver is gone; surelay's storm above)."""
    print(f"beside python-socketio, {devices} clients on one worker:")
    push = Worker(data).start()
    try:
        client = _client("count", push.ws(), "f", str(devices), str(messages))
        started = time.time()
        push.get(f"/flood?messages={messages}&recipients={devices}&prefix=f")
        out, _ = client.communicate(timeout=400)
        result = json.loads(out)
        rate = result["received"] / max(result["last"] - started, 1e-9)
        print(f"  surelay push   {rate:8,.0f} msg/s delivered and acked ({messages} messages)")
    finally:
        push.stop()
    sio = Worker(data, "benchmarks.socketio_app:app").start()
    try:
        url = f"http://127.0.0.1:{sio.port}"
        client = _client("socketio", url, str(devices), str(messages), "2")
        started = time.time()
        sio.get(f"/flood?messages={messages}&recipients={devices}")
        out, _ = client.communicate("", timeout=400)  # done sending: stdin closed
        result = json.loads(out)
        rate = result["received"] / max(result["last"] - started, 1e-9)
        print(f"  python-socketio{rate:8,.0f} msg/s delivered ({result['received']} of {messages})")
        rounds = 20
        client = _client("socketio", url, str(devices), str(rounds * devices), "3")
        accepted = 0
        pool = ThreadPoolExecutor(16)

        def emit(n: int) -> bool:
            try:
                sio.get(f"/emit?recipient=r{n % devices}&n={n}")
            except OSError:
                return False
            return True

        for round_ in range(rounds):
            accepted += sum(pool.map(emit, range(round_ * devices, (round_ + 1) * devices)))
            if (
                round_ % (rounds // max(kills, 1)) == 0
                and round_ // (rounds // max(kills, 1)) < kills
            ):
                sio.kill()
                sio.start()
        out, _ = client.communicate("", timeout=400)  # done sending: stdin closed
        received = json.loads(out)["received"]
        print(
            f"  python-socketio under {kills} SIGKILLs: {accepted} of {rounds * devices} "
            f"emits accepted, {received} received: {accepted - received} accepted and lost"
        )
    finally:
        sio.stop()


def main() -> None:
    if sys.argv[1:2] == ["client"]:
        mode, *rest = sys.argv[2:]
        bare = "--bare" in rest
        rest = [r for r in rest if r != "--bare"]
        if mode == "latency":
            asyncio.run(_latency_client(rest[0], rest[1], int(rest[2]), int(rest[3]), bare))
        elif mode == "count":
            asyncio.run(_count_client(rest[0], rest[1], int(rest[2]), int(rest[3])))
        elif mode == "socketio":
            asyncio.run(_socketio_client(rest[0], int(rest[1]), int(rest[2]), float(rest[3])))
        else:
            asyncio.run(_idle_client(rest[0], int(rest[1]), bare))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--storm", type=int, default=5000)
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        latency(Path(tmp) / "latency", args.seconds, args.rate, 100)
        idle(Path(tmp) / "idle", args.idle)
        storm(Path(tmp) / "storm", args.storm, args.kills, args.kills + 5)
        beside_socketio(Path(tmp) / "socketio", 20_000, 100, 4)


if __name__ == "__main__":
    main()
