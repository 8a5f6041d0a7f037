"""Which process runs the runtime of a data directory.

Several processes may open the store (the CLI does, while a host runs), but only one
runtime may own a directory: two would both re-dispatch the same outbox. The owner holds
an exclusive `flock` on `owner.lock` for as long as its runtime is open; the kernel
releases it when the process dies, even by SIGKILL, so a stale lock never blocks a
restart. The file holds the owner's pid, for messages.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from surelay.errors import StorageError

__all__ = ["OWNER_FILE", "OwnerLock", "running_owner"]

OWNER_FILE = "owner.lock"


class OwnerLock:
    """The held ownership of a directory; `release()` (idempotent) gives it up."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: str | os.PathLike[str]) -> OwnerLock:
        """Take ownership of `directory`, or raise `StorageError` naming the process that
        has it."""
        path = Path(directory) / OWNER_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _read_pid(path)
            who = f"process {pid}" if pid else "another process"
            raise StorageError(
                f"{directory} is owned by a runtime in {who}; one runtime per data directory "
                "(the CLI can still read it)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing drops the flock


def running_owner(directory: str | os.PathLike[str]) -> int | None:
    """The pid of the process whose runtime owns `directory` now, or None when no runtime
    has it open (0 if one does but its pid is unknown)."""
    path = Path(directory) / OWNER_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(path) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
