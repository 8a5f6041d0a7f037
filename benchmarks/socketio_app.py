"""The python-socketio server of benchmarks/push.py: one room per recipient (a client
joins the room its `auth` names), and the HTTP calls an application makes to it.

GET /flood?messages=N&recipients=R emits N messages round robin to rooms r0..r(R-1) as
fast as the server can; GET /emit?recipient=R&n=N emits one. Nothing is kept: a message
emitted to a room with no client connected, or in flight when the process dies, is gone.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import socketio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins=[])


@sio.event
async def connect(sid: str, _environ: dict[str, Any], auth: dict[str, str]) -> None:
    await sio.enter_room(sid, auth["recipient"])


async def flood(request: Request) -> Response:
    messages = int(request.query_params["messages"])
    recipients = int(request.query_params["recipients"])

    async def go() -> None:
        for i in range(messages):
            await sio.emit("msg", {"n": i, "t": time.time()}, room=f"r{i % recipients}")

    asyncio.get_running_loop().create_task(go())
    return JSONResponse({"started": True})


async def emit(request: Request) -> Response:
    recipient, n = request.query_params["recipient"], int(request.query_params["n"])
    await sio.emit("msg", {"n": n, "t": time.time()}, room=recipient)
    return JSONResponse({"emitted": True})


async def alive(_request: Request) -> Response:
    return JSONResponse({"alive": True})


app = socketio.ASGIApp(
    sio,
    other_asgi_app=Starlette(
        routes=[Route("/flood", flood), Route("/emit", emit), Route("/rss", alive)]
    ),
)
