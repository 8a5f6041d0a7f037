"""Rate limits: a transport's (or a group's) calls bounded across every process on the
directory, fairly between groups, without spending attempts; a 429's Retry-After slows
the whole transport or group."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import MappingProxyType

import pytest

from surelay import Envelope, Outcome, Rate, Runtime, RuntimeConfig, TransientError
from surelay.storage import Store
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent


class Calls:
    """A transport recording when each call was made (wall clock), per tenant header."""

    def __init__(self) -> None:
        self.at: list[tuple[float, str, int, bytes]] = []
        self._lock = threading.Lock()

    def __call__(self, envelope: Envelope) -> None:
        with self._lock:
            self.at.append(
                (
                    time.time(),
                    envelope.headers.get("tenant", ""),
                    envelope.attempt,
                    envelope.payload,
                )
            )

    def of(self, tenant: str) -> list[float]:
        with self._lock:
            return [t for t, who, _, _ in self.at if who == tenant]


def _most_in_any_span(times: list[float], span: float) -> int:
    times = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= span:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_one_process_holds_its_rate_over_ten_seconds(tmp_path: Path) -> None:
    calls = Calls()
    config = RuntimeConfig(rate_limits={"t": Rate(40, 1.0)})
    with Runtime.open(tmp_path, transports={"t": calls}, config=config) as rt:
        rt.send_batch([{"transport": "t", "payload": b"x"} for _ in range(500)])
        wait_until(lambda: len(calls.at) >= 440, 30)
        times = sorted(t for t, _, _, _ in calls.at)
        in_ten = sum(1 for t in times if times[0] <= t < times[0] + 10.0)
        assert 360 <= in_ten <= 440, in_ten  # 400 within 10%
        assert _most_in_any_span(times, 1.0) <= 44  # (calls start a little late or early)
        assert {attempt for _, _, attempt, _ in calls.at} == {1}  # waiting spends none


def test_three_processes_on_one_directory_share_the_rate(tmp_path: Path) -> None:
    data, calls_file = tmp_path / "data", tmp_path / "calls"
    Runtime.open(data, transports={}).close()  # (made once, not by three at a time)
    start_at = time.time() + 3.0
    hosts = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.rate_host",
                str(data),
                str(calls_file),
                "300",
                "60",
                repr(start_at),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(3)
    ]
    try:
        for host in hosts:
            assert host.wait(90) == 0
    finally:
        for host in hosts:
            host.kill()
    times = sorted(float(line) for line in calls_file.read_text().split())
    assert len(times) == 900
    in_ten = sum(1 for t in times if times[0] <= t < times[0] + 10.0)
    assert 540 <= in_ten <= 660, in_ten  # 600 within 10%, all three together


def _queue_backlog(path: Path, tenant: str, count: int) -> None:
    """`count` messages of `tenant` left in the outbox, as an earlier run (or an outage)
    leaves them: what the next runtime on `path` finds queued."""
    store = Store.open(path, claim=True)
    try:
        store.write(lambda txn: store.outbox.set_routed_for(txn, 4)).result()
        headers = MappingProxyType({"tenant": tenant})
        for start in range(0, count, 10_000):
            envelopes = [
                (
                    Envelope(f"{tenant}-{i}", "t", b"x", headers=headers, created_at=time.time()),
                    i % 4,
                )
                for i in range(start, min(count, start + 10_000))
            ]
            store.write(
                lambda txn, e=envelopes: store.outbox.enqueue_many(txn, e, due_at=time.time())
            ).result()
    finally:
        store.close()


def test_a_tenant_with_a_hundred_thousand_queued_never_delays_another(tmp_path: Path) -> None:
    _queue_backlog(tmp_path, "a", 100_000)
    calls = Calls()
    per = 60.0  # "100 messages a minute per tenant"
    config = RuntimeConfig(rate_limits={"t": Rate(100, per, by="tenant")})
    with Runtime.open(tmp_path, transports={"t": calls}, config=config) as rt:
        sent = time.time()
        receipts = rt.send_batch(
            [{"transport": "t", "payload": b"b", "headers": {"tenant": "b"}} for _ in range(10)]
        )
        assert all(r.wait(per) is Outcome.DELIVERED for r in receipts)
        waited = max(calls.of("b")) - sent
        # b's ten go at b's own pace (0.6 s apart), not behind a's 100,000: within one
        # rate period of being sent
        assert waited <= per
        assert len(calls.of("a")) <= 100 + 2 * waited * 100 / per + 1
        assert {attempt for _, _, attempt, _ in calls.at} == {1}  # waiting spends none
        assert rt.stats().in_flight < 5000  # a's backlog waits on disk, not in memory


def test_a_retry_after_slows_a_rate_limited_transport_not_only_its_message(
    tmp_path: Path,
) -> None:
    told = threading.Event()
    calls: list[tuple[float, bytes]] = []

    def busy_once(envelope: Envelope) -> None:
        calls.append((time.time(), envelope.payload))
        if envelope.payload == b"first" and envelope.attempt == 1:
            told.set()
            raise TransientError("429 Too Many Requests", retry_after=1.0)

    for limits in ({"t": Rate(1000, 1.0)}, {}):
        calls.clear()
        told.clear()
        config = RuntimeConfig(rate_limits=limits)
        path = tmp_path / str(len(limits))
        with Runtime.open(path, transports={"t": busy_once}, config=config) as rt:
            first = rt.send("t", b"first", key="k1")
            assert told.wait(10)
            slowed = time.time()
            others = [rt.send("t", b"other", key=f"k{i}") for i in range(2, 6)]
            assert all(r.wait(10) is Outcome.DELIVERED for r in [first, *others])
        later = min(t for t, payload in calls if payload == b"other")
        if limits:  # the whole transport waited, then went on at its rate
            assert later >= slowed + 0.9, later - slowed
        else:  # without a rate, only the message that was answered waits
            assert later < slowed + 0.9, later - slowed


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        (lambda: Rate(0, 1.0), "Rate.count"),
        (lambda: Rate(1, 0), "Rate.per"),
        (lambda: Rate(1, float("inf")), "Rate.per"),
        (lambda: Rate(1, 1.0, by=""), "Rate.by"),
        (lambda: Rate(1, 1.0, by=5), "Rate.by"),  # type: ignore[arg-type]
        (lambda: Rate(1, 1.0, burst=0), "Rate.burst"),
        (lambda: RuntimeConfig(rate_limits={"t": (1, 1.0)}), "rate_limits"),  # type: ignore[dict-item]
    ],
)
def test_a_bad_rate_names_its_field(rate: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rate()  # type: ignore[operator]


def test_a_rate_for_a_transport_the_runtime_lacks_is_refused(tmp_path: Path) -> None:
    config = RuntimeConfig(rate_limits={"typo": Rate(1, 1.0)})
    with pytest.raises(ValueError, match="rate_limits names transport"):
        Runtime.open(tmp_path, transports={"t": Calls()}, config=config)
