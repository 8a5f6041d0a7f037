"""Actors built from their endpoint records alone, without a runtime: what each is
given is all it needs (a real store, tracker and supervision tree; no runtime)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from surelay.actors.dead_letter import Capture, DeadLetterSink, SinkEndpoint
from surelay.actors.governor import GovernorEndpoint, PressureGovernor, Sample
from surelay.actors.retry import RetryEndpoint, RetryScheduler
from surelay.backlog import Due, RetryBacklog, Schedule
from surelay.config import PressurePolicy
from surelay.counters import Counters
from surelay.envelope import Envelope
from surelay.peers import Peers
from surelay.pressure import PressureState
from surelay.receipts import Outcome, Tracker
from surelay.storage.records import outbox_entry
from surelay.storage.store import Store
from surelay.supervision import ChildSpec, Supervisor
from surelay.telemetry import Telemetry
from tests.actors.stand_ins import Inbox, tree

WAIT = 10.0


def entry(message_id: str) -> Any:
    envelope = Envelope(message_id, "t", b"x", key="k")
    return outbox_entry(1, envelope, 0.0, 0)


def test_the_retry_scheduler_hands_a_due_message_to_its_partitions_sender() -> None:
    got: list[Any] = []
    arrived = threading.Event()
    peers = Peers(partitions=1, replay_partitions=1)
    sender = ChildSpec("sender-0", Inbox, args=(got, arrived))
    retry = ChildSpec(
        "retry", RetryScheduler, args=(RetryEndpoint(RetryBacklog(), time.time, peers),)
    )
    root = tree(sender, retry)
    try:
        peers.attach(root)
        held = entry("m1")
        peers.retry.tell(Schedule(0, held, time.time() + 0.05))
        assert arrived.wait(WAIT)
        assert got == [Due(held)]
    finally:
        root.stop(timeout=WAIT)


def test_the_sink_stores_the_dead_letter_and_ends_the_message(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "d", claim=True)
    tracker = Tracker()
    telemetry = Telemetry()
    counters = Counters(telemetry)
    endpoint = SinkEndpoint(store, tracker, counters, telemetry, set())
    root = tree(ChildSpec("dead_letters", DeadLetterSink, args=(endpoint,)))
    try:
        (receipt,) = tracker.add(["m1"])
        peers = Peers(partitions=1, replay_partitions=1)
        peers.attach(root)
        peers.dead_letters.tell(
            Capture(entry("m1"), "permanent", "no", "PermanentError", 1, 1.0, 2.0)
        )
        assert receipt.wait(WAIT) is Outcome.DEAD_LETTERED
        with store.read() as txn:
            (letter,) = store.dead_letters.list(txn)
        assert (letter.message_id, letter.reason_class) == ("m1", "permanent")
        assert counters.snapshot()["dead_lettered"] == 1
    finally:
        root.stop(timeout=WAIT)
        telemetry.close()
        store.close()


def test_a_peer_looked_up_before_the_tree_runs_says_so() -> None:
    peers = Peers(partitions=1, replay_partitions=1)
    assert not peers.attached
    with pytest.raises(LookupError, match="not running"):
        peers.governor  # noqa: B018  # the lookup is the point


def test_the_governor_samples_before_the_tree_runs(tmp_path: Path) -> None:
    """Its first sample comes as it starts, before the senders can be looked up."""
    telemetry = Telemetry()
    endpoint = GovernorEndpoint(
        PressureState(),
        PressurePolicy(),
        Tracker(),
        RetryBacklog(),
        Counters(telemetry),
        None,
        telemetry,
        Peers(partitions=1, replay_partitions=1),  # never attached
    )
    root = Supervisor.start([ChildSpec("governor", PressureGovernor, args=(endpoint,))], name="t")
    try:
        governor = root.child("governor")
        assert governor.ask(Sample(), timeout=WAIT) == "normal"
        assert endpoint.state.depths["mailboxes"] == 0
        assert root.which_children(timeout=WAIT)[0].restarts == 0
    finally:
        root.stop(timeout=WAIT)
        telemetry.close()


def test_peers_are_looked_up_once_at_attach_not_from_an_actor_later() -> None:
    """A lookup is an ask of a supervisor; one made later from an actor that its
    supervisor waits for (a restart, a stop) would wait for ever."""
    root = tree()
    peers = Peers(partitions=1, replay_partitions=1)
    peers.attach(root)
    root.stop(timeout=WAIT)  # no supervisor answers any more: nothing may ask one now
    assert len(peers.senders) == 1 and len(peers.replay_workers) == 1
    assert peers.replay_coordinator is not None and peers.dead_letters is not None
    assert peers.governor is not None and peers.retry is not None
