"""The dead-letter table against a plain-Python model: inserts, the status machine,
archive, purge, retention, and filtered, paged listing."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from surelay.storage import DEAD_LETTER_STATUSES, REASON_CLASSES, DeadLetter
from surelay.storage.dead_letters import TRANSITIONS

from .builders import dead_letter
from .conftest import StoreMachine

KEYS = ["a", "b", None]
TRANSPORTS = ["sms", "mail"]


class DeadLetterMachine(StoreMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, DeadLetter] = {}
        self.n = 0

    def ids(self) -> list[str]:
        return sorted(self.model)

    @rule(
        reason=st.sampled_from(REASON_CLASSES),
        key=st.sampled_from(KEYS),
        transport=st.sampled_from(TRANSPORTS),
        gap=st.floats(0, 100),
    )
    def insert(self, reason: str, key: str | None, transport: str, gap: float) -> None:
        self.clock.now += gap
        self.n += 1
        record = dead_letter(
            self.clock.now,
            message_id=f"m{self.n}",
            reason_class=reason,
            key=key,
            transport=transport,
        )
        self.store.dead_lettered(record).result()
        self.model[record.id] = record

    @precondition(lambda self: bool(self.model))
    @rule(pick=st.integers(0, 10_000), to=st.sampled_from(DEAD_LETTER_STATUSES))
    def transition(self, pick: int, to: str) -> None:
        rid = self.ids()[pick % len(self.model)]
        old = self.model[rid]
        future = self.store.write(
            lambda txn: self.store.dead_letters.transition(txn, rid, to, lease_until=5.0)
        )
        if to not in TRANSITIONS[old.status]:
            with pytest.raises(ValueError, match="cannot become"):
                future.result()
            return
        future.result()
        self.model[rid] = replace(old, status=to, lease_until=5.0 if to == "replaying" else None)

    @precondition(lambda self: bool(self.model))
    @rule(pick=st.integers(0, 10_000), ahead=st.floats(-10, 10))
    def lease(self, pick: int, ahead: float) -> None:
        rid = self.ids()[pick % len(self.model)]
        old = self.model[rid]
        now = self.clock.now
        got = self.store.write(
            lambda txn: self.store.dead_letters.lease(txn, rid, now=now, until=now + ahead)
        ).result()
        expired = old.status == "replaying" and (old.lease_until or 0.0) <= now
        if old.status == "dead" or expired:
            assert got is not None
            self.model[rid] = replace(old, status="replaying", lease_until=now + ahead)
        else:
            assert got is None

    @rule(
        status=st.sampled_from(["dead", "replayed", "archived"]), age=st.none() | st.floats(0, 300)
    )
    def purge(self, status: str, age: float | None) -> None:
        now = self.clock.now
        removed = self.store.write(
            lambda txn: self.store.dead_letters.purge(txn, status=status, older_than=age, now=now)
        ).result()
        doomed = [
            r.id
            for r in self.model.values()
            if r.status == status and (age is None or r.failed_at < now - age)
        ]
        assert removed == len(doomed)
        for rid in doomed:
            del self.model[rid]

    @rule(ttl=st.floats(0, 500))
    def retention_sweep(self, ttl: float) -> None:
        removed = self.store.sweep_dead_letters(ttl).result()
        cutoff = self.clock.now - ttl
        doomed = [
            r.id
            for r in sorted(self.model.values(), key=lambda r: r.id)
            if r.failed_at < cutoff and r.status != "replaying"
        ]
        # The sweep reads the expired head of the table; ids follow failure time.
        assert removed == len(doomed)
        for rid in doomed:
            del self.model[rid]

    @rule(
        status=st.none() | st.sampled_from(DEAD_LETTER_STATUSES),
        reason=st.none() | st.sampled_from(REASON_CLASSES),
        key=st.none() | st.sampled_from(["a", "b"]),
        transport=st.none() | st.sampled_from(TRANSPORTS),
        limit=st.integers(1, 4),
    )
    def list_pages(
        self,
        status: str | None,
        reason: str | None,
        key: str | None,
        transport: str | None,
        limit: int,
    ) -> None:
        expected = [
            r
            for r in sorted(self.model.values(), key=lambda r: r.id)
            if (status is None or r.status == status)
            and (reason is None or r.reason_class == reason)
            and (key is None or r.key == key)
            and (transport is None or r.transport == transport)
        ]
        got: list[DeadLetter] = []
        after = None
        with self.store.read() as txn:
            while True:
                page = self.store.dead_letters.list(
                    txn,
                    status=status,
                    reason_class=reason,
                    key=key,
                    transport=transport,
                    limit=limit,
                    after=after,
                )
                got += page
                if len(page) < limit:
                    break
                after = page[-1].id
        assert got == expected

    @invariant()
    def counts_and_records_match(self) -> None:
        with self.store.read() as txn:
            for status in DEAD_LETTER_STATUSES:
                want = sum(1 for r in self.model.values() if r.status == status)
                assert self.store.dead_letters.count(txn, status) == want
            assert self.store.dead_letters.count(txn) == len(self.model)
            for rid, record in self.model.items():
                assert self.store.dead_letters.get(txn, rid) == record


DeadLetterMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None
)
TestDeadLetterTable = DeadLetterMachine.TestCase
