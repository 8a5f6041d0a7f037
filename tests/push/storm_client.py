"""Devices in a reconnect storm, in a process of their own: each keeps its cursor,
reconnects with back-off to any of the worker URLs, drops a frame at or below its
cursor, and checks that its payloads arrive as 0, 1, 2, ... (one message per round).

Usage: python -m tests.push.storm_client COUNT EXPECT URL [URL ...]
(SURELAY_PUSH_SECRET: the workers' secret.)

Prints `ready` once started, then one JSON line when every device has EXPECT messages:
lost, reordered, duplicates (handed to the app twice), dropped (frames at or below the
cursor) and when the last device had everything.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import sys
import time
from typing import Any

import websockets

from surelay.push.tokens import issue

SECRET = os.environ.get("SURELAY_PUSH_SECRET", "push-bench-secret-0123456789")
"""The workers' PushConfig secret (the benchmark's unless the environment says)."""


async def connect(url: str, recipient: str, acked: int) -> Any:
    ws = await websockets.connect(url, subprotocols=["surelay.push.v1"], max_queue=None)  # type: ignore[list-item]
    token = issue(SECRET.encode(), recipient, None, time.time() + 3600)
    hello = {"t": "hello", "v": 1, "token": token, "device": "d", "resume": {"acked": acked}}
    await ws.send(json.dumps(hello))
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
    if welcome.get("t") != "welcome":
        raise ConnectionError(f"no welcome: {welcome}")
    return ws


async def storm(urls: list[str], count: int, expect: int) -> dict[str, Any]:
    got = {f"s{i}": -1 for i in range(count)}
    cursor = dict.fromkeys(got, 0)
    tally = {"reordered": 0, "duplicates": 0, "dropped": 0}
    finished: dict[str, float] = {}

    async def device(recipient: str) -> None:
        failures = 0
        while got[recipient] < expect - 1:
            try:
                ws = await connect(random.choice(urls), recipient, cursor[recipient])
                failures = 0
                async for raw in ws:
                    frame = json.loads(raw)
                    if frame["t"] == "ping":
                        await ws.send('{"t":"pong"}')
                        continue
                    if frame["t"] != "msg":
                        continue
                    if frame["seq"] <= cursor[recipient]:
                        tally["dropped"] += 1
                    else:
                        n = int(base64.b64decode(frame["data"]))
                        if n <= got[recipient]:
                            tally["duplicates"] += 1
                        elif n != got[recipient] + 1:
                            tally["reordered"] += 1
                        got[recipient] = max(got[recipient], n)
                        cursor[recipient] = frame["seq"]
                    await ws.send(json.dumps({"t": "ack", "upto": cursor[recipient]}))
                    if got[recipient] >= expect - 1:
                        finished[recipient] = time.time()
                        await ws.close()
                        return
            except (OSError, TimeoutError, ConnectionError, websockets.WebSocketException):
                failures += 1
                await asyncio.sleep(min(2.0, 0.05 * 2 ** min(failures, 6)) * random.random())

    print("ready", flush=True)
    await asyncio.wait_for(asyncio.gather(*(device(r) for r in got)), 600)
    lost = sum(expect - 1 - n for n in got.values())
    return {**tally, "lost": lost, "last": max(finished.values())}


def main() -> None:
    count, expect, *urls = sys.argv[1:]
    print(json.dumps(asyncio.run(storm(urls, int(count), int(expect)))), flush=True)


if __name__ == "__main__":
    main()
