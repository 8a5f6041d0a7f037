"""A push worker for the multi-process tests: an ASGI app that opens the runtime on
SURELAY_PUSH_DATA at startup and serves `rt.push` at /push, as every uvicorn or gunicorn
worker of a host would.

Usage: python -m uvicorn tests.push_app:app --port PORT
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import Mount

from surelay import Runtime
from surelay.push import PushConfig

SECRET = "push-test-secret-0123456789"


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    push = PushConfig(SECRET, max_pending=100_000)
    rt = Runtime.open(os.environ["SURELAY_PUSH_DATA"], transports={}, push=push)
    app.router.routes.append(Mount("/push", app=rt.push.asgi_app()))
    try:
        yield
    finally:
        rt.close()


app = Starlette(lifespan=lifespan)
