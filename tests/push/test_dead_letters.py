"""Push through the outbox (the built-in `push` transport), and what fails: poison and
expired messages become dead letters of transport `push`, and replay puts them back in
the mailbox."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from surelay import Runtime, RuntimeConfig
from surelay.push import PushConfig
from tests.helpers import wait_until
from tests.push.serving import SECRET, Client, serving


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def held(rt: Runtime, recipient: str) -> list[tuple[int, bytes]]:
    _, mails = rt.push.after(recipient, 0, 100)
    return [(m.seq, m.payload) for m in mails]


def test_rt_send_push_goes_through_the_outbox_into_the_mailbox(tmp_path: Path) -> None:
    with Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET)) as rt:
        rt.send("push", b"one", key="ann", idempotency_key="order-1")
        rt.send("push", b"two", key="ann", headers={"kind": "chat"})
        with rt.transaction() as txn:
            rt.send("push", b"three", key="ann", txn=txn)
        no_key = rt.send("push", b"lost?", key=None)
        assert rt.flush(10)
        assert held(rt, "ann") == [(1, b"one"), (2, b"two"), (3, b"three")]
        assert rt.push.send("ann", b"again", idempotency_key="order-1").duplicate
        assert no_key.wait(5).name == "DEAD_LETTERED"
        (dead,) = rt.dead_letters.list()
        assert "key=<recipient>" in dead.reason


def test_the_push_transport_name_is_taken(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="transport 'push' is built in"):
        Runtime.open(tmp_path, transports={"push": print}, push=PushConfig(SECRET))


def test_a_full_mailbox_holds_outbox_messages_until_there_is_room(tmp_path: Path) -> None:
    push = PushConfig(SECRET, max_pending=1)
    with Runtime.open(tmp_path, transports={}, push=push) as rt:
        rt.push.send("ann", b"first")
        waiting = rt.send("push", b"second", key="ann")
        assert not rt.flush(0.5)  # transient: it waits in the outbox, retried
        with rt._store.env.write() as txn:
            rt.push.mailboxes.ack(txn, "ann", "phone", 1, rt.push.now())
        assert waiting.wait(30).name == "DELIVERED"
        assert held(rt, "ann")[-1] == (2, b"second")


def test_a_poison_message_is_dead_lettered_and_replay_puts_it_back(tmp_path: Path) -> None:
    push = PushConfig(SECRET, ack_timeout=0.2, max_deliveries=1)
    with Runtime.open(tmp_path, transports={}, push=push) as rt, serving(rt) as url:
        token = rt.push.issue_token("ann")
        bad = rt.push.send("ann", b"bad", headers={"n": "1"})

        async def refuse() -> None:  # gets it, never acks it: a gap, and a dead letter
            client = await Client.connect(url, token, "phone")
            assert (await client.next())["seq"] == 1
            assert await client.next() == {"t": "gap", "from": 1, "to": 1, "reason": "poison"}
            await client.close()

        asyncio.run(refuse())
        wait_until(lambda: len(rt.dead_letters.list()) == 1, 5)
        (dead,) = rt.dead_letters.list()
        assert (dead.transport, dead.key, dead.message_id, dead.payload) == (
            "push",
            "ann",
            bad.msg_id,
            b"bad",
        )
        assert (dead.reason_class, dead.attempts, dict(dead.headers)) == (
            "permanent",
            1,
            {"n": "1"},
        )
        assert "poison" in dead.reason
        report = rt.dead_letters.replay([dead.id], timeout=10)
        assert report.replayed == 1
        assert held(rt, "ann") == [(2, b"bad")]

        async def accept() -> None:
            client = await Client.connect(url, token, "phone", acked=1)
            frame = await client.next()
            assert (frame["seq"], frame["headers"]) == (2, {"n": "1"})
            await client.ack(2)
            await client.close()

        asyncio.run(accept())


def test_retention_dead_letters_what_no_device_acked(tmp_path: Path) -> None:
    clock = Clock()
    config = RuntimeConfig(clock=clock)
    with Runtime.open(tmp_path, transports={}, config=config, push=PushConfig(SECRET)) as rt:
        gone = rt.push.send("ann", b"short", ttl=60)
        kept = rt.push.send("ann", b"long")
        assert rt.push.next_expiry() == pytest.approx(clock.now + 60)
        assert rt.push.expire() == 0
        clock.now += 60
        assert rt.push.expire() == 1
        status = rt.push.status(gone.msg_id)
        assert status is not None
        assert (status.state, status.reason) == ("failed", "expired")
        (dead,) = rt.dead_letters.list()
        assert (dead.reason_class, dead.message_id) == ("expired", gone.msg_id)
        assert held(rt, "ann") == [(2, b"long")]
        assert rt.push.status(kept.msg_id) is not None
        with rt._store.env.write() as txn:  # a row no live connection touches any more
            rt.push.mailboxes.claim(txn, "ann", "phone", slot=7, connection="c", now=clock.now)
        clock.now += 299
        rt.push.expire()
        with rt._store.read() as txn:
            assert rt.push.mailboxes.online(txn) == 1
        clock.now += 60  # (idle rows are looked for once a minute)
        rt.push.expire()
        with rt._store.read() as txn:
            assert rt.push.mailboxes.online(txn) == 0  # the idle backstop


def test_the_sweeper_ends_retention_on_its_own(tmp_path: Path) -> None:
    config = RuntimeConfig(dedup_ttl=10.0)  # sweeps every second
    with Runtime.open(tmp_path, transports={}, config=config, push=PushConfig(SECRET)) as rt:
        gone = rt.push.send("ann", b"short", ttl=0.5)
        wait_until(lambda: len(rt.dead_letters.list()) == 1, 10)
        status = rt.push.status(gone.msg_id)
        assert status is not None
        assert status.state == "failed"
