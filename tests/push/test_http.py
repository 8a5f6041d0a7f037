"""The fallbacks over plain HTTP, on a real uvicorn: Server-Sent Events resumed by
Last-Event-ID, long polls, acks and reads as POSTs, the JavaScript client; and every
bad request refused naming the problem."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from surelay import Runtime
from surelay.push import PushConfig
from tests.helpers import wait_until
from tests.push.serving import SECRET, serving


def base(url: str) -> str:
    return url.replace("ws://", "http://").removesuffix("/ws")


async def events(http: httpx.AsyncClient, url: str, n: int, **headers: str) -> list[dict[str, Any]]:
    """The first `n` events of an SSE stream: id, event and the data's JSON."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(10), http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("event: "):
                event["event"] = line[7:]
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif not line and "data" in event:
                out.append(event)
                event = {}
                if len(out) == n:
                    return out
    return out


def test_sse_delivers_resumes_and_takes_acks_and_reads_as_posts(tmp_path: Path) -> None:
    push = PushConfig(SECRET, window=2)
    with Runtime.open(tmp_path, transports={}, push=push) as rt, serving(rt) as url:
        token = rt.push.issue_token("ann", device="browser")
        sent = [rt.push.send("ann", b"m%d" % i) for i in range(4)]
        auth = {"Authorization": f"Bearer {token}"}

        async def main() -> None:
            async with httpx.AsyncClient(base_url=base(url)) as http:
                got = await events(http, f"/sse?device=browser&token={token}", 2)
                assert [(e["id"], e["event"], e["data"]["seq"]) for e in got] == [
                    (1, "msg", 1),
                    (2, "msg", 2),
                ]
                assert got[0]["data"]["id"] == sent[0].msg_id
                ack = await http.post("/ack", json={"device": "browser", "upto": 2}, headers=auth)
                assert ack.status_code == 204
                assert rt.push.status(sent[1].msg_id).state == "delivered"  # type: ignore[union-attr]
                read = await http.post(
                    "/read", json={"device": "browser", "upto": 1, "token": token}
                )
                assert read.status_code == 204
                assert rt.push.status(sent[0].msg_id).state == "read"  # type: ignore[union-attr]
                # a reconnecting EventSource says where it was
                again = await events(
                    http, "/sse?device=browser", 2, **auth, **{"Last-Event-ID": "2"}
                )
                assert [e["id"] for e in again] == [3, 4]

        asyncio.run(main())


def test_the_sse_window_waits_for_acks(tmp_path: Path) -> None:
    push = PushConfig(SECRET, window=1, heartbeat=0.2)
    with Runtime.open(tmp_path, transports={}, push=push) as rt, serving(rt) as url:
        token = rt.push.issue_token("ann")
        for i in range(2):
            rt.push.send("ann", b"%d" % i)

        async def main() -> None:
            async with httpx.AsyncClient(base_url=base(url)) as http:
                stream = asyncio.ensure_future(events(http, f"/sse?device=d&token={token}", 2))
                await asyncio.sleep(0.5)  # (one event is all the window lets through)
                assert not stream.done()
                ack = await http.post("/ack", json={"device": "d", "upto": 1, "token": token})
                assert ack.status_code == 204
                assert [e["id"] for e in await stream] == [1, 2]

        asyncio.run(main())


def test_long_polls_answer_at_once_wait_for_a_message_or_time_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("surelay.push.http.POLL_WAIT", 0.5)
    with Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET)) as rt, serving(rt) as url:
        token = rt.push.issue_token("ann")
        rt.push.send("ann", b"first")
        with httpx.Client(base_url=base(url), headers={"Authorization": f"Bearer {token}"}) as http:
            now = http.get("/poll", params={"device": "d", "after": 0}, timeout=5).json()
            assert now["head"] == 1
            assert [m["seq"] for m in now["messages"]] == [1]
            assert now["messages"][0]["data"] == "Zmlyc3Q="  # base64 of b"first"
            empty = http.get("/poll", params={"device": "d", "after": 1}, timeout=5).json()
            assert empty == {"head": 1, "messages": []}

        async def waiting() -> list[int]:
            async with httpx.AsyncClient(
                base_url=base(url), headers={"Authorization": f"Bearer {token}"}
            ) as http:
                monkeypatch.setattr("surelay.push.http.POLL_WAIT", 10.0)
                poll = asyncio.ensure_future(
                    http.get("/poll", params={"device": "d", "after": 1}, timeout=15)
                )
                await asyncio.sleep(0.2)
                await asyncio.to_thread(rt.push.send, "ann", b"second")
                return [m["seq"] for m in (await poll).json()["messages"]]

        assert asyncio.run(waiting()) == [2]
        wait_until(
            lambda: rt.push.status(rt.push.after("ann", 1, 1)[1][0].msg_id).state == "sent", 5
        )  # type: ignore[union-attr]


def test_bad_requests_are_refused_naming_the_problem(tmp_path: Path) -> None:
    with Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET)) as rt, serving(rt) as url:
        token = rt.push.issue_token("ann")
        pinned = rt.push.issue_token("ann", device="phone")
        with httpx.Client(base_url=base(url), timeout=5) as http:

            def refused(response: httpx.Response, status: int, reason: str) -> None:
                assert response.status_code == status, response.text
                assert reason in response.json()["error"]

            refused(http.get("/poll", params={"device": "d"}), 401, "a token is needed")
            refused(http.get("/poll", params={"device": "d", "token": "v1.x.y"}), 401, "signature")
            refused(http.get("/sse", params={"token": token}), 400, "device must be")
            refused(
                http.get("/poll", params={"device": "laptop", "token": pinned}),
                401,
                "another device",
            )
            refused(
                http.get("/poll", params={"device": "d", "token": token, "after": "-1"}),
                400,
                "after",
            )
            refused(
                http.get(
                    "/sse", params={"device": "d", "token": token}, headers={"Last-Event-ID": "x"}
                ),
                400,
                "Last-Event-ID",
            )
            refused(http.post("/ack", content=b"x" * 5000), 413, "at most 4096 bytes")
            refused(http.post("/ack", content=b"not json"), 400, "must be JSON")
            refused(http.post("/ack", json=[1]), 400, "must be JSON")
            refused(http.post("/ack", json={"device": "d", "upto": 1}), 401, "a token is needed")
            refused(
                http.post("/ack", json={"device": "d", "upto": -1, "token": token}), 400, "upto"
            )
            refused(
                http.post("/read", json={"device": "", "upto": 1, "token": token}), 400, "device"
            )


def test_the_javascript_client_is_served(tmp_path: Path) -> None:
    with Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET)) as rt, serving(rt) as url:
        script = httpx.get(base(url) + "/client.js", timeout=5)
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert "surelay.push.v1" in script.text
        assert "global.SurelayPush = SurelayPush" in script.text
