"""HttpTransport and AsyncHttpTransport against a real HTTP/1.1 server on 127.0.0.1.

The rules are the same for both, so most tests run once per transport; the async one is
driven the way the runtime does, awaited on an event loop and closed with `aclose`."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from surelay.envelope import Envelope
from surelay.errors import InvalidMessage, PermanentError, TransientError
from surelay.transports import AsyncHttpTransport, HttpTransport

from .http_server import HttpServer, Reply

Transport = HttpTransport | AsyncHttpTransport

SECRET = "whsec_" + base64.b64encode(b"a 24-byte-or-longer key!").decode()
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with HttpServer() as running:
        yield running


@pytest.fixture(params=[HttpTransport, AsyncHttpTransport], ids=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> type[Transport]:
    kind: type[Transport] = request.param
    return kind


def deliver(transport: Transport, *envelopes: Envelope) -> None:
    """Send `envelopes` one after another, as the runtime would; raise the first error.
    An async transport runs them on one event loop and is closed at the end."""
    if isinstance(transport, HttpTransport):
        for one in envelopes:
            transport(one)
        return

    async def run() -> None:
        try:
            for one in envelopes:
                await transport(one)
        finally:
            await transport.aclose()

    asyncio.run(run())


def envelope(**fields: object) -> Envelope:
    values: dict[str, object] = {
        "message_id": "m-1",
        "transport": "hook",
        "payload": b'{"n": 1}',
        "idempotency_key": "idem-1",
        "headers": {"traceparent": TRACEPARENT},
        "attempt": 2,
    }
    values.update(fields)
    return Envelope(**values)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- outcomes ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 202, 204])
def test_2xx_is_delivered_with_the_payload(
    server: HttpServer, kind: type[Transport], status: int
) -> None:
    server.default = Reply(status, body=b"" if status == 204 else None)
    deliver(kind(server.url + "/hook?x=1"), envelope())
    [request] = server.requests
    assert (request.method, request.path, request.body) == ("POST", "/hook?x=1", b'{"n": 1}')


def in_30_seconds() -> str:
    return email.utils.formatdate(time.time() + 30, usegmt=True)


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (408, None, None),
        (429, "7", 7.0),
        (429, in_30_seconds, 30.0),  # an HTTP date
        (500, None, None),
        (503, "120", 120.0),
        (503, "Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date past: no wait
        (503, "soon", None),  # unreadable: the retry policy decides
    ],
)
def test_transient_statuses_carry_retry_after(
    server: HttpServer,
    kind: type[Transport],
    status: int,
    retry_after: object,
    expected: float | None,
) -> None:
    header = retry_after() if callable(retry_after) else retry_after
    assert header is None or isinstance(header, str)
    server.default = Reply(status, retry_after=header)
    transport = kind(server.url + "/hook")
    with pytest.raises(TransientError) as info:
        deliver(transport, envelope())
    assert str(info.value) == f"POST {server.url}/hook: HTTP {status}: status {status}"
    if expected is None:
        assert info.value.retry_after is None
    else:
        assert info.value.retry_after == pytest.approx(expected, abs=3.0)


@pytest.mark.parametrize("status", [301, 400, 404, 410])
def test_other_statuses_are_permanent(
    server: HttpServer, kind: type[Transport], status: int
) -> None:
    server.default = Reply(status, retry_after="5")
    with pytest.raises(PermanentError) as info:
        deliver(kind(server.url + "/hook"), envelope())
    followed = " (redirects are not followed)" if status < 400 else ""
    assert str(info.value) == f"POST {server.url}/hook: HTTP {status}: status {status}{followed}"
    assert len(server.requests) == 1  # a redirect is not followed


def test_the_message_quotes_the_first_200_characters_of_the_body(
    server: HttpServer, kind: type[Transport]
) -> None:
    server.default = Reply(500, body=b"  " + b"e" * 100 + b"f" * 100 + b"g" * 5000)
    with pytest.raises(TransientError) as info:
        deliver(kind(server.url + "/"), envelope())
    assert str(info.value) == f"POST {server.url}/: HTTP 500: " + "e" * 100 + "f" * 100


def test_connection_refused_is_transient(kind: type[Transport]) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(TransientError, match=rf"^POST {url}: .*ConnectionRefusedError"):
        deliver(kind(url), envelope())


def test_a_server_that_hangs_is_cut_off_by_the_timeout(
    server: HttpServer, kind: type[Transport]
) -> None:
    server.default = Reply(delay=5.0)
    transport = kind(server.url + "/", timeout=0.2)
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"(?i)timed out|timeout"):
        deliver(transport, envelope())
    assert time.monotonic() - started < 2.5
    server.default = Reply(200)  # the next call gets a fresh connection and is delivered
    deliver(transport, envelope())
    assert len(server.connections) == 2


def test_an_unsendable_header_is_invalid(server: HttpServer, kind: type[Transport]) -> None:
    transport = kind(server.url + "/")
    with pytest.raises(InvalidMessage, match=r"^POST http://127.0.0.1:\d+/: header 'X-Bad'"):
        deliver(transport, envelope(headers={"X-Bad": "a\r\nb"}))
    deliver(transport, envelope())  # and the transport works on
    assert len(server.requests) == 1


# -- connections -------------------------------------------------------------------------


def test_sequential_calls_reuse_one_connection(server: HttpServer, kind: type[Transport]) -> None:
    deliver(kind(server.url + "/"), *(envelope(message_id=f"m{n}") for n in range(5)))
    assert len(server.requests) == 5
    assert len(server.connections) == 1  # one TCP connection carried all five


def test_http_transport_keeps_one_connection_per_thread(server: HttpServer) -> None:
    transport = HttpTransport(server.url + "/")
    start = threading.Barrier(3)

    def sender(n: int) -> None:
        start.wait()
        for m in range(4):
            transport(envelope(message_id=f"t{n}-{m}"))

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    per_connection = Counter(request.connection for request in server.requests)
    assert sorted(per_connection.values()) == [4, 4, 4]
    senders = {(r.headers["x-surelay-message-id"][:2], r.connection) for r in server.requests}
    assert len(senders) == 3  # each thread's four requests came on one connection of its own


def test_http_transport_reopens_after_the_server_closes(server: HttpServer) -> None:
    server.default = Reply(200)
    transport = HttpTransport(server.url + "/")
    transport(envelope())
    server.default = Reply(503, body=b"bye")
    with pytest.raises(TransientError):
        transport(envelope())
    server.default = Reply(200)
    transport(envelope())
    assert len(server.connections) == 1  # a 503 on a kept-alive connection keeps it


# -- headers -----------------------------------------------------------------------------


def test_request_headers(server: HttpServer, kind: type[Transport]) -> None:
    transport = kind(
        server.url + "/",
        headers={"Authorization": "Bearer t", "x-tenant": "from-transport"},
    )
    deliver(transport, envelope(headers={"traceparent": TRACEPARENT, "X-Tenant": "from-msg"}))
    [request] = server.requests
    headers = request.headers
    assert headers["idempotency-key"] == "idem-1"
    assert headers["x-surelay-message-id"] == "m-1"
    assert headers["x-surelay-attempt"] == "2"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["traceparent"] == TRACEPARENT
    assert headers["authorization"] == "Bearer t"
    names = [name.lower() for name, _ in request.raw_headers]
    assert names.count("x-tenant") == 1  # the transport's header replaced the message's
    assert headers["x-tenant"] == "from-transport"
    assert not any(name.startswith("webhook-") for name in names)  # unsigned


def test_the_transports_headers_win_over_surelays(
    server: HttpServer, kind: type[Transport]
) -> None:
    transport = kind(server.url + "/", headers={"content-type": "application/json"})
    deliver(transport, envelope(idempotency_key="k-9"))
    [request] = server.requests
    assert [v for n, v in request.raw_headers if n.lower() == "content-type"] == [
        "application/json"
    ]
    assert request.headers["idempotency-key"] == "k-9"


# -- Standard Webhooks signatures --------------------------------------------------------


def test_signed_requests_verify(server: HttpServer, kind: type[Transport]) -> None:
    transport = kind(server.url + "/", signing_secret=SECRET, headers={"webhook-id": "not allowed"})
    first, retry = envelope(attempt=1), envelope(attempt=2)
    deliver(transport, first, retry)
    for request in server.requests:
        assert request.headers["webhook-id"] == "idem-1"  # the idempotency key
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) <= 5
        assert request.headers["webhook-signature"].startswith("v1,")
        assert Webhook(SECRET).verify(request.body, request.headers) == {"n": 1}
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(b'{"n": 2}', request.headers)
    ids = {request.headers["webhook-id"] for request in server.requests}
    assert ids == {"idem-1"}  # a retry keeps its webhook-id


def test_a_bad_secret_is_refused_at_construction(kind: type[Transport]) -> None:
    with pytest.raises(ValueError, match="whsec_"):
        kind("http://127.0.0.1/", signing_secret=base64.b64encode(b"key").decode())
    with pytest.raises(ValueError, match="not valid base64"):
        kind("http://127.0.0.1/", signing_secret="whsec_***")
    with pytest.raises(ValueError, match="empty key"):
        kind("http://127.0.0.1/", signing_secret="whsec_")


# -- construction ------------------------------------------------------------------------


def test_bad_construction_is_refused(kind: type[Transport]) -> None:
    with pytest.raises(ValueError, match="url must be an http"):
        kind("ftp://example.invalid/")
    with pytest.raises(ValueError, match="url must be an http"):
        kind("http:///no-host")
    with pytest.raises(ValueError, match="timeout must be a finite number > 0"):
        kind("http://127.0.0.1/", timeout=0)


def test_repr_names_the_url(kind: type[Transport]) -> None:
    transport = kind("https://hooks.example.com/in", timeout=3.0)
    assert repr(transport) == f"{kind.__name__}('https://hooks.example.com/in')"
    assert transport.timeout == 3.0


def test_a_kept_connection_the_server_closed_is_replaced_without_a_failure() -> None:
    """The server answers, keeps the connection open by HTTP's rules, then closes it:
    the next call finds it dead before any response and is sent again, fresh."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    requests: list[bytes] = []

    def serve() -> None:
        for _ in range(2):
            connection, _ = listener.accept()
            with connection:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += connection.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                while len(body) < length:
                    body += connection.recv(65536)
                requests.append(body)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            # closed without a word: the client still holds it as kept alive

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    transport = HttpTransport(f"http://127.0.0.1:{port}/hook", timeout=5)
    transport(envelope(payload=b"first"))
    transport(envelope(payload=b"second"))  # the kept connection is dead: sent once more
    thread.join(5)
    listener.close()
    assert requests == [b"first", b"second"]
