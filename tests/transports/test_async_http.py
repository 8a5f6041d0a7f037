"""What only AsyncHttpTransport has: cancellation, a client per event loop, a pool sized
by `prepare`, `aclose`, and the `http` extra. The rules it shares with HttpTransport are
tested in test_http.py."""

from __future__ import annotations

import asyncio
import gc
import inspect
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator

import pytest

from surelay.transports import AsyncHttpTransport

from .http_server import HttpServer, Reply, Request
from .test_http import envelope


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with HttpServer() as running:
        yield running


def test_a_call_is_a_coroutine() -> None:
    transport = AsyncHttpTransport("http://127.0.0.1:9/")
    assert inspect.iscoroutinefunction(type(transport).__call__)
    call = transport(envelope())
    assert inspect.iscoroutine(call)
    call.close()


def test_an_ack_timeout_cancels_promptly_and_the_next_call_works(server: HttpServer) -> None:
    server.script = lambda request: Reply(delay=5.0 if request.body == b"hang" else 0.0)
    transport = AsyncHttpTransport(server.url + "/")

    async def run() -> float:
        started = time.monotonic()
        with pytest.raises(TimeoutError):  # wait_for cancelled the call
            await asyncio.wait_for(transport(envelope(payload=b"hang")), 0.1)
        elapsed = time.monotonic() - started
        await transport(envelope())  # same transport, same client, same loop
        await transport.aclose()
        return elapsed

    assert asyncio.run(run()) < 1.0
    first, second = server.requests
    assert (first.body, second.body) == (b"hang", b'{"n": 1}')
    assert first.connection != second.connection  # the cut-off connection was not reused


def test_cancellation_propagates(server: HttpServer) -> None:
    arrived = threading.Event()

    def script(request: Request) -> Reply:
        arrived.set()
        return Reply(delay=5.0)

    server.script = script
    transport = AsyncHttpTransport(server.url + "/")

    async def run() -> None:
        task = asyncio.create_task(transport(envelope()))
        assert await asyncio.to_thread(arrived.wait, 5.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()  # not turned into a delivery failure or swallowed
        server.script = {}
        await transport(envelope())
        await transport.aclose()

    asyncio.run(run())
    assert len(server.requests) == 2


def test_the_client_is_made_anew_on_a_new_event_loop(server: HttpServer) -> None:
    transport = AsyncHttpTransport(server.url + "/")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(transport(envelope()))  # no aclose: that loop just ends
        asyncio.run(transport(envelope()))
        asyncio.run(transport.aclose())
        gc.collect()
    assert len(server.requests) == 2
    assert len(server.connections) == 2
    unclosed = [str(w.message) for w in caught if "Unclosed client session" in str(w.message)]
    assert unclosed == []


def test_aclose_then_call_again(server: HttpServer) -> None:
    transport = AsyncHttpTransport(server.url + "/")

    async def run() -> None:
        await transport.aclose()  # nothing to close yet
        await transport(envelope())
        await transport.aclose()
        await transport.aclose()
        await transport(envelope())  # a new client
        await transport.aclose()

    asyncio.run(run())
    assert len(server.connections) == 2


def concurrent(transport: AsyncHttpTransport, calls: int) -> None:
    async def run() -> None:
        try:
            await asyncio.gather(*(transport(envelope(message_id=f"m{n}")) for n in range(calls)))
        finally:
            await transport.aclose()

    asyncio.run(run())


def test_prepare_sizes_the_pool(server: HttpServer) -> None:
    server.default = Reply(delay=0.2)
    transport = AsyncHttpTransport(server.url + "/")
    assert transport.pool_size == 100
    transport.prepare(3)
    assert transport.pool_size == 3
    concurrent(transport, 10)
    assert len(server.requests) == 10
    assert len(server.connections) == 3  # ten calls in flight shared three connections


def test_prepare_allows_more_connections_than_the_default(server: HttpServer) -> None:
    server.default = Reply(delay=1.0)
    transport = AsyncHttpTransport(server.url + "/")
    transport.prepare(150)
    concurrent(transport, 150)
    assert len(server.connections) == 150


def test_prepare_after_a_call_replaces_the_client(server: HttpServer) -> None:
    transport = AsyncHttpTransport(server.url + "/")

    async def run() -> None:
        await transport(envelope())
        transport.prepare(2)
        server.default = Reply(delay=0.2)
        await asyncio.gather(*(transport(envelope()) for _ in range(6)))
        await transport.aclose()

    asyncio.run(run())
    assert len(server.connections) == 3  # the first client's one, then two


@pytest.mark.parametrize("concurrency", [0, -1, 1.5, True, "8"])
def test_prepare_refuses_a_bad_concurrency(concurrency: object) -> None:
    with pytest.raises(ValueError, match="concurrency must be an int >= 1"):
        AsyncHttpTransport("http://127.0.0.1/").prepare(concurrency)  # type: ignore[arg-type]


def test_without_aiohttp_construction_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["aiohttp"] = None  # as if not installed
        from surelay.transports import AsyncHttpTransport, HttpTransport
        HttpTransport("http://127.0.0.1/")
        try:
            AsyncHttpTransport("http://127.0.0.1/")
        except ImportError as error:
            print(error)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install surelay[http]" in result.stdout
