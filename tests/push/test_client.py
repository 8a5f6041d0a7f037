"""The Python client: each message handed to the app once, in order, across a
reconnect and a restart of the client; the cursor saved before the ack."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from surelay import Runtime
from surelay.push import PushConfig
from surelay.push.client import FileCursor, MemoryCursor, PushClient, PushClosed, PushMessage
from tests.helpers import wait_until
from tests.push.serving import SECRET, serving


async def take(client: PushClient, n: int) -> list[PushMessage]:
    out: list[PushMessage] = []
    async with asyncio.timeout(10):
        async for message in client:
            out.append(message)
            if len(out) == n:
                break
    return out


def test_messages_once_in_order_across_client_restarts(tmp_path: Path) -> None:
    cursor = tmp_path / "phone.cursor"
    with (
        Runtime.open(tmp_path / "d", transports={}, push=PushConfig(SECRET)) as rt,
        serving(rt) as url,
    ):
        token = rt.push.issue_token("ann", device="phone")
        for i in range(5):
            rt.push.send("ann", b"%d" % i, headers={"i": str(i)})

        async def first() -> list[PushMessage]:
            async with PushClient(url, token, "phone", cursor_store=cursor) as client:
                return await take(client, 3)  # left without an error: all three handled

        got = asyncio.run(first())
        assert [(m.seq, m.data, dict(m.headers)) for m in got] == [
            (1, b"0", {"i": "0"}),
            (2, b"1", {"i": "1"}),
            (3, b"2", {"i": "2"}),
        ]
        assert FileCursor(cursor).load() == 3  # saved before each ack
        wait_until(lambda: rt.push.cursor("ann", "phone")[1] == 3, 5)

        async def crash() -> None:  # the app fails on message 4: it is not acked
            async with PushClient(url, token, "phone", cursor_store=cursor) as client:
                async for message in client:
                    assert message.seq == 4
                    raise RuntimeError("the app failed")

        with pytest.raises(RuntimeError, match="the app failed"):
            asyncio.run(crash())
        assert FileCursor(cursor).load() == 3

        async def again() -> list[PushMessage]:  # a new process: the file's cursor
            async with PushClient(url, token, "phone", cursor_store=str(cursor)) as client:
                return await take(client, 2)

        assert [m.seq for m in asyncio.run(again())] == [4, 5]


def test_the_client_reconnects_and_stops_on_4001_and_4002(tmp_path: Path) -> None:
    with (
        Runtime.open(tmp_path / "d", transports={}, push=PushConfig(SECRET)) as rt,
        serving(rt) as url,
    ):
        token = rt.push.issue_token("ann")

        async def main() -> None:
            client = PushClient(url, token, "phone", backoff=0.05)
            rt.push.send("ann", b"a")
            messages = client.__aiter__()
            assert (await anext(messages)).seq == 1
            await client._ws.close()  # the connection drops: the client connects again
            rt.push.send("ann", b"b")
            assert (await asyncio.wait_for(anext(messages), 10)).seq == 2
            waiting = asyncio.ensure_future(anext(messages))  # asking for more acks 2
            while rt.push.cursor("ann", "phone")[1] != 2:
                await asyncio.sleep(0.01)
            other = PushClient(url, token, "phone")
            taking = asyncio.ensure_future(anext(other.__aiter__()))
            with pytest.raises(PushClosed) as closed:
                await asyncio.wait_for(waiting, 10)
            assert closed.value.code == 4002
            # a client with no cursor of its own resumes after the server's for the device
            rt.push.send("ann", b"c")
            assert (await asyncio.wait_for(taking, 10)).seq == 3
            await other.close()
            bad = PushClient(url, "v1.bad.token", "phone")
            with pytest.raises(PushClosed, match="4001"):
                await asyncio.wait_for(anext(bad.__aiter__()), 10)

        asyncio.run(main())


def test_a_device_holding_more_than_the_server_heard_resumes_after_its_own_cursor(
    tmp_path: Path,
) -> None:
    with (
        Runtime.open(tmp_path / "d", transports={}, push=PushConfig(SECRET)) as rt,
        serving(rt) as url,
    ):
        token = rt.push.issue_token("ann")
        for i in range(3):
            rt.push.send("ann", b"%d" % i)

        async def main() -> None:
            # the server never heard this device ack; the device holds up to 2
            client = PushClient(url, token, "phone", cursor_store=MemoryCursor(2))
            assert [m.seq for m in await take(client, 1)] == [3]
            await client.read(3)
            await client.close()

        asyncio.run(main())
        wait_until(lambda: rt.push.cursor("ann", "phone")[1] >= 2, 5)


def test_a_frame_sent_again_after_it_was_handled_is_dropped(tmp_path: Path) -> None:
    """A slow app: the server sends the unacked frames again while the app still holds
    the first; the client hands each message to the app once."""
    push = PushConfig(SECRET, ack_timeout=0.1)
    with (
        Runtime.open(tmp_path / "d", transports={}, push=push) as rt,
        serving(rt) as url,
    ):
        token = rt.push.issue_token("ann")
        first = rt.push.send("ann", b"0")
        rt.push.send("ann", b"1")

        async def main() -> list[tuple[int, int]]:
            seen: list[tuple[int, int]] = []
            async with asyncio.timeout(10), PushClient(url, token, "phone") as client:
                async for message in client:
                    seen.append((message.seq, message.attempt))
                    if message.seq == 1:
                        await asyncio.sleep(0.5)  # the server resends 1 and 2 meanwhile
                    elif message.seq == 2:
                        rt.push.send("ann", b"2")
                    else:
                        break
            return seen

        seen = asyncio.run(main())
        assert [seq for seq, _ in seen] == [1, 2, 3]
        sent = rt.push.status(first.msg_id)
        assert sent is not None
        assert sent.attempts >= 2  # it did go again: the client dropped the copy


def test_a_damaged_cursor_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c").write_text("not a number")
    with pytest.raises(ValueError, match="does not hold a push cursor"):
        PushClient("ws://127.0.0.1:1/ws", "t", "d", cursor_store=tmp_path / "c")
