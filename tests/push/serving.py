"""The push endpoint under a real uvicorn (in a thread of the test's process, so the
test sends through the same runtime), and a bare `websockets` client speaking
surelay.push.v1 the way a client must."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount

from surelay import Runtime
from tests.helpers import free_port, listening, wait_until

SECRET = "push-test-secret-0123456789"
ROOT = Path(__file__).resolve().parent.parent.parent


@contextlib.contextmanager
def serving(rt: Runtime, routes: Sequence[BaseRoute] = ()) -> Iterator[str]:
    """uvicorn serving `rt.push` at /push (and `routes`); yields the WebSocket URL."""
    port = free_port()
    app = Starlette(routes=[Mount("/push", app=rt.push.asgi_app()), *routes])
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, ws="websockets-sansio", log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: listening(port), 10)
        yield f"ws://127.0.0.1:{port}/push/ws"
    finally:
        server.should_exit = True
        thread.join(10)


class Client:
    """One device's connection: `hello` sent, `welcome` read; `next()` the next frame
    that is not a ping (pings answered)."""

    def __init__(self, ws: Any, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.welcome = welcome

    @classmethod
    async def connect(cls, url: str, token: str, device: str, acked: int = 0) -> Client:
        ws = await websockets.connect(url, subprotocols=["surelay.push.v1"])
        await ws.send(
            json.dumps(
                {"t": "hello", "v": 1, "token": token, "device": device, "resume": {"acked": acked}}
            )
        )
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["t"] == "welcome", welcome
        return cls(ws, welcome)

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        while True:
            frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if frame["t"] == "ping":
                await self.ws.send('{"t": "pong"}')
                continue
            return frame

    async def take(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        return [await self.next(timeout) for _ in range(n)]

    async def ack(self, upto: int) -> None:
        await self.ws.send(json.dumps({"t": "ack", "upto": upto}))

    async def read(self, upto: int) -> None:
        await self.ws.send(json.dumps({"t": "read", "upto": upto}))

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, str]:
        """Read until the server closes; its close code and reason."""
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        return self.ws.close_code, self.ws.close_reason or ""

    async def close(self) -> None:
        await self.ws.close()


class Worker:
    """A uvicorn worker process serving `tests.push_app` on `data`, as each worker of a
    host does (`start` returns at once: the caller waits for `listening(port)`)."""

    def __init__(self, data: Path) -> None:
        self.data, self.port = data, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/push/ws"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "tests.push_app:app",
                "--port",
                str(self.port),
                "--ws",
                "websockets-sansio",
                "--ws-per-message-deflate",
                "false",
                "--log-level",
                "critical",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "SURELAY_PUSH_DATA": str(self.data)},
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down: the lifespan closes the runtime), else SIGKILL."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
