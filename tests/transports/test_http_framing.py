"""Message headers cannot change an HTTP request's framing or routing.

Against `FramingServer`, which frames requests as a real server does (chunked bodies,
Content-Length, keep-alive): a message carrying framing headers and a payload that holds
a second request must arrive as exactly one POST, with the URL's `Host`, for both HTTP
transports. Both refuse the same characters, at construction for their own settings and
per message for a message's headers."""

from __future__ import annotations

import asyncio
import math

import pytest
from opentelemetry.sdk.trace import TracerProvider

from surelay.envelope import Envelope, header_problem
from surelay.errors import InvalidMessage
from surelay.telemetry import traceparent_of
from surelay.transports import AsyncHttpTransport, HttpTransport

from .framing_server import FramingServer
from .test_http import TRACEPARENT, Transport, deliver, envelope

SMUGGLED = b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: internal\r\n\r\n"
FRAMING = {
    "Transfer-Encoding": "chunked",
    "Content-Length": "5",
    "Host": "internal",
    "Connection": "keep-alive",
    "Keep-Alive": "timeout=600",
    "Upgrade": "h2c",
    "TE": "trailers",
    "Trailer": "X-After",
    "Expect": "100-continue",
    "Proxy-Authorization": "Basic eDp5",
    "proxy-connection": "keep-alive",
}
HOP_BY_HOP = {"te", "trailer", "upgrade", "keep-alive", "proxy-authorization"}
HOP_BY_HOP |= {"proxy-connection", "expect"}


@pytest.fixture(params=[HttpTransport, AsyncHttpTransport], ids=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> type[Transport]:
    kind: type[Transport] = request.param
    return kind


def test_framing_headers_that_slipped_into_a_message_are_not_forwarded(
    kind: type[Transport],
) -> None:
    """An envelope made directly (as a stored or replayed one may be, past `send`'s
    check) still goes out as one POST per message, framed by the transport."""
    with FramingServer() as server:
        smuggler = envelope(payload=SMUGGLED, headers={**FRAMING, "traceparent": TRACEPARENT})
        deliver(kind(server.url + "/hook"), smuggler, smuggler)
        assert server.wait_for(2)
        requests = list(server.requests)
    assert [(r.method, r.target) for r in requests] == [("POST", "/hook")] * 2
    for request in requests:
        assert request.body == SMUGGLED
        assert request.headers["host"] == server.authority
        assert request.headers["content-length"] == str(len(SMUGGLED))
        assert "transfer-encoding" not in request.headers
        assert not HOP_BY_HOP & set(request.headers)
        assert request.headers.get("connection", "keep-alive").lower() == "keep-alive"
        assert request.headers["traceparent"] == TRACEPARENT
        hosts = [value for name, value in request.raw_headers if name.lower() == b"host"]
        assert hosts == [server.authority.encode()]
    assert len({r.connection for r in requests}) == 1  # kept alive, still in step


@pytest.mark.parametrize(
    "value",
    ["a\r\nX-Injected: 1", "a\nb", "a\rb", "nul\x00", "bell\x07", "del\x7f", "c1\x85", "\ud800"],
    ids=["crlf", "lf", "cr", "nul", "bel", "del", "c1", "surrogate"],
)
def test_both_transports_refuse_the_same_characters(kind: type[Transport], value: str) -> None:
    assert header_problem("X-Bad", value) is not None
    with FramingServer() as server:
        transport = kind(server.url + "/")
        with pytest.raises(InvalidMessage, match="header 'X-Bad' holds a"):
            deliver(transport, envelope(headers={"X-Bad": value}))
        with pytest.raises(InvalidMessage, match="header 'X-Bad' holds a"):
            deliver(transport, envelope(idempotency_key="id", headers={"X-Bad": value}))
        deliver(transport, envelope())  # and the transport works on
        assert server.wait_for(1)
        assert len(server.requests) == 1


def test_both_transports_send_the_same_bytes_for_text_beyond_ascii() -> None:
    values = {"X-Text": "naïve € 日本", "X-Tab": "a\tb"}
    sent: list[dict[bytes, bytes]] = []
    for kind in (HttpTransport, AsyncHttpTransport):
        with FramingServer() as server:
            deliver(kind(server.url + "/é?q=é"), envelope(headers=values))
            assert server.wait_for(1)
            [request] = server.requests
        assert request.target == "/%C3%A9?q=%C3%A9"
        sent.append({n.lower(): v for n, v in request.raw_headers if n.lower().startswith(b"x-t")})
    assert sent[0] == sent[1] == {b"x-text": "naïve € 日本".encode(), b"x-tab": b"a\tb"}


def test_the_attempts_span_is_the_traceparent_sent() -> None:
    """Called inside a span (the runtime calls inside the attempt's `surelay.deliver`),
    the request's `traceparent` is that span's, not the one the envelope carries."""
    tracer = TracerProvider().get_tracer("test")
    for kind in (HttpTransport, AsyncHttpTransport):
        with FramingServer() as server, tracer.start_as_current_span("attempt") as span:
            expected = traceparent_of(span)
            assert expected is not None and expected != TRACEPARENT
            transport = kind(server.url + "/")
            if isinstance(transport, HttpTransport):
                transport(envelope())
            else:
                asyncio.run(_call_and_close(transport, envelope()))
            assert server.wait_for(1)
            assert server.requests[0].headers["traceparent"] == expected


async def _call_and_close(transport: AsyncHttpTransport, one: Envelope) -> None:
    try:
        await transport(one)
    finally:
        await transport.aclose()


# -- construction ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (math.inf, ValueError),
        (math.nan, ValueError),
        (0, ValueError),
        (-1.0, ValueError),
        ("10", TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_a_bad_timeout_is_refused_at_once(
    kind: type[Transport], timeout: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="timeout must be a finite number > 0"):
        kind("http://127.0.0.1/", timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "text"),
    [
        ({"X-Auth": "t\r\nHost: evil"}, "header 'X-Auth' holds a control character"),
        ({"X-Auth": "t\x00"}, "header 'X-Auth' holds a control character"),
        ({"bad name": "v"}, "HTTP token"),
        ({"Host": "other"}, "header 'Host' is refused"),
        ({"content-length": "1"}, "header 'content-length' is refused"),
        ({"Proxy-Authorization": "x"}, "header 'Proxy-Authorization' is refused"),
        ({"X-A": 1}, "header 'X-A' must be a str"),
    ],
)
def test_bad_transport_headers_are_refused_at_once(
    kind: type[Transport], headers: dict[str, object], text: str
) -> None:
    with pytest.raises(ValueError, match=text):
        kind("http://127.0.0.1/", headers=headers)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["http://127.0.0.1/a b", "http://127.0.0.1/\r\nX: y"])
def test_a_url_with_spaces_or_control_characters_is_refused(
    kind: type[Transport], url: str
) -> None:
    with pytest.raises(ValueError, match="url must not hold spaces or control characters"):
        kind(url)
