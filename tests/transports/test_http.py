"""HttpTransport against a real http.server on 127.0.0.1."""

from __future__ import annotations

import email.utils
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from surelay.envelope import Envelope
from surelay.errors import PermanentError, TransientError
from surelay.transports import HttpTransport
from surelay.transports.http import parse_retry_after


class Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.client_ports: list[int] = []
        self.release = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the transport reuses its connection
    server: Receiver

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, dict(self.headers), body))
        self.server.client_ports.append(self.client_address[1])
        path = self.path.split("?")[0]
        if path == "/slow":
            self.server.release.wait(10)
        status, headers = {
            "/ok": (200, {}),
            "/accepted": (202, {}),
            "/unavailable": (503, {"Retry-After": "7"}),
            "/throttled": (429, {"Retry-After": email.utils.formatdate(usegmt=True)}),
            "/timeout": (408, {}),
            "/gone": (410, {}),
            "/bad": (400, {}),
            "/slow": (200, {}),
        }[path]
        reply = f"status {status}".encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def url(server: Receiver, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def envelope(**fields: object) -> Envelope:
    values: dict[str, object] = {
        "message_id": "m-1",
        "transport": "hook",
        "payload": b'{"n": 1}',
        "idempotency_key": "idem-1",
        "headers": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        "attempt": 2,
    }
    values.update(fields)
    return Envelope(**values)  # type: ignore[arg-type]


def test_2xx_is_delivered_with_payload_and_headers(receiver: Receiver) -> None:
    transport = HttpTransport(url(receiver, "/ok?x=1"), headers={"Authorization": "Bearer t"})
    transport(envelope())
    HttpTransport(url(receiver, "/accepted"))(envelope())
    path, headers, body = receiver.received[0]
    assert (path, body) == ("/ok?x=1", b'{"n": 1}')
    assert headers["Idempotency-Key"] == "idem-1"
    assert headers["X-Surelay-Message-Id"] == "m-1"
    assert headers["X-Surelay-Attempt"] == "2"
    assert headers["traceparent"].startswith("00-0af765")
    assert headers["Authorization"] == "Bearer t"


def test_one_connection_is_reused_per_thread(receiver: Receiver) -> None:
    transport = HttpTransport(url(receiver, "/ok"))
    for n in range(5):
        transport(envelope(message_id=f"m{n}"))
    assert len(receiver.received) == 5
    assert len(set(receiver.client_ports)) == 1  # one TCP connection carried all five


@pytest.mark.parametrize(
    ("path", "retry_after"),
    [("/unavailable", 7.0), ("/throttled", 0.0), ("/timeout", None)],
)
def test_transient_statuses(receiver: Receiver, path: str, retry_after: float | None) -> None:
    with pytest.raises(TransientError, match="HTTP") as info:
        HttpTransport(url(receiver, path))(envelope())
    if retry_after is None:
        assert info.value.retry_after is None
    else:
        assert info.value.retry_after == pytest.approx(retry_after, abs=2.0)


@pytest.mark.parametrize("path", ["/gone", "/bad"])
def test_other_4xx_are_permanent(receiver: Receiver, path: str) -> None:
    with pytest.raises(PermanentError, match=r"HTTP 4\d\d: status 4"):
        HttpTransport(url(receiver, path))(envelope())


def test_a_server_that_hangs_is_cut_off_by_the_timeout(receiver: Receiver) -> None:
    transport = HttpTransport(url(receiver, "/slow"), timeout=0.2)
    with pytest.raises(TransientError, match=r"timed out|TimeoutError"):
        transport(envelope())
    receiver.release.set()


def test_connection_refused_is_transient() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransientError, match="ConnectionRefusedError"):
        HttpTransport(f"http://127.0.0.1:{port}/")(envelope())


def test_an_unsendable_header_is_permanent(receiver: Receiver) -> None:
    with pytest.raises(PermanentError, match="invalid request"):
        HttpTransport(url(receiver, "/ok"))(envelope(headers={"X-Bad": "a\r\nb"}))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("120", 120.0),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: wait 0
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=2e9) == expected
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


def test_bad_construction_is_refused() -> None:
    with pytest.raises(ValueError, match="url"):
        HttpTransport("ftp://example.invalid/")
    with pytest.raises(ValueError, match="timeout"):
        HttpTransport("http://127.0.0.1/", timeout=0)
