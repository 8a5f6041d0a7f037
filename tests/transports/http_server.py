"""A small real HTTP/1.1 server on 127.0.0.1 for the transport tests and benchmarks.

In a test it runs in a thread of its own (its own asyncio loop)::

    with HttpServer({"/busy": Reply(503, retry_after="7")}) as server:
        HttpTransport(server.url + "/busy")(envelope)
        server.requests[0].headers["idempotency-key"]

As a process (for benchmarks) it prints its port on the first line of stdout and serves
until it is terminated::

    python tests/transports/http_server.py --delay 0.02 --port 0

It keeps connections alive (HTTP/1.1), reads Content-Length bodies only (a chunked
request is answered 501 and closed), and records every request with the number of the
TCP connection it came on, so tests can assert that a client reused its connection.
Built on asyncio streams, so a thousand concurrent connections each waiting 20 ms cost
no threads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType

__all__ = ["HttpServer", "Reply", "Request"]


@dataclass(frozen=True)
class Reply:
    """How to answer: `status`, an optional `Retry-After` value, after `delay` seconds.

    `body` defaults to `b"status <code>"`."""

    status: int = 200
    retry_after: str | None = None
    delay: float = 0.0
    body: bytes | None = None


@dataclass(frozen=True)
class Request:
    """One request as received. `headers` has lower-case names (the last of repeated
    ones), `raw_headers` every header line as sent; `connection` numbers the TCP
    connection it came on (1, 2, ... in order of acceptance)."""

    method: str
    path: str
    headers: dict[str, str]
    raw_headers: tuple[tuple[str, str], ...]
    body: bytes
    connection: int


Script = Mapping[str, Reply] | Callable[[Request], Reply]
"""Replies by path (without the query; unknown paths get `default`), or a function."""


class HttpServer:
    """The server, running in a daemon thread until `stop()` (or the `with` block ends).

    `requests` lists what was received, in order; `record=False` keeps nothing (for long
    benchmark runs)."""

    def __init__(
        self, script: Script | None = None, *, default: Reply = Reply(), record: bool = True
    ) -> None:
        self.script: Script = script if script is not None else {}
        self.default = default
        self.record = record
        self.requests: list[Request] = []
        self._connections = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> set[int]:
        """The numbers of the connections the recorded requests came on."""
        return {request.connection for request in self.requests}

    # -- in a thread -------------------------------------------------------------------

    def start(self) -> HttpServer:
        """Start serving in a daemon thread; returns once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.listen())
            except BaseException as error:  # handed to start(), which raises it
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name="http-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop serving: close the listener and every open connection (cutting short any
        reply still waiting out its delay), then join the thread."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = None

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the server itself -------------------------------------------------------------

    async def listen(self, port: int = 0) -> None:
        """Bind 127.0.0.1:`port` (0: a free one) and start accepting; sets `port`."""
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", port, backlog=4096, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        handlers = asyncio.all_tasks() - {asyncio.current_task()}
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def _reply_for(self, request: Request) -> Reply:
        if callable(self.script):
            return self.script(request)
        return self.script.get(request.path.split("?", 1)[0], self.default)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = next(self._connections)
        try:
            while await self._one(reader, writer, connection):
                pass
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ValueError,
        ):
            pass  # the client went away (or sent garbage): drop the connection
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: int
    ) -> bool:
        """Read one request and answer it; True to keep the connection open."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as end:
            if end.partial:
                raise
            return False  # closed between requests: the normal end of keep-alive
        request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        method, path, version = request_line.split(" ", 2)
        fields = (line.partition(":") for line in lines)
        raw = tuple((name.strip(), value.strip()) for name, _, value in fields)
        headers = {name.lower(): value for name, value in raw}
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = "close" not in tokens and (version == "HTTP/1.1" or "keep-alive" in tokens)
        if "transfer-encoding" in headers:
            await self._write(writer, Reply(501, body=b"chunked bodies are not supported"), False)
            return False
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        request = Request(method, path, headers, raw, body, connection)
        if self.record:
            self.requests.append(request)
        reply = self._reply_for(request)
        if reply.delay > 0:
            await asyncio.sleep(reply.delay)
        await self._write(writer, reply, keep_alive)
        return keep_alive

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, reply: Reply, keep_alive: bool) -> None:
        body = reply.body if reply.body is not None else f"status {reply.status}".encode()
        try:
            reason = HTTPStatus(reply.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [
            f"HTTP/1.1 {reply.status} {reason}",
            f"Content-Length: {len(body)}",
            "Content-Type: text/plain",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        if reply.retry_after is not None:
            lines.append(f"Retry-After: {reply.retry_after}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()


async def _main(port: int, delay: float) -> None:
    server = HttpServer(default=Reply(delay=delay), record=False)
    await server.listen(port)
    print(server.port, flush=True)
    await asyncio.Event().wait()  # serve until terminated


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0, help="0 (default): a free port")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each reply")
    options = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(options.port, options.delay))
    sys.exit(0)
