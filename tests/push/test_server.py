"""The push endpoint over real WebSockets (uvicorn, the `websockets` client): delivery in
order with acks and reads moving the status, offline hold and resume from the exact
cursor (also across a restart), two devices, a device connecting twice (4002), tokens
(4001), resends, poison messages as gaps, heartbeats and frames outside the protocol."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import pytest
import websockets

from surelay import Runtime, RuntimeConfig
from surelay.push import PushConfig
from tests.helpers import wait_until
from tests.push.serving import SECRET, Client, serving


def status(rt: Runtime, msg_id: str) -> str:
    found = rt.push.status(msg_id)
    assert found is not None
    return found.state


def test_online_delivery_in_order_with_acks_and_reads(tmp_path: Path) -> None:
    with Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET)) as rt, serving(rt) as url:
        token = rt.push.issue_token("user-42", device="ios-7f3a")

        async def main() -> None:
            client = await Client.connect(url, token, "ios-7f3a")
            assert client.welcome == {"t": "welcome", "head": 0, "acked": 0}
            receipts = [
                rt.push.send("user-42", b"m%d" % i, headers={"n": str(i)}) for i in range(5)
            ]
            frames = await client.take(5)
            assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5]
            assert [base64.b64decode(f["data"]) for f in frames] == [b"m%d" % i for i in range(5)]
            assert [f["id"] for f in frames] == [r.msg_id for r in receipts]
            assert frames[0]["headers"] == {"n": "0"}
            assert {f["attempt"] for f in frames} == {1}
            wait_until(lambda: status(rt, receipts[4].msg_id) == "sent", 5)
            await client.ack(3)
            wait_until(lambda: status(rt, receipts[2].msg_id) == "delivered", 5)
            assert status(rt, receipts[3].msg_id) == "sent"
            await client.read(2)
            wait_until(lambda: status(rt, receipts[1].msg_id) == "read", 5)
            got = rt.push.status(receipts[0].msg_id)
            assert got is not None
            assert (got.delivered_device, got.attempts) == ("ios-7f3a", 1)
            assert status(rt, receipts[2].msg_id) == "delivered"
            await client.close()

        asyncio.run(main())


def test_offline_messages_wait_and_resume_from_the_cursor_also_after_a_restart(
    tmp_path: Path,
) -> None:
    push = PushConfig(SECRET)
    with Runtime.open(tmp_path, transports={}, push=push) as rt, serving(rt) as url:
        token = rt.push.issue_token("ann", device="phone")
        for i in range(4):
            rt.push.send("ann", b"%d" % i)  # nobody connected: held

        async def first() -> None:
            client = await Client.connect(url, token, "phone")
            assert client.welcome["head"] == 4
            assert [f["seq"] for f in await client.take(4)] == [1, 2, 3, 4]
            await client.ack(2)
            await asyncio.sleep(0)  # (the ack is written before the close is read)
            await client.close()

        asyncio.run(first())
        wait_until(lambda: rt.push.cursor("ann", "phone") == (4, 2), 5)
        rt.push.send("ann", b"4")

        async def again() -> None:  # resumes after what it acked
            client = await Client.connect(url, token, "phone", acked=2)
            assert client.welcome == {"t": "welcome", "head": 5, "acked": 2}
            assert [f["seq"] for f in await client.take(3)] == [3, 4, 5]
            await client.ack(4)
            wait_until(lambda: rt.push.cursor("ann", "phone")[1] == 4, 5)
            await client.close()

        asyncio.run(again())
    with Runtime.open(tmp_path, transports={}, push=push) as rt, serving(rt) as url:

        async def after_restart() -> None:
            client = await Client.connect(url, rt.push.issue_token("ann"), "phone", acked=4)
            assert [f["seq"] for f in await client.take(1)] == [5]
            await client.close()

        asyncio.run(after_restart())


def test_every_device_gets_every_message_and_a_second_connection_replaces_the_first(
    tmp_path: Path,
) -> None:
    with Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET)) as rt, serving(rt) as url:
        token = rt.push.issue_token("bob")  # any device of bob's

        async def main() -> None:
            phone = await Client.connect(url, token, "phone")
            laptop = await Client.connect(url, token, "laptop")
            receipt = rt.push.send("bob", b"hello")
            assert [f["seq"] for f in await phone.take(1)] == [1]
            assert [f["seq"] for f in await laptop.take(1)] == [1]
            await laptop.ack(1)
            wait_until(lambda: status(rt, receipt.msg_id) == "delivered", 5)
            found = rt.push.status(receipt.msg_id)
            assert found is not None
            assert found.delivered_device == "laptop"
            again = await Client.connect(url, token, "phone")
            assert await phone.closed() == (4002, "the same device connected again")
            assert [f["seq"] for f in await again.take(1)] == [1]  # the phone never acked it
            await again.close()
            await laptop.close()

        asyncio.run(main())


def test_a_bad_or_expired_token_is_refused_with_4001(tmp_path: Path) -> None:
    class Clock:
        now = time.time()

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    config = RuntimeConfig(clock=clock)
    with (
        Runtime.open(tmp_path, transports={}, config=config, push=PushConfig(SECRET)) as rt,
        serving(rt) as url,
    ):
        expiring = rt.push.issue_token("ann", ttl=60)
        other = PushConfig("another-secret-0123456789")
        from surelay.push.tokens import issue  # noqa: PLC0415

        async def refused(token: str, device: str = "phone") -> tuple[int | None, str]:
            ws = await websockets.connect(url, subprotocols=["surelay.push.v1"])
            hello = {"t": "hello", "v": 1, "token": token, "device": device}
            await ws.send(json.dumps(hello))
            return await Client(ws, {}).closed()

        async def main() -> None:
            assert await refused("v1.nope.nope") == (4001, "the token's signature is not valid")
            forged = issue(other.key, "ann", None, clock.now + 60)
            assert (await refused(forged))[0] == 4001
            pinned = rt.push.issue_token("ann", device="phone")
            assert await refused(pinned, "laptop") == (4001, "the token is for another device")
            clock.now += 61
            assert await refused(expiring) == (4001, "the token has expired")

        asyncio.run(main())


def test_unacked_frames_go_again_then_the_oldest_becomes_a_gap(tmp_path: Path) -> None:
    push = PushConfig(SECRET, ack_timeout=0.2, max_deliveries=2)
    with Runtime.open(tmp_path, transports={}, push=push) as rt, serving(rt) as url:
        token = rt.push.issue_token("ann")
        poison = rt.push.send("ann", b"bad")
        fine = rt.push.send("ann", b"good")

        async def main() -> None:
            client = await Client.connect(url, token, "phone")
            first = await client.take(2)
            assert [(f["seq"], f["attempt"]) for f in first] == [(1, 1), (2, 1)]
            again = await client.take(2)  # no ack within ack_timeout: both again
            assert [(f["seq"], f["attempt"]) for f in again] == [(1, 2), (2, 2)]
            assert await client.next() == {"t": "gap", "from": 1, "to": 1, "reason": "poison"}
            await client.ack(2)  # the stream goes on after the gap
            wait_until(lambda: status(rt, fine.msg_id) == "delivered", 5)
            await client.close()

        asyncio.run(main())
        found = rt.push.status(poison.msg_id)
        assert found is not None
        assert (found.state, found.reason, found.attempts) == ("failed", "poison", 2)


def test_heartbeats_and_a_silent_client(tmp_path: Path) -> None:
    push = PushConfig(SECRET, heartbeat=0.2)
    with Runtime.open(tmp_path, transports={}, push=push) as rt, serving(rt) as url:
        token = rt.push.issue_token("ann")

        async def main() -> None:
            client = await Client.connect(url, token, "phone")
            served = asyncio.ensure_future(client.next())  # answers the pings meanwhile
            silent = await Client.connect(url, token, "tablet")  # never answers a ping
            assert await silent.closed() == (1001, "no frame within two heartbeats")
            rt.push.send("ann", b"x")  # the one that answers is still served
            assert (await served)["seq"] == 1
            await client.close()

        asyncio.run(main())


@pytest.mark.parametrize(
    ("first", "code", "reason"),
    [
        (b"binary", 1008, "binary frames"),
        ("x" * 5000, 1009, "at most 4096 bytes"),
        ('{"t": "ack", "upto": 1}', 1008, "the first frame must be hello"),
        ('{"t": "hello", "v": 2, "token": "t", "device": "d"}', 1008, "hello.v must be 1"),
    ],
)
def test_a_frame_outside_the_protocol_closes_with_its_code(
    tmp_path: Path, first: str | bytes, code: int, reason: str
) -> None:
    with Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET)) as rt, serving(rt) as url:

        async def main() -> None:
            ws = await websockets.connect(url, subprotocols=["surelay.push.v1"])
            await ws.send(first)
            got = await Client(ws, {}).closed()
            assert got[0] == code
            assert reason in got[1]

        asyncio.run(main())


def test_a_bad_frame_after_hello_and_a_missing_subprotocol(tmp_path: Path) -> None:
    with Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET)) as rt, serving(rt) as url:
        token = rt.push.issue_token("ann")

        async def main() -> None:
            client = await Client.connect(url, token, "phone")
            await client.ws.send('{"t": "ack", "upto": -5}')
            code, reason = await client.closed()
            assert (code, "ack.upto" in reason) == (1008, True)
            again = await Client.connect(url, token, "phone")
            await again.ws.send(json.dumps({"t": "hello", "v": 1, "token": token, "device": "x"}))
            assert await again.closed() == (1008, "hello was already sent")
            with pytest.raises(websockets.InvalidStatus):
                await websockets.connect(url)  # no surelay.push.v1: refused before accept

        asyncio.run(main())


def test_a_recipient_has_at_most_max_devices_connected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("surelay.push.gateway.MAX_DEVICES", 2)
    with Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET)) as rt, serving(rt) as url:
        token = rt.push.issue_token("ann")

        async def main() -> None:
            first = await Client.connect(url, token, "a")
            second = await Client.connect(url, token, "b")
            ws = await websockets.connect(url, subprotocols=["surelay.push.v1"])
            await ws.send(json.dumps({"t": "hello", "v": 1, "token": token, "device": "c"}))
            assert await Client(ws, {}).closed() == (1008, "'ann' already has 2 devices connected")
            again = await Client.connect(url, token, "a")  # a device already counted: fine
            assert await first.closed() == (4002, "the same device connected again")
            await again.close()
            await second.close()

        asyncio.run(main())
