"""A plain-Python model of the OTP rules beside a real supervisor.

Rules crash children, make them exit normally, move the clock, and call the admin API;
after every step `which_children`, `count_children`, `is_alive` and how often each child
was started must match the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from pykka import ActorDeadError

from surelay.supervision import ChildStartError, Supervisor, SupervisorRef

from .workers import WAIT, FakeClock, Journal, crash, exit_normally, worker

PERIOD = 10.0


@dataclass
class ModelChild:
    id: str
    restart: str
    status: str = "running"
    restarts: int = 0


class OtpModel:
    """The rules as a reader of the OTP manual would apply them, by hand."""

    def __init__(self, strategy: str, intensity: int, children: list[ModelChild]) -> None:
        self.strategy = strategy
        self.intensity = intensity
        self.children = children
        self.alive = True
        self.restart_times: list[float] = []
        self.starts: dict[str, int] = {c.id: 1 for c in children}

    def get(self, child_id: str) -> ModelChild | None:
        return next((c for c in self.children if c.id == child_id), None)

    def ended(self, child: ModelChild, crashed: bool, now: float) -> None:
        restart = child.restart == "permanent" or (child.restart == "transient" and crashed)
        if not restart:
            if child.restart == "temporary":
                self.children.remove(child)
            else:
                child.status = "stopped"
            return
        self.restart_times = [t for t in self.restart_times if t >= now - PERIOD] + [now]
        if len(self.restart_times) > self.intensity:
            self.alive = False
            return
        index = self.children.index(child)
        if self.strategy == "one_for_one":
            group = [child]
        elif self.strategy == "one_for_all":
            group = list(self.children)
        else:
            group = self.children[index:]
        for member in group:
            if member is not child and member.status == "stopped":
                continue  # stopped children stay stopped
            if member is not child and member.restart == "temporary":
                self.children.remove(member)
                continue
            member.status = "running"
            member.restarts += 1
            self.starts[member.id] = self.starts.get(member.id, 0) + 1


class SupervisorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.journal = Journal()
        self.sup: SupervisorRef | None = None
        self.model: OtpModel
        self.next_id = 0

    def spec_for(self, child_id: str, restart: str):  # type: ignore[no-untyped-def]
        return worker(self.journal, child_id, restart=restart, shutdown=WAIT)

    @initialize(
        strategy=st.sampled_from(["one_for_one", "one_for_all", "rest_for_one"]),
        intensity=st.integers(0, 3),
        restarts=st.lists(
            st.sampled_from(["permanent", "transient", "temporary"]), min_size=1, max_size=4
        ),
    )
    def start(self, strategy: str, intensity: int, restarts: list[str]) -> None:
        ids = [f"c{n}" for n in range(len(restarts))]
        self.next_id = len(ids)
        self.model = OtpModel(
            strategy, intensity, [ModelChild(i, r) for i, r in zip(ids, restarts, strict=True)]
        )
        self.sup = Supervisor.start(
            [self.spec_for(i, r) for i, r in zip(ids, restarts, strict=True)],
            strategy=strategy,
            intensity=intensity,
            period=PERIOD,
            clock=self.clock,
        )

    def pick(self, n: int) -> ModelChild | None:
        if not self.model.children:
            return None
        return self.model.children[n % len(self.model.children)]

    @precondition(lambda self: self.model.alive)
    @rule(n=st.integers(0, 7))
    def crash_child(self, n: int) -> None:
        assert self.sup is not None
        child = self.pick(n)
        if child is None or child.status != "running":
            return
        ref = self.sup.child(child.id)
        crash(ref)
        self.model.ended(child, crashed=True, now=self.clock.now)
        self.settle(ref)

    @precondition(lambda self: self.model.alive)
    @rule(n=st.integers(0, 7))
    def child_exits_normally(self, n: int) -> None:
        assert self.sup is not None
        child = self.pick(n)
        if child is None or child.status != "running":
            return
        ref = self.sup.child(child.id)
        self.model.ended(child, crashed=False, now=self.clock.now)
        if self.model.alive:
            exit_normally(ref)
        else:
            assert ref.ask("exit", WAIT) == "exiting"
        self.settle(ref)

    def settle(self, ref: object) -> None:
        """If the model says the supervisor died, wait for the real one to close."""
        assert self.sup is not None
        if not self.model.alive:
            with pytest.raises(ActorDeadError):
                self.sup.which_children()

    @rule(seconds=st.floats(0, 12))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.model.alive)
    @rule(n=st.integers(0, 7))
    def terminate(self, n: int) -> None:
        assert self.sup is not None
        child = self.pick(n)
        if child is None:
            with pytest.raises(KeyError):
                self.sup.terminate_child("nobody")
            return
        self.sup.terminate_child(child.id)
        if child.restart == "temporary":
            self.model.children.remove(child)
        else:
            child.status = "stopped"

    @precondition(lambda self: self.model.alive)
    @rule(n=st.integers(0, 7))
    def restart(self, n: int) -> None:
        assert self.sup is not None
        child = self.pick(n)
        if child is None:
            return
        if child.status == "running":
            with pytest.raises(ValueError, match="running"):
                self.sup.restart_child(child.id)
            return
        self.sup.restart_child(child.id)
        child.status = "running"
        self.model.starts[child.id] += 1

    @precondition(lambda self: self.model.alive)
    @rule(n=st.integers(0, 7))
    def delete(self, n: int) -> None:
        assert self.sup is not None
        child = self.pick(n)
        if child is None:
            return
        if child.status == "running":
            with pytest.raises(ValueError):
                self.sup.delete_child(child.id)
            return
        self.sup.delete_child(child.id)
        self.model.children.remove(child)

    @precondition(lambda self: self.model.alive and len(self.model.children) < 6)
    @rule(restart=st.sampled_from(["permanent", "transient", "temporary"]), fail=st.booleans())
    def start_child(self, restart: str, fail: bool) -> None:
        assert self.sup is not None
        child_id = f"c{self.next_id}"
        self.next_id += 1
        self.model.starts[child_id] = 1
        if fail:
            self.journal.failing_starts[child_id] = 1
            with pytest.raises(ChildStartError):
                self.sup.start_child(self.spec_for(child_id, restart))
            return
        self.sup.start_child(self.spec_for(child_id, restart))
        self.model.children.append(ModelChild(child_id, restart))

    @invariant()
    def matches_the_model(self) -> None:
        if self.sup is None:
            return
        assert self.sup.is_alive() == self.model.alive
        if not self.model.alive:
            return
        infos = self.sup.which_children()
        assert [(c.id, c.status, c.restarts) for c in infos] == [
            (c.id, c.status, c.restarts) for c in self.model.children
        ]
        running = sum(1 for c in self.model.children if c.status == "running")
        assert self.sup.count_children() == {
            "specs": len(self.model.children),
            "active": running,
            "supervisors": 0,
            "workers": len(self.model.children),
        }
        with self.journal.lock:
            assert dict(self.journal.starts) == self.model.starts

    def teardown(self) -> None:
        if self.sup is not None:
            self.sup.stop(WAIT)


SupervisorMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSupervisorRules = SupervisorMachine.TestCase
