"""`surelay demo` through the real command, twice on one directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def surelay(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "surelay.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_demo_runs_twice_and_writes_traces(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for _ in range(2):
        done = surelay("demo", "--messages", "400", "--path", str(data))
        assert done.returncode == 0, done.stderr
        for row in ("accepted", "delivered", "dead-lettered: permanent", "sender restarts"):
            assert row in done.stdout
        assert "400" in done.stdout
    spans = [json.loads(line) for line in (data / "traces.jsonl").read_text().splitlines()]
    names = {span["name"] for span in spans}
    assert {"surelay.send", "surelay.deliver", "surelay.retry", "surelay.dead_letter"} <= names
    assert "DemoCrash" in (data / "demo.log").read_text()


def test_bad_usage_exits_2() -> None:
    assert surelay("demo", "--messages", "zero").returncode == 2
    assert surelay("nonsense").returncode == 2
