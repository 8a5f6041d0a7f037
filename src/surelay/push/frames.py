"""The `surelay.push.v1` WebSocket protocol: JSON text frames, parsed and written here.

Client to server: `hello` first (within `HELLO_TIMEOUT`), then `ack` and `read`
(cumulative, `upto` a sequence number) and `pong`. Anything else, any binary frame, a
frame over `MAX_CLIENT_FRAME` or a field of the wrong kind is a `BadFrame`: a client can
only move its own cursors, so what it sends is small and checked before it is used.
Server to client: `welcome`, `msg`, `gap`, `ping`. Pure functions.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass

from surelay.push.tokens import check_name
from surelay.storage.mailbox import Mail

__all__ = [
    "BAD_FRAME",
    "BAD_TOKEN",
    "HELLO_TIMEOUT",
    "MAX_CLIENT_FRAME",
    "MAX_SEQ",
    "REPLACED",
    "SUBPROTOCOL",
    "TOO_BIG",
    "Ack",
    "BadFrame",
    "ClientFrame",
    "Hello",
    "Pong",
    "Read",
    "gap",
    "message_frame",
    "msg",
    "parse_client",
    "ping",
    "welcome",
]

SUBPROTOCOL = "surelay.push.v1"
HELLO_TIMEOUT = 10.0
"""Seconds a connection may stay open without its `hello`."""
MAX_CLIENT_FRAME = 4096
"""Bytes: a `hello` with the longest token and device name fits; acks are tiny."""
MAX_SEQ = 2**63 - 1
"""Sequence numbers are unsigned 64-bit on disk; a cursor past this is nonsense."""

BAD_TOKEN = 4001
"""Close code: the token is malformed, forged or expired."""
REPLACED = 4002
"""Close code: the same device connected again; this older connection is closed."""
BAD_FRAME = 1008
"""Close code (policy violation): a frame outside the protocol."""
TOO_BIG = 1009
"""Close code (message too big): a frame over `MAX_CLIENT_FRAME`."""


class BadFrame(ValueError):
    """A client frame outside the protocol; `code` is the close code to answer with."""

    def __init__(self, reason: str, code: int = BAD_FRAME) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame: who (`token`), which device, and the last sequence number the
    device has handled (`acked`), so delivery resumes after it; None (no `resume`): a
    device with no cursor of its own, which resumes after the one the server keeps."""

    token: str
    device: str
    acked: int | None


@dataclass(frozen=True, slots=True)
class Ack:
    """The device holds every message up to `upto` (cumulative)."""

    upto: int


@dataclass(frozen=True, slots=True)
class Read:
    """The user has read every message up to `upto` (cumulative)."""

    upto: int


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to a `ping`."""


ClientFrame = Hello | Ack | Read | Pong


def _seq(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise BadFrame(f"{what} must be an integer from 0 to {MAX_SEQ}, got {value!r}")
    return value


def parse_client(frame: str | bytes) -> ClientFrame:
    """The client frame `frame` holds, or `BadFrame` naming what is wrong."""
    if not isinstance(frame, str):
        raise BadFrame("binary frames are not part of surelay.push.v1: send JSON text")
    if len(frame) > MAX_CLIENT_FRAME or len(frame.encode(errors="replace")) > MAX_CLIENT_FRAME:
        raise BadFrame(f"a client frame must be at most {MAX_CLIENT_FRAME} bytes", TOO_BIG)
    try:
        fields = json.loads(frame)
    except (ValueError, RecursionError):  # (nesting deep enough to exhaust the parser)
        raise BadFrame("a client frame must be a JSON object") from None
    if not isinstance(fields, dict):
        raise BadFrame("a client frame must be a JSON object")
    kind = fields.get("t")
    if kind == "ack":
        return Ack(_seq("ack.upto", fields.get("upto")))
    if kind == "read":
        return Read(_seq("read.upto", fields.get("upto")))
    if kind == "pong":
        return Pong()
    if kind == "hello":
        return _hello(fields)
    raise BadFrame(f"unknown frame type {kind!r}: expected hello, ack, read or pong")


def _hello(fields: dict[str, object]) -> Hello:
    if fields.get("v") != 1:
        raise BadFrame(f"hello.v must be 1 (surelay.push.v1), got {fields.get('v')!r}")
    token = fields.get("token")
    if not isinstance(token, str) or not token:
        raise BadFrame("hello.token must be the token the host issued")
    try:
        device = check_name("hello.device", fields.get("device"))
    except ValueError as error:
        raise BadFrame(str(error)) from None
    resume = fields.get("resume")
    if resume is None:
        return Hello(token, device, None)
    if not isinstance(resume, dict):
        raise BadFrame(f'hello.resume must be {{"acked": N}}, got {resume!r}')
    return Hello(token, device, _seq("hello.resume.acked", resume.get("acked", 0)))


def _dumps(fields: Mapping[str, object]) -> str:
    # ASCII only: a payload's or header's text reaches the client escaped, never raw
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True)


def welcome(head: int, acked: int) -> str:
    """Accepted: the mailbox's last sequence number, and where delivery resumes after."""
    return _dumps({"t": "welcome", "head": head, "acked": acked})


def msg(seq: int, msg_id: str, data: bytes, headers: Mapping[str, str], attempt: int) -> str:
    """One message, its payload as base64 (any bytes travel), `attempt` from 1."""
    return _dumps(
        {
            "t": "msg",
            "seq": seq,
            "id": msg_id,
            "data": base64.b64encode(data).decode("ascii"),
            "headers": dict(headers),
            "attempt": attempt,
        }
    )


def message_frame(mail: Mail, attempt: int) -> str:
    """The `msg` frame of a mailbox message."""
    return msg(mail.seq, mail.msg_id, mail.payload, mail.headers, attempt)


def gap(first: int, last: int, reason: str) -> str:
    """Messages `first`..`last` were removed before this device acked them (`reason`:
    expired or poison, or `removed` when the reason is no longer known)."""
    return _dumps({"t": "gap", "from": first, "to": last, "reason": reason})


def ping() -> str:
    return _dumps({"t": "ping"})
