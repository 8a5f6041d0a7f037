"""The outbox against a plain-Python model: enqueue (with a wall clock that may step
back), reschedule, both ways of removing, and every read: by id, in acceptance order
(paged), by partition, and due by a time."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from surelay.envelope import Envelope
from surelay.storage import OutboxEntry
from surelay.storage.keys import micros

from .conftest import StoreMachine

PARTITIONS = [0, 1, 2, 300]


def model_due(entries: list[OutboxEntry], until: float) -> list[OutboxEntry]:
    """What `Outbox.due` promises: retried entries due by `until`, and, per partition in
    acceptance order, first attempts up to the first one due after `until`; earliest
    first, ties in acceptance order; times at the index's resolution, microseconds."""
    bound = micros(until)
    found = [e for e in entries if e.envelope.attempt > 1 and micros(e.due_at) <= bound]
    for partition in PARTITIONS:
        for entry in sorted(entries, key=lambda e: e.seq):
            if entry.partition != partition or entry.envelope.attempt > 1:
                continue
            if micros(entry.due_at) > bound:
                break
            found.append(entry)
    return sorted(found, key=lambda e: (micros(e.due_at), e.seq))


class OutboxMachine(StoreMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, OutboxEntry] = {}
        self.seq = 0

    def entries(self) -> list[OutboxEntry]:
        return sorted(self.model.values(), key=lambda e: e.seq)

    @rule(
        placed=st.lists(
            st.tuples(st.sampled_from(PARTITIONS), st.sampled_from([1, 1, 1, 2])),
            min_size=1,
            max_size=6,
        ),
        gap=st.floats(-5, 20),
    )
    def enqueue(self, placed: list[tuple[int, int]], gap: float) -> None:
        self.clock.now += gap  # a negative gap is the wall clock stepping back
        items = []
        for partition, attempt in placed:
            self.seq += 1
            envelope = Envelope(f"m{self.seq}", "t", b"p", key=None, attempt=attempt)
            items.append((envelope, partition))
            self.model[envelope.message_id] = OutboxEntry(
                self.seq, envelope, self.clock.now, partition
            )
        made = self.store.enqueue(items).result()
        assert made == [self.model[e.message_id] for e, _ in items]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), attempt=st.integers(2, 5), delay=st.floats(-10, 100))
    def reschedule(self, data: st.DataObject, attempt: int, delay: float) -> None:
        message_id = data.draw(st.sampled_from(sorted(self.model)))
        entry = self.model[message_id]
        due = self.clock.now + delay
        updated = replace(entry, envelope=replace(entry.envelope, attempt=attempt), due_at=due)
        self.model[message_id] = updated
        got = self.store.reschedule(message_id, attempt=attempt, due_at=due).result()
        assert got == updated

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(sorted(self.model)))
        entry = self.model.pop(message_id)
        outbox = self.store.outbox
        assert self.store.write(lambda txn: outbox.remove(txn, message_id)).result() == entry
        assert self.store.write(lambda txn: outbox.remove(txn, message_id)).result() is None

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove_entries(self, data: st.DataObject) -> None:
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.model)), unique=True))
        entries = [self.model.pop(m) for m in chosen]
        outbox = self.store.outbox
        removed = self.store.write(lambda txn: outbox.remove_entries(txn, entries)).result()
        assert removed == len(entries)

    @invariant()
    def reads_match_the_model(self) -> None:
        outbox = self.store.outbox
        entries = self.entries()
        with self.store.read() as txn:
            assert outbox.count(txn) == len(entries)
            assert outbox.scan(txn) == entries
            for message_id, entry in self.model.items():
                assert outbox.get(txn, message_id) == entry
            paged: list[OutboxEntry] = []
            while page := outbox.scan(txn, after=paged[-1].seq if paged else 0, limit=3):
                paged += page
            assert paged == entries
            for partition in PARTITIONS:
                mine = [e for e in entries if e.partition == partition]
                assert outbox.in_partition(txn, partition) == mine
                if mine:
                    after = mine[0].seq
                    assert outbox.in_partition(txn, partition, after=after, limit=2) == mine[1:3]
            for until in (self.clock.now - 10, self.clock.now, self.clock.now + 50, 1e12):
                assert outbox.due(txn, until) == model_due(entries, until)
            assert outbox.due(txn, 1e12, limit=2) == model_due(entries, 1e12)[:2]
            # Only retried entries are in the due index, and none is left behind.
            retried = sum(1 for e in entries if e.envelope.attempt > 1)
            assert txn.stat(self.store.env.db("outbox_due"))["entries"] == retried


OutboxMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestOutboxTable = OutboxMachine.TestCase
