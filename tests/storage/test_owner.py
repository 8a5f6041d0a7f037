"""One runtime per data directory: the owner lock, across processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from surelay.errors import StorageError
from surelay.storage.owner import OwnerLock, running_owner

HOLD = """
import sys, time
from surelay.storage.owner import OwnerLock
lock = OwnerLock.acquire(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_owner_is_refused_and_named(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        assert running_owner(tmp_path) == child.pid
        with pytest.raises(StorageError, match=f"runtime in process {child.pid}"):
            OwnerLock.acquire(tmp_path)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    # the kernel dropped the lock with the process: a restart is never blocked
    assert running_owner(tmp_path) is None
    lock = OwnerLock.acquire(tmp_path)
    assert running_owner(tmp_path) == os.getpid()
    lock.release()
    lock.release()  # idempotent
    assert running_owner(tmp_path) is None


def test_no_lock_file_means_no_owner(tmp_path: Path) -> None:
    assert running_owner(tmp_path) is None
