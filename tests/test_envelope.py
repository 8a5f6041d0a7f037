"""The fast constructor makes the same Envelope the dataclass does; what `send` refuses
in headers and keys."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surelay.envelope import (
    Envelope,
    check_headers,
    check_text,
    checked_envelope,
    header_problem,
    is_framing_header,
)
from surelay.errors import InvalidMessage

from .helpers import Recorder, open_runtime
from .storage.builders import envelopes


@given(envelopes)
def test_checked_envelope_equals_the_dataclass_built_one(envelope: Envelope) -> None:
    assert isinstance(envelope.headers, MappingProxyType)
    made = checked_envelope(*(getattr(envelope, f.name) for f in dataclasses.fields(Envelope)))
    assert type(made) is Envelope
    assert made == envelope
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.attempt = 2  # type: ignore[misc]


# -- what send refuses ------------------------------------------------------------------

FRAMING = [
    "Host",
    "host",
    "Content-Length",
    "TRANSFER-ENCODING",
    "Connection",
    "Keep-Alive",
    "Upgrade",
    "TE",
    "Trailer",
    "Expect",
    "Proxy-Authorization",
    "proxy-connection",
]


@pytest.mark.parametrize("name", FRAMING)
def test_framing_and_hop_by_hop_headers_are_refused_by_name(name: str) -> None:
    assert is_framing_header(name)
    with pytest.raises(InvalidMessage, match=f"header '{name}' is refused"):
        check_headers({"X-Ok": "1", name: "chunked"})


@pytest.mark.parametrize("name", ["X-Proxy", "Hosts", "Content-Type", "Trailers-X", "traceparent"])
def test_other_headers_pass(name: str) -> None:
    assert not is_framing_header(name)
    assert check_headers({name: "v"}) == {name: "v"}


@pytest.mark.parametrize(
    ("headers", "text"),
    [
        ({"a b": "v"}, "header name 'a b' must be a non-empty str of HTTP token characters"),
        ({"a:b": "v"}, "HTTP token"),
        ({"": "v"}, "HTTP token"),
        ({"é": "v"}, "HTTP token"),
        ({"\ud800": "v"}, "HTTP token"),
        ({"X-A": "a\r\nb"}, r"header 'X-A' holds a control character \('\\r'"),
        ({"X-A": "a\x00"}, "header 'X-A' holds a control character"),
        ({"X-A": "\x1b]0;title\x07"}, "header 'X-A' holds a control character"),
        ({"X-A": "\x9b"}, "header 'X-A' holds a control character"),
        ({"X-A": "a\udc80"}, "header 'X-A' holds a lone surrogate"),
    ],
)
def test_bad_header_names_and_values_are_refused_naming_the_header(
    headers: dict[str, str], text: str
) -> None:
    with pytest.raises(InvalidMessage, match=text):
        check_headers(headers)


def test_tabs_and_text_beyond_ascii_are_kept() -> None:
    assert check_headers({"X-A": "a\tb naïve €"}) == {"X-A": "a\tb naïve €"}


@given(st.text(max_size=20), st.text(max_size=20))
def test_header_problem_never_raises_and_check_headers_agrees(name: str, value: str) -> None:
    problem = header_problem(name, value)
    try:
        check_headers({name: value})
    except InvalidMessage as error:
        assert problem is not None or is_framing_header(name), str(error)
    else:
        assert problem is None and not is_framing_header(name)
        value.encode("utf-8")  # sendable as UTF-8


@pytest.mark.parametrize("name", ["key", "idempotency_key"])
def test_a_lone_surrogate_in_a_key_is_invalid_not_a_unicode_error(name: str) -> None:
    with pytest.raises(InvalidMessage, match=f"{name} holds a lone surrogate"):
        check_text(name, "order-\ud800", optional=True)


def test_send_send_batch_and_asend_refuse_them_and_accept_nothing(tmp_path: Path) -> None:
    with open_runtime(tmp_path, {"t": Recorder()}) as rt:
        with pytest.raises(InvalidMessage, match="header 'Transfer-Encoding' is refused"):
            rt.send("t", b"x", headers={"Transfer-Encoding": "chunked"})
        with pytest.raises(InvalidMessage, match=r"messages\[1\].*header 'Host' is refused"):
            rt.send_batch(
                [
                    {"transport": "t", "payload": b"a"},
                    {"transport": "t", "payload": b"b", "headers": {"Host": "internal"}},
                ]
            )
        with pytest.raises(InvalidMessage, match="key holds a lone surrogate"):
            rt.send("t", b"x", key="k-\udfff")
        with pytest.raises(InvalidMessage, match="header 'X-A' holds a lone surrogate"):
            rt.send("t", b"x", headers={"X-A": "\ud83d"})

        async def refused() -> None:
            with pytest.raises(InvalidMessage, match="header 'Connection' is refused"):
                await rt.asend("t", b"x", headers={"Connection": "close"})

        asyncio.run(refused())
        assert rt.stats().accepted == 0
