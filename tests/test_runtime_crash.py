"""kill -9 of a sending host, several rounds on one directory: nothing acknowledged is lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from surelay import Envelope, Runtime

ROOT = Path(__file__).resolve().parent.parent


def complete_lines(path: Path) -> set[str]:
    if not path.exists():
        return set()
    text = path.read_text()
    lines = text.split("\n")
    return {line for line in lines[:-1] if line}  # the last one may be cut short


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_every_acknowledged_send_survives_sigkill(tmp_path: Path, kind: str) -> None:
    data = tmp_path / "data"
    acked = tmp_path / "acked"
    rng = random.Random(7)
    for round_ in range(5):
        delivered = tmp_path / f"delivered-{round_}"
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.runtime_host",
                str(data),
                str(acked),
                str(delivered),
                str(round_),
                kind,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert child.stdout is not None
        assert child.stdout.readline() == b"sending\n"
        target = len(complete_lines(acked)) + rng.randrange(50, 400)
        deadline = time.monotonic() + 30
        while len(complete_lines(acked)) < target and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert child.returncode == -signal.SIGKILL

    accepted = complete_lines(acked)
    assert len(accepted) > 250
    final: list[str] = []

    def record(envelope: Envelope) -> None:
        final.append(envelope.message_id)

    with Runtime.open(data, transports={"t": record}) as rt:
        assert rt.flush(60)
        dead = {d.message_id for d in rt.dead_letters.list(limit=10_000)}
    delivered_any = set(final).union(
        *(complete_lines(tmp_path / f"delivered-{r}") for r in range(5))
    )
    lost = accepted - delivered_any - dead
    assert not lost, f"{len(lost)} acknowledged messages were lost"
