"""A raw-socket HTTP/1.1 server on 127.0.0.1 that frames requests as a real server does.

It reads each request line and header block, takes the body by `Transfer-Encoding:
chunked` (which wins over `Content-Length`, RFC 9112 6.3) or else by `Content-Length`,
keeps the connection alive, and records every request it parses, in order. So a client
that lets a message's headers set the framing shows up here as a second, smuggled
request (`GET /admin`) after the POST::

    with FramingServer() as server:
        HttpTransport(server.url + "/hook")(envelope)
        [request] = server.requests
        request.headers["host"] == server.authority

A thread per connection: the tests open a handful at most.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass
from types import TracebackType

__all__ = ["FramingServer", "Parsed"]

_MAX_HEAD = 65_536


@dataclass(frozen=True)
class Parsed:
    """One request as the server framed it. `headers`: lower-case names (the last of
    repeated ones); `raw_headers`: every header line as received, as bytes;
    `connection` numbers the TCP connection (1, 2, ... in order of acceptance)."""

    method: str
    target: str
    headers: dict[str, str]
    raw_headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    connection: int


class FramingServer:
    """Serve in daemon threads until `stop()` (or the `with` block ends); every request
    gets `status` with an empty body and `Connection: keep-alive`."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[Parsed] = []
        self.arrived = threading.Condition()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._connections: list[socket.socket] = []
        self._count = 0
        self._thread = threading.Thread(target=self._accept, name="framing-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def authority(self) -> str:
        """The `Host` a client sends for `url`."""
        return f"127.0.0.1:{self.port}"

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least `count` requests were parsed."""
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.requests) >= count, timeout)

    def __enter__(self) -> FramingServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        for one in (self._listener, *self._connections):
            with contextlib.suppress(OSError):  # closed by the client already
                one.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked on it
            one.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # stopped
            self._count += 1
            self._connections.append(connection)
            threading.Thread(
                target=self._serve, args=(connection, self._count), daemon=True
            ).start()

    def _serve(self, connection: socket.socket, number: int) -> None:
        reader = _Reader(connection)
        try:
            while True:
                request = self._one(reader, number)
                if request is None:
                    return
                with self.arrived:
                    self.requests.append(request)
                    self.arrived.notify_all()
                connection.sendall(
                    f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n"
                    "Connection: keep-alive\r\n\r\n".encode()
                )
        except (OSError, ValueError):
            return  # the client went away, or sent what no server could frame
        finally:
            connection.close()

    @staticmethod
    def _one(reader: _Reader, number: int) -> Parsed | None:
        line = reader.line()
        if line is None:
            return None  # closed between requests: the end of keep-alive
        method, target, _version = line.decode("latin-1").split(" ", 2)
        raw: list[tuple[bytes, bytes]] = []
        while (field := reader.line()) not in (b"", None):
            name, _, value = field.partition(b":")
            raw.append((name.strip(), value.strip()))
        headers = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in raw}
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = b""
            while (size_line := reader.line()) is not None:
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while reader.line() not in (b"", None):
                        pass  # trailer fields
                    break
                body += reader.exactly(size)
                reader.line()  # the CRLF after the chunk
        else:
            body = reader.exactly(int(headers.get("content-length", "0")))
        return Parsed(method, target, headers, tuple(raw), body, number)


class _Reader:
    """Lines and counted bytes from a socket, with what was read ahead kept."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        self._buffer = b""

    def _more(self) -> bool:
        chunk = self._connection.recv(65_536)
        self._buffer += chunk
        return bool(chunk)

    def line(self) -> bytes | None:
        """The next CRLF-ended line without its CRLF; None at the end of the stream."""
        while b"\r\n" not in self._buffer:
            if len(self._buffer) > _MAX_HEAD or not self._more():
                return None
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            if not self._more():
                raise ValueError("the stream ended inside a body")
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data
