"""The push endpoint: `gw.asgi_app()`, an ASGI app serving `/ws` (the
`surelay.push.v1` WebSocket protocol of `surelay.push.frames`).

One connection is one device of one recipient (both from the signed token, never from
what the client says). It sends the mailbox from the device's cursor on, at most
`window` unacked frames at a time, re-read from the mailbox whenever they go (nothing
per message is kept in memory), moves the cursor on each cumulative ack (durably, before
anything else happens), sends the unacked frames again after `ack_timeout` without
progress, and fails a message that `max_deliveries` sendings did not get acked (a gap
frame for the device). A second connection of the same device closes the first (4002).

New messages wake the connections of their recipient at once in this process; what
other processes on the directory accept is found by looking at the mailbox heads of the
connected recipients every `POLL` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING

from surelay.push.frames import (
    BAD_FRAME,
    BAD_TOKEN,
    HELLO_TIMEOUT,
    REPLACED,
    SUBPROTOCOL,
    Ack,
    BadFrame,
    Hello,
    Read,
    gap,
    message_frame,
    parse_client,
    ping,
    welcome,
)
from surelay.push.gateway import TOUCH
from surelay.push.tokens import InvalidToken, verify
from surelay.push.window import Window
from surelay.storage.mailbox import TooManyDevices

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.websockets import WebSocket

    from surelay.push.gateway import Gateway

__all__ = ["POLL", "Presence", "make_app"]

logger = logging.getLogger("surelay.push")

POLL = 0.005
"""Seconds between looks at the directory's change count (one key): when it moved, the
heads of the connected recipients and their devices' presence are read (messages
accepted by other processes, devices that connected elsewhere)."""

LOOK_ANYWAY = 1.0
"""Seconds after which they are read even if the count did not move."""

STALE = 2.0
"""A connection silent for this many heartbeats is closed (1001)."""


class Presence:
    """The connections of this process, by device and by recipient; wakes those of a
    recipient whose mailbox grew. Thread-safe `wake` (sends run on any thread)."""

    def __init__(self) -> None:
        self._devices: dict[tuple[str, str], _Connection] = {}
        self._recipients: dict[str, set[_Connection]] = {}
        self._listeners: dict[str, set[asyncio.Event]] = {}
        """SSE streams and long polls waiting for a recipient's messages."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._tail: asyncio.Task[None] | None = None

    def listen(self, recipient: str) -> asyncio.Event:
        """An event set when `recipient`'s mailbox grows in this process (`unlisten` it
        when done); what other processes accept is for the listener to look for."""
        self._loop = asyncio.get_running_loop()
        event = asyncio.Event()
        with self._lock:
            self._listeners.setdefault(recipient, set()).add(event)
        return event

    def unlisten(self, recipient: str, event: asyncio.Event) -> None:
        with self._lock:
            same = self._listeners.get(recipient)
            if same is not None:
                same.discard(event)
                if not same:
                    del self._listeners[recipient]

    def join(self, connection: _Connection) -> _Connection | None:
        """Register `connection`; returns the one of the same device it replaces."""
        self._loop = asyncio.get_running_loop()
        with self._lock:
            key = (connection.recipient, connection.device)
            older = self._devices.get(key)
            self._devices[key] = connection
            self._recipients.setdefault(connection.recipient, set()).add(connection)
            if older is not None:
                self._recipients[connection.recipient].discard(older)
        return older

    def leave(self, connection: _Connection) -> None:
        with self._lock:
            key = (connection.recipient, connection.device)
            if self._devices.get(key) is connection:
                del self._devices[key]
            same = self._recipients.get(connection.recipient)
            if same is not None:
                same.discard(connection)
                if not same:
                    del self._recipients[connection.recipient]

    def wake(self, recipient: str) -> None:
        """The mailbox of `recipient` grew: its connections send."""
        loop = self._loop
        with self._lock:
            events = [c.wake for c in self._recipients.get(recipient, ())]
            events += self._listeners.get(recipient, ())
        if loop is None or not events or loop.is_closed():
            return
        for event in events:
            loop.call_soon_threadsafe(event.set)

    def connections(self) -> list[_Connection]:
        with self._lock:
            return list(self._devices.values())

    def count(self) -> int:
        with self._lock:
            return len(self._devices)

    def tail(self, gateway: Gateway) -> None:
        """Start looking at the heads of connected recipients (once per running loop: a
        server started again on a new loop gets a new look)."""
        loop = asyncio.get_running_loop()
        if self._tail is None or self._tail.done() or self._tail.get_loop() is not loop:
            self._tail = loop.create_task(self._look(gateway))

    async def _look(self, gateway: Gateway) -> None:
        seen, looked = -1, 0.0
        loop = asyncio.get_running_loop()
        touched = loop.time()
        while True:
            await asyncio.sleep(POLL)
            connections = self.connections()
            if not connections:
                continue
            try:
                if loop.time() - touched >= TOUCH:  # alive: the idle backstop spares them
                    touched = loop.time()
                    await gateway.touch([(c.recipient, c.device, c.id) for c in connections])
                changes = gateway.changes()
                if changes == seen and loop.time() - looked < LOOK_ANYWAY:
                    continue
                seen, looked = changes, loop.time()
                heads, holders = gateway.look([(c.recipient, c.device) for c in connections])
            except Exception as error:  # the store is closing; the connections end too
                logger.debug("push: cannot read mailbox heads: %r", error)
                continue
            for connection in connections:
                holder = holders[connection.recipient, connection.device]
                if connection.claimed and holder is None:  # swept as idle: still here
                    await gateway.claim(
                        connection.recipient, connection.device, connection.id, limit=False
                    )
                elif connection.claimed and holder != connection.id:
                    connection.replace()  # the device connected to another process
                elif heads[connection.recipient] > connection.window.sent:
                    connection.wake.set()


def make_app(gateway: Gateway, presence: Presence) -> Starlette:
    """The ASGI app of `gw.asgi_app()`."""
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.routing import WebSocketRoute  # noqa: PLC0415

    from surelay.push.http import http_routes  # noqa: PLC0415

    async def endpoint(websocket: WebSocket) -> None:
        await serve(websocket, gateway, presence)

    return Starlette(routes=[WebSocketRoute("/ws", endpoint), *http_routes(gateway, presence)])


async def serve(websocket: WebSocket, gateway: Gateway, presence: Presence) -> None:
    """One WebSocket: the hello, then the connection's delivery until either side
    closes."""
    if SUBPROTOCOL not in websocket.scope.get("subprotocols", ()):
        await websocket.close(code=1002, reason=f"the subprotocol must be {SUBPROTOCOL}")
        return
    await websocket.accept(subprotocol=SUBPROTOCOL)
    try:
        hello = parse_client(await _next_frame(websocket, HELLO_TIMEOUT))
        if not isinstance(hello, Hello):
            raise BadFrame("the first frame must be hello")
    except TimeoutError:
        await _close(websocket, 1008, f"no hello within {HELLO_TIMEOUT:g}s")
        return
    except BadFrame as bad:
        await _close(websocket, bad.code, bad.reason)
        return
    except _Gone:
        return
    try:
        grant = verify(gateway.config.key, hello.token, gateway.now())
        if grant.device is not None and grant.device != hello.device:
            raise InvalidToken("the token is for another device")
    except InvalidToken as refused:
        await _close(websocket, BAD_TOKEN, refused.reason)
        return
    connection = _Connection(websocket, gateway, grant.recipient, hello.device)
    older = presence.join(connection)
    if older is not None:
        older.replace()
    presence.tail(gateway)
    try:
        try:
            await gateway.claim(connection.recipient, connection.device, connection.id)
        except TooManyDevices as refused:
            await _close(websocket, BAD_FRAME, str(refused))
            return
        connection.claimed = True
        await connection.run(hello.acked)
    finally:
        presence.leave(connection)
        with contextlib.suppress(Exception):  # a closing store: the slot's rows go with it
            await gateway.release(connection.recipient, connection.device, connection.id)


class _Gone(Exception):
    """The client went away."""


async def _next_frame(websocket: WebSocket, timeout: float | None) -> str | bytes:
    async with asyncio.timeout(timeout):
        message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise _Gone
    text = message.get("text")
    if text is not None:
        return str(text)
    return bytes(message.get("bytes") or b"")


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):  # the client may be gone already
        # a close frame's reason is at most 123 bytes of UTF-8
        short = reason.encode()[:120].decode(errors="ignore")
        await websocket.close(code=code, reason=short)


class _Connection:
    """One device's delivery (see the module)."""

    def __init__(self, websocket: WebSocket, gateway: Gateway, recipient: str, device: str):
        self.websocket = websocket
        self.gateway = gateway
        self.recipient = recipient
        self.device = device
        config = gateway.config
        self.window = Window(0, config.window, config.ack_timeout, config.max_deliveries)
        self.wake = asyncio.Event()
        self.id = uuid.uuid4().hex
        self.claimed = False
        """Its presence row is written (another process's connection may take it)."""
        self._stored = 0
        """The device's cursor on disk."""
        self._replaced = False
        self._heard = time.monotonic()
        self._pinged = time.monotonic()

    def replace(self) -> None:
        """The same device connected again: this connection ends with 4002."""
        self._replaced = True
        self.wake.set()

    async def run(self, resume: int | None) -> None:
        gateway, recipient, device = self.gateway, self.recipient, self.device
        head, stored = gateway.cursor(recipient, device)
        acked = min(stored if resume is None else resume, head)
        if acked > stored:  # the device holds more than the server heard it ack
            stored = await gateway.ack(recipient, device, acked)
        self._stored = stored
        self.window = Window(
            acked, self.window.size, self.window.ack_timeout, self.window.max_deliveries
        )
        await self._send(welcome(head, acked))
        receiver = asyncio.get_running_loop().create_task(self._receive())
        try:
            await self._deliver(receiver)
        except _Gone:
            pass
        finally:
            receiver.cancel()
            with contextlib.suppress(BaseException):
                await receiver

    async def _deliver(self, receiver: asyncio.Task[None]) -> None:
        heartbeat = self.gateway.config.heartbeat
        while not receiver.done():
            if self._replaced:
                await _close(self.websocket, REPLACED, "the same device connected again")
                return
            now = time.monotonic()
            if now - self._heard > STALE * heartbeat:
                await _close(self.websocket, 1001, "no frame within two heartbeats")
                return
            if now - self._pinged >= heartbeat:
                self._pinged = now
                await self._send(ping())
            action = self.window.due(now)
            if action == "resend":
                await self._resend(now)
            elif action == "poison":
                await self._poison(now)
            self.wake.clear()  # before the look: a wake-up during it is not lost
            await self._fill(now)
            wait = self._pinged + heartbeat - now
            resend_at = self.window.resend_at()
            if resend_at is not None:
                wait = min(wait, resend_at - now)
            woken = asyncio.ensure_future(self.wake.wait())
            await asyncio.wait(
                [woken, receiver], timeout=max(wait, 0.0), return_when=asyncio.FIRST_COMPLETED
            )
            woken.cancel()
        with contextlib.suppress(_Gone):
            receiver.result()  # a bad frame closes the connection with its code

    async def _fill(self, now: float) -> None:
        window = self.window
        if window.room == 0:
            return
        head, mails = self.gateway.after(self.recipient, window.sent, window.room)
        sent = window.sent
        for mail in mails:
            if mail.seq > sent + 1:
                await self._send(gap(sent + 1, mail.seq - 1, "removed"))
            await self._send(message_frame(mail, 1))
            sent = mail.seq
        if not mails and head > sent and window.unacked == 0:
            # everything after the cursor was removed before this device got it
            await self._send(gap(sent + 1, head, "removed"))
            window.skip(head, now)
            return
        if mails:
            window.sent_up_to(sent, now)
            self.gateway.mark_sent(mails)

    async def _resend(self, now: float) -> None:
        window = self.window
        _, mails = self.gateway.after(self.recipient, window.acked, window.unacked)
        attempt = window.tries + 1
        for mail in mails:
            if mail.seq <= window.sent:
                await self._send(message_frame(mail, attempt))
        window.resent(now)
        if mails:
            self.gateway.mark_sent([m for m in mails if m.seq <= window.sent])

    async def _poison(self, now: float) -> None:
        window = self.window
        _, mails = self.gateway.after(self.recipient, window.acked, 1)
        if mails and mails[0].seq <= window.sent:
            seq = mails[0].seq
            await self.gateway.fail(self.recipient, seq, "poison")
            await self._send(gap(seq, seq, "poison"))
            window.skip(seq, now)
        else:  # the oldest was removed meanwhile: the rest go again
            window.resent(now)

    async def _receive(self) -> None:
        """Inbound frames: acks move the cursor (durably first), reads mark messages
        read, pongs keep the connection alive. A bad frame closes it with its code."""
        gateway, recipient, device = self.gateway, self.recipient, self.device
        while True:
            try:
                frame = parse_client(await _next_frame(self.websocket, None))
            except BadFrame as bad:
                await _close(self.websocket, bad.code, bad.reason)
                raise _Gone from None
            self._heard = time.monotonic()
            if isinstance(frame, Ack):
                upto = min(frame.upto, self.window.sent)
                if upto > self._stored:
                    self._stored = await gateway.ack(recipient, device, upto)
                if self.window.ack(upto, time.monotonic()):
                    self.wake.set()
            elif isinstance(frame, Read):
                await gateway.read(recipient, device, frame.upto)
            elif isinstance(frame, Hello):
                await _close(self.websocket, 1008, "hello was already sent")
                raise _Gone

    async def _send(self, text: str) -> None:
        try:
            await self.websocket.send_text(text)
        except Exception as error:  # the client went away mid-send
            raise _Gone from error
