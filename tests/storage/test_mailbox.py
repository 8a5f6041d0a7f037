"""Push mailboxes on a real LMDB store: sequence numbers in acceptance order, checks in
the write, cursors, statuses, failures and expiry; a stateful model of it all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from surelay.errors import MailboxFull, Overloaded
from surelay.storage import Store
from surelay.storage.mailbox import Mailboxes, PushStatus
from tests.storage.conftest import StoreMachine


@pytest.fixture
def boxes(tmp_path: Path) -> Iterator[tuple[Store, Mailboxes]]:
    store = Store.open(tmp_path / "data", map_size=1 << 24, durability="async")
    yield store, Mailboxes(store.env)
    store.close()


def put(
    store: Store,
    boxes: Mailboxes,
    recipient: str,
    n: int,
    *,
    now: float = 100.0,
    key: str | None = None,
    max_pending: int = 1000,
    rate: tuple[float, float] | None = None,
    expires_at: float = 1000.0,
):  # type: ignore[no-untyped-def]
    with store.env.write() as txn:
        return boxes.append(
            txn,
            recipient,
            b"p%d" % n,
            {"n": str(n)},
            msg_id=f"{recipient}-{n}",
            idempotency_key=key,
            now=now,
            expires_at=expires_at,
            max_pending=max_pending,
            rate=rate,
        )


def test_each_recipient_has_its_own_sequence_and_reads_back_in_order(
    boxes: tuple[Store, Mailboxes],
) -> None:
    store, mb = boxes
    assert [put(store, mb, "ann", n).seq for n in range(3)] == [1, 2, 3]
    assert [put(store, mb, "bob", n).seq for n in range(2)] == [1, 2]
    assert put(store, mb, "an", 9).seq == 1  # a name that is a prefix of another's
    with store.read() as txn:
        mails = mb.after(txn, "ann", 0, limit=10)
        assert [(m.seq, m.payload, dict(m.headers)) for m in mails] == [
            (1, b"p0", {"n": "0"}),
            (2, b"p1", {"n": "1"}),
            (3, b"p2", {"n": "2"}),
        ]
        assert [m.seq for m in mb.after(txn, "ann", 1, limit=1)] == [2]
        assert mb.after(txn, "ann", 3, limit=10) == []
        assert mb.after(txn, "ann", 0, limit=0) == []
        assert [m.msg_id for m in mb.after(txn, "an", 0, limit=10)] == ["an-9"]
        assert (mb.head(txn, "ann"), mb.pending(txn, "ann"), mb.head(txn, "nobody")) == (3, 3, 0)
        status = mb.status(txn, "ann-1")
        assert status is not None
        assert (status.recipient, status.seq, status.state, status.attempts) == (
            "ann",
            2,
            "queued",
            0,
        )
        assert mb.status(txn, "missing") is None
        assert mb.count(txn) == 6


def test_an_idempotency_key_answers_its_first_message(boxes: tuple[Store, Mailboxes]) -> None:
    store, mb = boxes
    first = put(store, mb, "ann", 1, key="k")
    again = put(store, mb, "ann", 2, key="k")
    assert (again.msg_id, again.seq, again.duplicate) == (first.msg_id, 1, True)
    assert put(store, mb, "bob", 3, key="k").duplicate is False  # keys are per recipient
    with store.read() as txn:
        assert mb.head(txn, "ann") == 1


def test_max_pending_counts_undelivered_messages(boxes: tuple[Store, Mailboxes]) -> None:
    store, mb = boxes
    for n in range(2):
        put(store, mb, "ann", n, max_pending=2)
    with pytest.raises(MailboxFull, match="'ann' holds 2 undelivered"):
        put(store, mb, "ann", 2, max_pending=2)
    with store.env.write() as txn:
        mb.ack(txn, "ann", "phone", 1, now=101.0)
    assert put(store, mb, "ann", 3, max_pending=2).seq == 3


def test_the_rate_is_checked_in_the_write(boxes: tuple[Store, Mailboxes]) -> None:
    store, mb = boxes
    rate = (1.0, 1.0)  # one a second, a burst of two
    put(store, mb, "ann", 0, now=100.0, rate=rate)
    put(store, mb, "ann", 1, now=100.0, rate=rate)
    with pytest.raises(Overloaded, match="rate_per_recipient") as raised:
        put(store, mb, "ann", 2, now=100.0, rate=rate)
    assert raised.value.retry_after == pytest.approx(1.0)
    assert put(store, mb, "bob", 0, now=100.0, rate=rate).seq == 1  # per recipient
    assert put(store, mb, "ann", 3, now=101.0, rate=rate).seq == 3


def test_acks_deliver_once_and_reads_follow_acks(boxes: tuple[Store, Mailboxes]) -> None:
    store, mb = boxes
    for n in range(4):
        put(store, mb, "ann", n)
    with store.env.write() as txn:
        mb.mark_sent(txn, mb.after(txn, "ann", 0, limit=2), now=100.5)
        assert mb.ack(txn, "ann", "phone", 2, now=101.0) == 2
        assert mb.ack(txn, "ann", "phone", 1, now=102.0) == 2  # never back
        assert mb.ack(txn, "ann", "laptop", 3, now=103.0) == 3
        assert mb.ack(txn, "ann", "laptop", 99, now=104.0) == 4  # clamped to the head
        mb.read(txn, "ann", "phone", 9, now=105.0)  # only what the phone acked
    with store.read() as txn:
        states = {m: mb.status(txn, f"ann-{m}") for m in range(4)}
        assert [s.state for s in states.values() if s] == ["read", "read", "delivered", "delivered"]
        first = states[0]
        assert first is not None
        assert (first.sent_at, first.delivered_at, first.delivered_device, first.read_at) == (
            100.5,
            101.0,
            "phone",
            105.0,
        )
        assert first.attempts == 1
        third = states[2]
        assert third is not None
        assert (third.delivered_device, third.attempts, third.sent_at) == ("laptop", 0, None)
        assert (mb.acked(txn, "ann", "phone"), mb.acked(txn, "ann", "laptop")) == (2, 4)
        assert mb.acked(txn, "ann", "tablet") == 0
        assert mb.pending(txn, "ann") == 0


def test_a_failed_message_leaves_a_gap_and_its_status(boxes: tuple[Store, Mailboxes]) -> None:
    store, mb = boxes
    for n in range(3):
        put(store, mb, "ann", n)
    with store.env.write() as txn:
        gone = mb.fail(txn, "ann", 2, "poison", now=110.0, keep=50.0)
        assert gone is not None
        assert gone.msg_id == "ann-1"
        assert mb.fail(txn, "ann", 2, "poison", now=110.0, keep=50.0) is None
    with store.read() as txn:
        assert [m.seq for m in mb.after(txn, "ann", 0, limit=10)] == [1, 3]
        status = mb.status(txn, "ann-1")
        assert status is not None
        assert (status.state, status.reason) == ("failed", "poison")
        assert mb.pending(txn, "ann") == 2
    with store.env.write() as txn:  # an ack across the gap delivers the others
        mb.ack(txn, "ann", "phone", 3, now=111.0)
        assert mb.pending(txn, "ann") == 0
        assert mb.expire(txn, now=159.0, limit=10, keep=50.0) == []
        assert mb.expire(txn, now=160.0, limit=10, keep=50.0) == []  # the status is forgotten
        assert mb.status(txn, "ann-1") is None


def test_retention_fails_the_undelivered_and_forgets_the_delivered(
    boxes: tuple[Store, Mailboxes],
) -> None:
    store, mb = boxes
    put(store, mb, "ann", 0, key="a", expires_at=200.0)
    put(store, mb, "ann", 1, key="b", expires_at=300.0)
    put(store, mb, "ann", 2, expires_at=300.0)
    with store.env.write() as txn:
        mb.ack(txn, "ann", "phone", 1, now=150.0)
        assert mb.expire(txn, now=199.0, limit=10, keep=60.0) == []
        assert mb.expire(txn, now=200.0, limit=10, keep=60.0) == []  # delivered: forgotten
        assert mb.status(txn, "ann-0") is None
        expired = mb.expire(txn, now=300.0, limit=1, keep=60.0)  # one at a time
        assert [m.msg_id for m in expired] == ["ann-1"]
        assert [m.msg_id for m in mb.expire(txn, now=300.0, limit=5, keep=60.0)] == ["ann-2"]
        status = mb.status(txn, "ann-1")
        assert status is not None
        assert (status.state, status.reason, status.expires_at) == ("failed", "expired", 360.0)
        assert mb.count(txn) == 0
    assert put(store, mb, "ann", 7, key="a").duplicate is False  # the key went with it
    resent = put(store, mb, "ann", 8, key="b")  # a failed message sent again is new
    assert (resent.duplicate, resent.seq) == (False, 5)
    assert put(store, mb, "ann", 9, key="b").duplicate is True
    with store.env.write() as txn:
        assert mb.next_expiry(txn) == 360.0
        mb.expire(txn, now=360.0, limit=10, keep=60.0)
        assert mb.status(txn, "ann-1") is None
        assert mb.status(txn, "ann-8") is not None  # the key's new message keeps it
        assert mb.next_expiry(txn) == 1000.0
    assert put(store, mb, "ann", 10, key="b").duplicate is True
    with store.env.write() as txn:
        mb.expire(txn, now=2000.0, limit=10, keep=60.0)
        assert mb.next_expiry(txn) == 2060.0  # the failed ones' statuses
        mb.expire(txn, now=2060.0, limit=10, keep=60.0)
        assert mb.next_expiry(txn) is None


def test_a_store_of_schema_4_is_upgraded_with_empty_mailboxes(tmp_path: Path) -> None:
    from surelay.storage.keys import u64  # noqa: PLC0415

    store = Store.open(tmp_path / "d", map_size=1 << 22)
    put(store, Mailboxes(store.env), "ann", 0)
    with store.env.write() as txn:
        txn.put(b"schema", u64(4), db=store.env.db("meta"))
    store.close()
    store = Store.open(tmp_path / "d", map_size=1 << 22)
    try:
        with store.read() as txn:
            assert Mailboxes(store.env).head(txn, "ann") == 1
            assert bytes(txn.get(b"schema", db=store.env.db("meta"))) == u64(5)
    finally:
        store.close()


class MailboxModel(StoreMachine):
    """Appends, acks by two devices, reads, failures and expiry against a plain model:
    sequence numbers are dense per recipient, statuses only move forward, the pending
    count is the undelivered messages held, and a device's cursor never goes back."""

    ORDER: ClassVar[dict[str, int]] = {
        "queued": 0,
        "sent": 1,
        "delivered": 2,
        "read": 3,
        "failed": 4,
    }

    def __init__(self) -> None:
        super().__init__()
        self.mb = Mailboxes(self.store.env)
        self.now = 100.0
        self.n = 0
        self.heads: dict[str, int] = {}
        self.held: dict[tuple[str, int], str] = {}  # (recipient, seq) -> msg id
        self.acked: dict[tuple[str, str], int] = {}
        self.seen: dict[str, str] = {}  # msg id -> last state seen

    @rule(recipient=st.sampled_from(["a", "b"]), ttl=st.floats(1, 50))
    def append(self, recipient: str, ttl: float) -> None:
        self.n += 1
        msg_id = f"m{self.n}"
        try:
            with self.store.env.write() as txn:
                got = self.mb.append(
                    txn,
                    recipient,
                    b"x",
                    {},
                    msg_id=msg_id,
                    idempotency_key=None,
                    now=self.now,
                    expires_at=self.now + ttl,
                    max_pending=5,
                )
        except MailboxFull:
            assert self._pending(recipient) >= 5
            return
        self.heads[recipient] = self.heads.get(recipient, 0) + 1
        assert got.seq == self.heads[recipient]
        self.held[recipient, got.seq] = msg_id

    @rule(
        recipient=st.sampled_from(["a", "b"]),
        device=st.sampled_from(["phone", "laptop"]),
        upto=st.integers(0, 12),
    )
    def ack(self, recipient: str, device: str, upto: int) -> None:
        with self.store.env.write() as txn:
            got = self.mb.ack(txn, recipient, device, upto, self.now)
        before = self.acked.get((recipient, device), 0)
        assert got == max(before, min(upto, self.heads.get(recipient, 0)))
        self.acked[recipient, device] = got

    @rule(recipient=st.sampled_from(["a", "b"]), device=st.sampled_from(["phone", "laptop"]))
    def read(self, recipient: str, device: str) -> None:
        with self.store.env.write() as txn:
            self.mb.read(txn, recipient, device, 99, self.now)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        recipient, seq = data.draw(st.sampled_from(sorted(self.held)))
        with self.store.env.write() as txn:
            before = self.mb.status(txn, self.held[recipient, seq])
            failed = self.mb.fail(txn, recipient, seq, "poison", self.now, keep=5.0)
        assert before is not None
        if before.state in ("delivered", "read"):  # some device has it: it stays
            assert failed is None
        else:
            assert failed is not None
            del self.held[recipient, seq]

    @rule(step=st.floats(0.5, 30))
    def tick(self, step: float) -> None:
        self.now += step
        with self.store.env.write() as txn:
            for mail in self.mb.expire(txn, self.now, limit=1000, keep=5.0):
                assert mail.expires_at <= self.now
                del self.held[mail.recipient, mail.seq]
        for key, msg_id in list(self.held.items()):
            with self.store.read() as txn:
                status = self.mb.status(txn, msg_id)
            if status is None:  # delivered and past its retention
                del self.held[key]

    def _statuses(self) -> dict[tuple[str, int], PushStatus]:
        out = {}
        with self.store.read() as txn:
            for key, msg_id in self.held.items():
                status = self.mb.status(txn, msg_id)
                assert status is not None
                out[key] = status
        return out

    def _pending(self, recipient: str) -> int:
        return sum(
            1
            for (r, _), s in self._statuses().items()
            if r == recipient and s.state in ("queued", "sent")
        )

    @invariant()
    def mailboxes_match_the_model(self) -> None:
        statuses = self._statuses()
        with self.store.read() as txn:
            for recipient in ("a", "b"):
                held = [m.seq for m in self.mb.after(txn, recipient, 0, limit=1000)]
                assert held == sorted(s for r, s in self.held if r == recipient)
                assert self.mb.pending(txn, recipient) == self._pending(recipient)
            assert self.mb.pending_total(txn) == self._pending("a") + self._pending("b")
        for (recipient, seq), status in statuses.items():
            assert status.seq == seq
            delivered = any(self.acked.get((recipient, d), 0) >= seq for d in ("phone", "laptop"))
            assert (status.state in ("delivered", "read")) == delivered, (status, self.acked)
            before = self.seen.get(status.msg_id, "queued")
            assert self.ORDER[status.state] >= self.ORDER[before]
            self.seen[status.msg_id] = status.state


TestMailboxModel = MailboxModel.TestCase
TestMailboxModel.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


def test_presence_rows_claimed_touched_released_and_forgotten_when_idle(
    boxes: tuple[Store, Mailboxes],
) -> None:
    store, mb = boxes
    with store.env.write() as txn:
        assert mb.claim(txn, "ann", "phone", slot=1, connection="c1", now=0.0) is None
        assert mb.claim(txn, "ann", "phone", slot=2, connection="c2", now=1.0) == (1, "c1")
        assert mb.claim(txn, "ann", "phone", slot=2, connection="c2", now=2.0) is None
        mb.claim(txn, "ann", "tablet", slot=1, connection="c3", now=0.0)
        mb.claim(txn, "bob", "phone", slot=1, connection="c4", now=0.0)
        assert mb.holder(txn, "ann", "phone") == "c2"
        mb.release(txn, "ann", "phone", "c1")  # not its row any more
        assert mb.holder(txn, "ann", "phone") == "c2"
        mb.touch(txn, [("ann", "tablet", "c3"), ("bob", "phone", "other")], now=500.0)
        assert mb.forget_idle(txn, 100.0, limit=10) == 2  # c2 (2.0) and c4 (not its touch)
        assert (mb.holder(txn, "ann", "tablet"), mb.holder(txn, "bob", "phone")) == ("c3", None)
        assert mb.presence_holds(txn, 1) and not mb.presence_holds(txn, 2)
        assert mb.release_slot(txn, 1) == 1
        assert mb.online(txn) == 0
        assert mb.holder(txn, "nobody", "x") is None


def test_a_message_a_device_acked_is_never_failed(boxes: tuple[Store, Mailboxes]) -> None:
    store, mb = boxes
    put(store, mb, "ann", 0)
    with store.env.write() as txn:
        mb.ack(txn, "ann", "phone", 1, now=101.0)
        assert mb.fail(txn, "ann", 1, "poison", now=102.0, keep=10.0) is None  # the laptop's
        status = mb.status(txn, "ann-0")
        assert status is not None
        assert status.state == "delivered"
        assert [m.seq for m in mb.after(txn, "ann", 0, limit=5)] == [1]  # kept for the rest
        assert mb.fail(txn, "ann", 9, "poison", now=102.0, keep=10.0) is None


def test_long_idempotency_keys_and_names_fit_lmdb_keys(boxes: tuple[Store, Mailboxes]) -> None:
    store, mb = boxes
    name, device, key = "n" * 250, "d" * 250, "k" * 1024
    assert put(store, mb, name, 0, key=key).duplicate is False
    assert put(store, mb, name, 1, key=key).duplicate is True
    with store.env.write() as txn:
        assert mb.ack(txn, name, device, 1, now=101.0) == 1
        mb.claim(txn, name, device, slot=0, connection="c", now=1.0)
        assert mb.holder(txn, name, device) == "c"


def test_a_recipient_connects_at_most_limit_devices(boxes: tuple[Store, Mailboxes]) -> None:
    from surelay.storage.mailbox import TooManyDevices  # noqa: PLC0415

    store, mb = boxes
    with store.env.write() as txn:
        for device in ("a", "b"):
            mb.claim(txn, "ann", device, slot=0, connection=device, now=0.0, limit=2)
        mb.claim(txn, "an", "x", slot=0, connection="x", now=0.0, limit=2)  # another's
        mb.claim(txn, "ann", "a", slot=0, connection="a2", now=1.0, limit=2)  # a again: fine
    with (
        pytest.raises(TooManyDevices, match="'ann' already has 2 devices"),
        store.env.write() as txn,
    ):
        mb.claim(txn, "ann", "c", slot=0, connection="c", now=2.0, limit=2)
