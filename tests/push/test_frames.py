"""The surelay.push.v1 frames: what a client may send is small and checked; what the
server writes is ASCII JSON that any payload or header survives unchanged."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surelay.push.frames import (
    BAD_FRAME,
    MAX_CLIENT_FRAME,
    MAX_SEQ,
    TOO_BIG,
    Ack,
    BadFrame,
    Hello,
    Pong,
    Read,
    gap,
    msg,
    parse_client,
    ping,
    welcome,
)

seqs = st.integers(0, MAX_SEQ)


@given(upto=seqs)
def test_acks_and_reads_parse(upto: int) -> None:
    assert parse_client(json.dumps({"t": "ack", "upto": upto})) == Ack(upto)
    assert parse_client(json.dumps({"t": "read", "upto": upto})) == Read(upto)


def test_a_hello_parses_with_or_without_resume() -> None:
    hello = {"t": "hello", "v": 1, "token": "v1.a.b", "device": "ios-7f3a"}
    # no resume: a device with no cursor of its own (the server's is used)
    assert parse_client(json.dumps(hello)) == Hello("v1.a.b", "ios-7f3a", None)
    assert parse_client(json.dumps({**hello, "resume": None})) == Hello("v1.a.b", "ios-7f3a", None)
    assert parse_client(json.dumps({**hello, "resume": {}})) == Hello("v1.a.b", "ios-7f3a", 0)
    resumed = {**hello, "resume": {"acked": 41}}
    assert parse_client(json.dumps(resumed)) == Hello("v1.a.b", "ios-7f3a", 41)
    assert parse_client('{"t": "pong"}') == Pong()


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b'{"t": "ack", "upto": 1}', "binary frames"),
        ("not json", "JSON object"),
        ("[" * 4000, "JSON object"),  # nesting that exhausts the parser
        ("[1, 2]", "JSON object"),
        ('{"t": "msg"}', "unknown frame type 'msg'"),
        ("{}", "unknown frame type None"),
        ('{"t": "ack"}', "ack.upto must be an integer"),
        ('{"t": "ack", "upto": -1}', "ack.upto must be an integer"),
        ('{"t": "ack", "upto": true}', "ack.upto must be an integer"),
        ('{"t": "read", "upto": 1.5}', "read.upto must be an integer"),
        (json.dumps({"t": "ack", "upto": MAX_SEQ + 1}), "ack.upto must be an integer"),
        ('{"t": "hello", "v": 2, "token": "t", "device": "d"}', "hello.v must be 1"),
        ('{"t": "hello", "v": 1, "token": "", "device": "d"}', "hello.token"),
        ('{"t": "hello", "v": 1, "token": 5, "device": "d"}', "hello.token"),
        ('{"t": "hello", "v": 1, "token": "t"}', "hello.device must be"),
        ('{"t": "hello", "v": 1, "token": "t", "device": "a\\u001b[2J"}', "control"),
        ('{"t": "hello", "v": 1, "token": "t", "device": "d", "resume": 3}', "hello.resume"),
        (
            '{"t": "hello", "v": 1, "token": "t", "device": "d", "resume": {"acked": "x"}}',
            "hello.resume.acked",
        ),
    ],
)
def test_a_frame_outside_the_protocol_is_refused_naming_it(frame: str | bytes, reason: str) -> None:
    with pytest.raises(BadFrame, match=reason) as raised:
        parse_client(frame)
    assert raised.value.code == BAD_FRAME


@pytest.mark.parametrize("frame", ["x" * (MAX_CLIENT_FRAME + 1), "é" * (MAX_CLIENT_FRAME // 2 + 1)])
def test_an_oversized_frame_is_refused_before_it_is_parsed(frame: str) -> None:
    with pytest.raises(BadFrame, match="at most") as raised:
        parse_client(frame)
    assert raised.value.code == TOO_BIG


@given(
    seq=seqs,
    data=st.binary(max_size=256),
    headers=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4),
    attempt=st.integers(1, 100),
)
def test_a_msg_frame_is_ascii_and_carries_any_payload_and_headers(
    seq: int, data: bytes, headers: dict[str, str], attempt: int
) -> None:
    frame = msg(seq, "m-1", data, headers, attempt)
    assert frame.isascii()
    assert "\n" not in frame
    fields = json.loads(frame)
    assert fields["t"] == "msg"
    assert (fields["seq"], fields["id"], fields["attempt"]) == (seq, "m-1", attempt)
    assert base64.b64decode(fields["data"]) == data
    assert fields["headers"] == headers


def test_the_other_server_frames() -> None:
    assert json.loads(welcome(9, 4)) == {"t": "welcome", "head": 9, "acked": 4}
    assert json.loads(gap(5, 7, "expired")) == {"t": "gap", "from": 5, "to": 7, "reason": "expired"}
    assert json.loads(ping()) == {"t": "ping"}
