"""The two promises: a Ref outlives restarts, and so does the mailbox."""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

import pytest
from pykka import ActorDeadError, Future

from surelay.supervision import NO_MESSAGE, Actor, ChildSpec, Ref, Supervisor

from .workers import WAIT, Boom, Gate, Journal, crash, running, sync, worker


def hold(ref: Ref) -> Gate:
    """Block the child on a gate, so what is sent next queues up behind it."""
    gate = Gate()
    ref.tell(gate)
    assert gate.arrived.wait(WAIT)
    return gate


def test_200_tells_queued_behind_a_crash_are_handled_in_order() -> None:
    journal = Journal()
    with running(worker(journal, "a")) as sup:
        a = sup.child("a")
        gate = hold(a)
        a.tell(("crash", "poison"))
        for n in range(200):
            a.tell(("log", n))
        gate.release.set()
        assert sync(a) == 2
        assert journal.handled == [("a", n) for n in range(200)]
        assert journal.crashes == [("a", ("crash", "poison"))]  # handed to on_restart


def test_20_concurrent_asks_waiting_at_the_crash_all_get_answers() -> None:
    journal = Journal()
    with running(worker(journal, "a")) as sup:
        a = sup.child("a")
        gate = hold(a)
        a.tell("crash")
        queued = threading.Barrier(21)
        answers: dict[int, Any] = {}

        def asker(n: int) -> None:
            future = a.ask(("echo", n), block=False)
            queued.wait(WAIT)
            answers[n] = future.get(timeout=WAIT)

        threads = [threading.Thread(target=asker, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        queued.wait(WAIT)  # every ask is in the mailbox, behind the crash
        gate.release.set()
        for thread in threads:
            thread.join(WAIT)
        assert answers == {n: n for n in range(20)}
        assert sync(a) == 2


def test_the_crashing_asks_caller_gets_the_exception() -> None:
    journal = Journal()
    with running(worker(journal, "a")) as sup, pytest.raises(Boom, match="a"):
        sup.child("a").ask("crash", WAIT)


def test_a_crash_in_a_tell_handler_crashes_too() -> None:
    journal = Journal()
    with running(worker(journal, "a")) as sup:
        a = sup.child("a")
        a.tell("crash")
        assert sync(a) == 2


def test_asks_pending_when_the_child_stops_for_good_fail_instead_of_hanging() -> None:
    journal = Journal()
    sup = Supervisor.start([worker(journal, "a", restart="transient")])
    a = sup.child("a")
    gate = hold(a)
    a.tell("exit")
    pending: list[Future[Any]] = [a.ask(("echo", n), block=False) for n in range(5)]
    gate.release.set()
    # 'exit' queues the stop behind the five asks: they are answered, then it stops.
    assert [f.get(timeout=WAIT) for f in pending] == list(range(5))
    assert sync(a) is None  # transient, exited normally: stopped for good
    with pytest.raises(ActorDeadError):
        a.tell(("echo", 1))
    sup.stop()


def _ask_until_refused(ref: Ref, results: list[str]) -> None:
    while True:
        try:
            ref.ask(("echo", 1), WAIT)
        except ActorDeadError:
            results.append("refused")
            return
        results.append("answered")


def test_asks_racing_a_final_stop_are_answered_or_refused_never_lost() -> None:
    journal = Journal()
    for _ in range(20):
        sup = Supervisor.start([worker(journal, "a")])
        results: list[str] = []
        thread = threading.Thread(target=_ask_until_refused, args=(sup.child("a"), results))
        thread.start()
        sup.stop(WAIT)
        thread.join(WAIT)
        assert not thread.is_alive()  # the last ask was refused, not left waiting
        assert results[-1] == "refused"
        assert results.count("refused") == 1


def test_backoff_delays_restarts_and_messages_wait_for_the_new_incarnation() -> None:
    journal = Journal()
    with running(
        worker(journal, "a"), backoff=(0.05, 0.2), intensity=10, rng=random.Random(1)
    ) as sup:
        a = sup.child("a")
        crash(a)
        assert [(c.id, c.status) for c in sup.which_children()] == [("a", "restarting")]
        assert a.is_alive()
        assert sync(a) == 2  # waited for the restart rather than failing
        assert sup.which_children()[0].status == "running"


def test_terminating_a_restarting_child_cancels_its_restart() -> None:
    journal = Journal()
    with running(worker(journal, "a"), backoff=(5.0, 10.0)) as sup:
        a = sup.child("a")
        crash(a)
        pending = a.ask(("echo", 1), block=False)
        sup.terminate_child("a")
        with pytest.raises(ActorDeadError):
            pending.get(timeout=WAIT)
        assert sup.which_children()[0].status == "stopped"
        assert sync(sup.restart_child("a")) == 2


class Stuck(Actor):
    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self.gate = gate

    def on_receive(self, message: Any) -> Any:
        self.gate.arrived.set()
        self.gate.release.wait(WAIT)
        return "done"


def test_a_child_that_does_not_stop_in_time_is_abandoned_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = Gate()
    with running(ChildSpec("stuck", Stuck, args=(gate,), shutdown=0.05)) as sup:
        stuck = sup.child("stuck")
        blocked = stuck.ask("anything", block=False)
        assert gate.arrived.wait(WAIT)
        queued = stuck.ask("queued", block=False)
        with caplog.at_level(logging.ERROR, "surelay.supervision"):
            sup.terminate_child("stuck")
        assert "did not stop within 0.05s and was abandoned" in caplog.text
        with pytest.raises(ActorDeadError, match="abandoned"):
            blocked.get(timeout=WAIT)
        with pytest.raises(ActorDeadError):
            queued.get(timeout=WAIT)
        gate.release.set()


def test_proxy_calls_survive_restarts() -> None:
    journal = Journal()
    with running(worker(journal, "a")) as sup:
        a = sup.child("a")
        proxy = a.proxy()
        assert proxy.ping().get(timeout=WAIT) == 1
        crash(a)
        assert proxy.ping().get(timeout=WAIT) == 2


def test_on_restart_sees_no_message_for_a_crash_outside_a_handler() -> None:
    journal = Journal()
    with running(worker(journal, "a"), intensity=5) as sup:
        journal.failing_starts["a"] = 1
        crash(sup.child("a"))
        assert sync(sup.child("a")) == 3
        assert journal.crashes == [("a", NO_MESSAGE)]  # the last crash was its start


class Lonely(Actor):
    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise Boom("lonely")
        return message


def test_a_standalone_actor_stops_on_a_crash_and_fails_its_queue() -> None:
    ref = Lonely.start()
    assert ref.ask("hi", timeout=WAIT) == "hi"
    with pytest.raises(Boom):
        ref.ask("crash", timeout=WAIT)
    assert ref.actor_stopped.wait(WAIT)
    with pytest.raises(ActorDeadError):
        ref.tell("late")


def test_a_standalone_actor_stops_normally_after_its_queue() -> None:
    ref = Lonely.start()
    pending = ref.ask("queued", block=False)
    assert ref.stop(timeout=WAIT) is True
    assert pending.get(timeout=WAIT) == "queued"
    with pytest.raises(ActorDeadError):
        ref.ask("late", timeout=WAIT)
