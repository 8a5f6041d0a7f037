"""A reconnect storm: 1,000 devices on three uvicorn workers of one directory while
messages flow, and 100 SIGKILLs of the workers (each started again at once). Every
device ends with every message, none lost, reordered or handed to it twice (the
devices count: tests/push/storm_client.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from surelay import Runtime
from surelay.push import PushConfig
from tests.helpers import listening, wait_until
from tests.push.serving import Worker
from tests.push_app import SECRET

ROOT = Path(__file__).resolve().parent.parent.parent
DEVICES = 1000
ROUNDS = 25
KILLS_PER_ROUND = 4  # 100 in all


@pytest.mark.timeout(600)
def test_a_hundred_sigkills_in_a_reconnect_storm_lose_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Runtime.open(data, transports={}).close()
    workers = [Worker(data) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        wait_until(lambda w=worker: listening(w.port), 30)  # type: ignore[misc]
    devices = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.push.storm_client",
            str(DEVICES),
            str(ROUNDS),
            *(w.url for w in workers),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SURELAY_PUSH_SECRET": SECRET},
    )
    push = PushConfig(SECRET, max_pending=100_000)
    kills = 0
    try:
        assert devices.stdout is not None
        assert devices.stdout.readline().strip() == "ready"
        with (
            Runtime.open(data, transports={}, push=push) as rt,
            ThreadPoolExecutor(32) as pool,
        ):
            for n in range(ROUNDS):
                payload = b"%d" % n
                list(pool.map(lambda i, p=payload: rt.push.send(f"s{i}", p), range(DEVICES)))
                for _ in range(KILLS_PER_ROUND):
                    worker = workers[kills % len(workers)]
                    worker.kill()  # mid-flow, with devices on it
                    worker.start()
                    kills += 1
                    # one worker starting at a time: the storm is the devices', and the
                    # machine's other tests keep a core
                    wait_until(lambda w=worker: listening(w.port), 30)  # type: ignore[misc]
            out, _ = devices.communicate(timeout=400)
        result = json.loads(out)
        assert kills == 100
        assert (result["lost"], result["reordered"], result["duplicates"]) == (0, 0, 0), result
    finally:
        devices.kill()
        for worker in workers:
            worker.kill()
