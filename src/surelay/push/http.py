"""The fallbacks for clients that cannot hold a WebSocket: Server-Sent Events and long
polls, with acks and reads as small POSTs, and the JavaScript client.

- `GET {mount}/sse?device=D` (token as `Authorization: Bearer T` or `?token=T`, since
  a browser's EventSource cannot set headers): an event stream of `msg` and `gap` events
  (the same JSON as the WebSocket's frames), each `id` its seq, so a reconnecting
  EventSource resumes after `Last-Event-ID` (or `?after=N`). At most `window` unacked
  messages are sent; the stream waits for acks beyond that.
- `GET {mount}/poll?device=D&after=N`: the messages after N (at most `window`), at once
  if there are some, else when one comes (or `{"messages": []}` after `POLL_WAIT` s).
- `POST {mount}/ack` and `POST {mount}/read` with `{"device": D, "upto": N}`: the
  device's cursor and read mark; 204 once durable.
- `GET {mount}/client.js`: the browser client.

A bad or expired token is 401 with the reason; anything else malformed is 400 naming
it; a body over 4 KiB is 413. What a client sends moves only its device's cursor and
read mark.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from surelay.push.frames import MAX_CLIENT_FRAME, MAX_SEQ, gap, message_frame
from surelay.push.tokens import Grant, InvalidToken, check_name, verify
from surelay.push.window import Window
from surelay.storage.mailbox import Mail

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from surelay.push.gateway import Gateway
    from surelay.push.server import Presence

__all__ = ["POLL_WAIT", "http_routes"]

Endpoint = Callable[["Request"], Awaitable["Response"]]

POLL_WAIT = 25.0
"""Seconds a long poll waits for a message before it answers with none."""

LOOK = 0.1
"""Seconds between looks at the mailbox while waiting (for what other processes accept)."""


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def http_routes(gateway: Gateway, presence: Presence) -> list[Route]:
    from starlette.responses import JSONResponse, Response, StreamingResponse  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    def refused(error: _Refused) -> Response:
        return JSONResponse({"error": error.reason}, status_code=error.status)

    async def sse(request: Request) -> Response:
        try:
            recipient, device = _who(request, gateway)
            after = _seq(
                "Last-Event-ID",
                request.headers.get("last-event-id") or request.query_params.get("after") or "0",
            )
        except _Refused as error:
            return refused(error)
        return StreamingResponse(
            _events(gateway, presence, recipient, device, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def poll(request: Request) -> Response:
        try:
            recipient, _device_name = _who(request, gateway)
            after = _seq("after", request.query_params.get("after", "0"))
        except _Refused as error:
            return refused(error)
        head, mails = await _wait_for(gateway, presence, recipient, after, POLL_WAIT)
        if mails:
            gateway.mark_sent(mails)
        return JSONResponse(
            {"head": head, "messages": [json.loads(text) for text in _frames(after, mails, head)]}
        )

    def cursor_post(move: Callable[[str, str, int], Awaitable[object]]) -> Endpoint:
        """A POST moving the device's cursor (`gateway.ack`) or read mark (`read`)."""

        async def endpoint(request: Request) -> Response:
            try:
                recipient, device, upto = await _cursor_post(request, gateway)
            except _Refused as error:
                return refused(error)
            await move(recipient, device, upto)  # durable before the answer
            return Response(status_code=204)

        return endpoint

    script = resources.files("surelay.push").joinpath("client.js").read_text()  # (once)

    async def client_js(_request: Request) -> Response:
        return Response(
            script,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=300"},
        )

    return [
        Route("/sse", sse),
        Route("/poll", poll),
        Route("/ack", cursor_post(gateway.ack), methods=["POST"]),
        Route("/read", cursor_post(gateway.read), methods=["POST"]),
        Route("/client.js", client_js),
    ]


def _grant(request: Request, gateway: Gateway, token: object = None) -> Grant:
    """What the request's token allows (`Authorization: Bearer`, else `token`, else
    `?token=`): the recipient comes from it only."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        token = header[7:]
    if token is None:
        token = request.query_params.get("token")
    if token is None:
        raise _Refused(401, "a token is needed (Authorization: Bearer <token>, or ?token=)")
    try:
        return verify(gateway.config.key, token, gateway.now())
    except InvalidToken as error:
        raise _Refused(401, error.reason) from None


def _who(request: Request, gateway: Gateway) -> tuple[str, str]:
    """The recipient and the device (`?device=`) of a GET."""
    grant = _grant(request, gateway)
    return grant.recipient, _device(grant.device, request.query_params.get("device"))


def _device(pinned: str | None, device: object) -> str:
    try:
        name = check_name("device", device)
    except ValueError as error:
        raise _Refused(400, str(error)) from None
    if pinned is not None and pinned != name:
        raise _Refused(401, "the token is for another device")
    return name


def _seq(what: str, text: str) -> int:
    if len(text) > 20 or not (text.isascii() and text.isdecimal()) or int(text) > MAX_SEQ:
        raise _Refused(400, f"{what} must be a sequence number, got {text[:40]!r}")
    return int(text)


async def _cursor_post(request: Request, gateway: Gateway) -> tuple[str, str, int]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_CLIENT_FRAME:
            raise _Refused(413, f"the body must be at most {MAX_CLIENT_FRAME} bytes")
    try:
        fields: Any = json.loads(body)
    except (ValueError, RecursionError):
        raise _Refused(400, 'the body must be JSON: {"device": D, "upto": N}') from None
    if not isinstance(fields, dict):
        raise _Refused(400, 'the body must be JSON: {"device": D, "upto": N}')
    grant = _grant(request, gateway, fields.get("token"))
    device = _device(grant.device, fields.get("device"))
    upto = fields.get("upto")
    if isinstance(upto, bool) or not isinstance(upto, int) or not 0 <= upto <= MAX_SEQ:
        raise _Refused(400, f"upto must be a sequence number, got {upto!r}")
    return grant.recipient, device, upto


def _frames(after: int, mails: list[Mail], head: int) -> list[str]:
    """The frames for the messages after `after`: gaps where some were removed."""
    out, sent = [], after
    for mail in mails:
        if mail.seq > sent + 1:
            out.append(gap(sent + 1, mail.seq - 1, "removed"))
        out.append(message_frame(mail, 1))
        sent = mail.seq
    if not mails and head > sent:
        out.append(gap(sent + 1, head, "removed"))
    return out


async def _wait_for(
    gateway: Gateway, presence: Presence, recipient: str, after: int, wait: float
) -> tuple[int, list[Mail]]:
    """The messages after `after` (at most `window`), waiting up to `wait` seconds for
    one."""
    event = presence.listen(recipient)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            event.clear()
            head, mails = gateway.after(recipient, after, gateway.config.window)
            if mails or head > after or loop.time() >= deadline:
                return head, mails
            try:
                async with asyncio.timeout(min(LOOK, deadline - loop.time())):
                    await event.wait()
            except TimeoutError:
                pass
    finally:
        presence.unlisten(recipient, event)


async def _events(
    gateway: Gateway, presence: Presence, recipient: str, device: str, after: int
) -> AsyncIterator[str]:
    """The SSE stream: `msg` and `gap` events after `after`, at most `window` unacked
    (acks come as POSTs: the stream looks at the device's cursor), a comment line every
    `heartbeat` so proxies keep it open."""
    config = gateway.config
    head, _ = gateway.cursor(recipient, device)
    after = min(after, head)  # (a Last-Event-ID from a directory restored to before it)
    window = Window(after, config.window, config.ack_timeout, config.max_deliveries)
    waited = 0.0
    yield "retry: 2000\n\n"
    while True:
        _, acked = gateway.cursor(recipient, device)
        window.ack(acked, 0.0)
        if window.room:
            head, mails = await _wait_for(
                gateway, presence, recipient, window.sent, config.heartbeat
            )
            mails = mails[: window.room]
            for text in _frames(window.sent, mails, head):
                fields = json.loads(text)
                seq = fields.get("seq", fields.get("to"))
                yield f"id: {seq}\nevent: {fields['t']}\ndata: {text}\n\n"
                window.sent_up_to(seq, 0.0)
            if mails:
                gateway.mark_sent(mails)
            if not mails and head <= window.sent:
                yield ": ping\n\n"
        else:  # the window is full: wait for an ack (a POST, maybe to another process)
            waited += LOOK
            await asyncio.sleep(LOOK)
            if waited >= config.heartbeat:  # a comment keeps proxies from cutting it
                waited = 0.0
                yield ": ping\n\n"
