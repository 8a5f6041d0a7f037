"""The worker process of benchmarks/push.py: a uvicorn app serving `rt.push` at /push on
the directory in SURELAY_PUSH_DATA, and a bare WebSocket fan-out at /bare/ws (no mailbox,
no acks, nothing on disk: the baseline).

GET /flood?messages=N&recipients=R sends N messages as fast as it can (64 threads).
GET /start?rate=R&seconds=S&recipients=N sends R messages a second for S seconds,
round robin to recipients r0..r(N-1), each payload the time it was sent (push: through
`rt.push.send`, so its fsync is included; bare: straight to the sockets). GET /rss is
this process's resident memory in KiB.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from surelay import Runtime
from surelay.push import PushConfig

SECRET = "push-bench-secret-0123456789"
STATE: dict[str, Any] = {}
BARE: dict[str, WebSocket] = {}


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pace(rate: float, seconds: float, recipients: int, prefix: str, send: Any) -> None:
    start = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        send(f"{prefix}{i % recipients}", repr(time.time()).encode())


async def start(request: Request) -> Response:
    rate = float(request.query_params["rate"])
    seconds = float(request.query_params["seconds"])
    recipients = int(request.query_params["recipients"])
    prefix = request.query_params.get("prefix", "r")
    if request.query_params.get("bare"):
        loop = asyncio.get_running_loop()

        def send(recipient: str, data: bytes) -> None:
            ws = BARE.get(recipient)
            if ws is not None:
                frame = json.dumps({"t": "msg", "data": data.decode()})
                asyncio.run_coroutine_threadsafe(ws.send_text(frame), loop)

    else:
        rt: Runtime = STATE["rt"]

        def send(recipient: str, data: bytes) -> None:
            rt.push.send(recipient, data)

    threading.Thread(
        target=pace, args=(rate, seconds, recipients, prefix, send), daemon=True
    ).start()
    return JSONResponse({"started": True})


async def flood(request: Request) -> Response:
    """N messages, round robin to prefix0..prefix(R-1), as fast as T threads can send
    them (sends of many threads share an fsync); each payload its index."""
    messages = int(request.query_params["messages"])
    recipients = int(request.query_params["recipients"])
    threads = int(request.query_params.get("threads", "64"))
    prefix = request.query_params.get("prefix", "f")
    rt: Runtime = STATE["rt"]

    def share(first: int) -> None:
        for i in range(first, messages, threads):
            rt.push.send(f"{prefix}{i % recipients}", b"%d" % i)

    for first in range(threads):
        threading.Thread(target=share, args=(first,), daemon=True).start()
    return JSONResponse({"started": True})


async def rss(_request: Request) -> Response:
    return JSONResponse({"rss_kib": rss_kib()})


async def bare(websocket: WebSocket) -> None:
    await websocket.accept(subprotocol="surelay.push.v1")
    hello = json.loads(await websocket.receive_text())
    recipient = hello["token"]  # the bare server trusts what it is told
    BARE[recipient] = websocket
    await websocket.send_text(json.dumps({"t": "welcome", "head": 0, "acked": 0}))
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        BARE.pop(recipient, None)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    push = PushConfig(SECRET, max_pending=1_000_000)
    rt = Runtime.open(os.environ["SURELAY_PUSH_DATA"], transports={}, push=push)
    STATE["rt"] = rt
    app.router.routes.append(Mount("/push", app=rt.push.asgi_app()))
    try:
        yield
    finally:
        rt.close()


app = Starlette(
    lifespan=lifespan,
    routes=[
        Route("/start", start),
        Route("/flood", flood),
        Route("/rss", rss),
        WebSocketRoute("/bare/ws", bare),
    ],
)
