"""A backlog bounded by disk, not RAM: recovery and adoption of a 400 MB outbox, each in
a process of its own, cost at most 150 MiB of anonymous memory above an empty runtime.

Runs `benchmarks/backlog.py --check` (the benchmark prints the figures; the check fails
it when a memory goal is missed). Memory, not time, is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_recovery_and_adoption_of_a_400_mb_backlog_stay_within_150_mib() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "backlog.py"), "--mb", "400", "--check"],
        check=False,
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    report = done.stdout
    assert done.returncode == 0, report + done.stderr[-2000:]
    assert "recovery" in report and "adoption" in report, report
    assert "over the goal" not in report, report
