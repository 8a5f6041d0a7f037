"""A Python client of surelay.push.v1 (on `websockets`): each message handed to the app
once, in order, across reconnects and restarts of either side.

    async with PushClient(url, token, "laptop-1", cursor_store="push.cursor") as client:
        async for message in client:
            handle(message.data)          # acked once the loop asks for the next one

A message is acked only after the app has handled it (when the loop asks for the next
one, or leaves the `async with` block without an exception) and after its seq is saved
in `cursor_store`, so a crash never loses one: the next
run resumes after the saved cursor, and a message at or below it is dropped (the server
may send one again after a lost ack). The connection is made again with back-off when
it drops; 4001 (bad token) and 4002 (the device connected elsewhere) end the iteration
with `PushClosed`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from surelay.push.frames import BAD_TOKEN, REPLACED, SUBPROTOCOL

__all__ = ["CursorStore", "FileCursor", "MemoryCursor", "PushClient", "PushClosed", "PushMessage"]


class CursorStore(Protocol):
    """Where a client keeps the last seq it handled (`load`: None before the first)."""

    def load(self) -> int | None: ...

    def save(self, seq: int) -> None: ...


class MemoryCursor:
    """A cursor that lives as long as the process: a new process has none, and resumes
    after the cursor the server keeps for the device (what it last acked)."""

    def __init__(self, seq: int | None = None) -> None:
        self.seq = seq

    def load(self) -> int | None:
        return self.seq

    def save(self, seq: int) -> None:
        self.seq = seq


class FileCursor:
    """A cursor in a file, written atomically (a temporary file renamed over it) and
    fsynced before the ack goes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            raise ValueError(f"{self.path} does not hold a push cursor: {text[:40]!r}")
        return int(text)

    def save(self, seq: int) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w") as file:
            file.write(f"{seq}\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)


@dataclass(frozen=True, slots=True)
class PushMessage:
    seq: int
    id: str
    data: bytes
    headers: Mapping[str, str]
    attempt: int


class PushClosed(Exception):
    """The server ended this device's connection for good: `code` 4001 (the token is
    bad or expired: get a new one) or 4002 (the same device connected elsewhere)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"push connection closed with {code}: {reason}")
        self.code = code
        self.reason = reason


class PushClient:
    """See the module. `url` is the endpoint's `ws://` or `wss://` URL (`{mount}/ws`)."""

    def __init__(
        self,
        url: str,
        token: str,
        device: str,
        *,
        cursor_store: CursorStore | str | os.PathLike[str] | None = None,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        import websockets  # noqa: PLC0415, F401  # fail here, not on the first message

        if isinstance(cursor_store, str | os.PathLike):
            cursor_store = FileCursor(cursor_store)
        self.url, self.token, self.device = url, token, device
        self.cursor: CursorStore = MemoryCursor() if cursor_store is None else cursor_store
        self.acked = self.cursor.load()
        self._backoff, self._max_backoff = backoff, max_backoff
        self._ws: Any = None
        self._handed: int | None = None
        """The seq handed to the app and not yet acked."""

    async def __aenter__(self) -> PushClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        handed, self._handed = self._handed, None
        if kind is None and handed is not None:  # the last message was handled too
            await self._ack(handed)
        await self.close()

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def read(self, upto: int) -> None:
        """Tell the server the user has read every message up to `upto`."""
        if self._ws is not None:
            await self._ws.send(json.dumps({"t": "read", "upto": upto}))

    def __aiter__(self) -> AsyncIterator[PushMessage]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[PushMessage]:
        import websockets  # noqa: PLC0415

        failures = 0
        while True:
            try:
                async for message in self._session():
                    failures = 0
                    self._handed = message.seq
                    yield message
                    self._handed = None
                    await self._ack(message.seq)  # handled: saved, then acked
            except websockets.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
                reason = closed.rcvd.reason if closed.rcvd is not None else ""
                if code in (BAD_TOKEN, REPLACED):
                    raise PushClosed(code, reason) from None
            except (OSError, TimeoutError, websockets.InvalidHandshake):
                pass
            self._ws = None
            failures += 1
            delay = min(self._max_backoff, self._backoff * 2 ** min(failures - 1, 10))
            await asyncio.sleep(delay * (0.5 + random.random() / 2))

    async def _session(self) -> AsyncIterator[PushMessage]:
        import websockets  # noqa: PLC0415

        ws = await websockets.connect(self.url, subprotocols=[SUBPROTOCOL])  # type: ignore[list-item]
        self._ws = ws
        hello: dict[str, Any] = {"t": "hello", "v": 1, "token": self.token, "device": self.device}
        if self.acked is not None:  # else: after the cursor the server keeps
            hello["resume"] = {"acked": self.acked}
        await ws.send(json.dumps(hello))
        async for raw in ws:
            frame = json.loads(raw)
            kind = frame.get("t")
            if kind == "welcome" and self.acked is None:
                self.acked = int(frame["acked"])
            elif kind == "ping":
                await ws.send('{"t": "pong"}')
            elif kind == "msg":
                if frame["seq"] <= self.acked:  # handled before: tell the server again
                    await ws.send(json.dumps({"t": "ack", "upto": self.acked}))
                    continue
                yield PushMessage(
                    frame["seq"],
                    frame["id"],
                    base64.b64decode(frame["data"]),
                    frame.get("headers", {}),
                    frame.get("attempt", 1),
                )
            elif kind == "gap" and frame["to"] > self.acked:
                await self._ack(frame["to"])  # removed before this device got them

    async def _ack(self, seq: int) -> None:
        self.cursor.save(seq)  # before the ack: a crash between the two resends, not loses
        self.acked = seq
        if self._ws is not None:
            with contextlib.suppress(Exception):  # a lost ack: the frame comes again
                await self._ws.send(json.dumps({"t": "ack", "upto": seq}))
