"""Slots: which process runs which part of a data directory's outbox.

Several processes (the workers of one web server) may run a runtime on one directory at
once. They share its LMDB environment (LMDB serialises their writes), so dead letters,
dedup records and replay requests are common to all; only the outbox is split, by slot,
so that no two runtimes dispatch the same message. Each runtime holds one slot for as
long as it is open: an exclusive `flock` on the slot's lock file, which the kernel
releases when the process dies, even by SIGKILL. A slot whose lock is free belongs to
nobody: the next runtime to open takes it over, and a running one adopts its outbox
(`surelay.actors.slot_keeper`).

Slot 0's lock is `owner.lock` at the top of the directory, where the single-owner layout
of earlier releases kept its one lock: such a directory reads as slot 0. Slot n >= 1
locks `slots/n.lock`. Lock files are never removed; a free one is taken again. Each
holds its holder's pid, for messages.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from surelay.errors import StorageError

__all__ = ["MAX_SLOTS", "SlotLock", "holders", "lock_path", "slot_numbers"]

MAX_SLOTS = 1024
"""At most this many runtimes on one directory at once (a sanity bound: each costs a
file descriptor and a look by every keeper each second)."""

_SLOT0 = "owner.lock"
_DIR = "slots"


def lock_path(directory: str | os.PathLike[str], slot: int) -> Path:
    """The lock file of `slot` in `directory`."""
    root = Path(directory)
    return root / _SLOT0 if slot == 0 else root / _DIR / f"{slot}.lock"


def slot_numbers(directory: str | os.PathLike[str]) -> list[int]:
    """Every slot that has ever been taken in `directory` (0 always), in order."""
    found = {0}
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(Path(directory) / _DIR):
            stem, dot, ext = entry.name.partition(".")
            if dot and ext == "lock" and stem.isdigit() and 0 < int(stem) < MAX_SLOTS:
                found.add(int(stem))
    return sorted(found)


class SlotLock:
    """A held slot; `release()` (idempotent) gives it up."""

    def __init__(self, slot: int, fd: int) -> None:
        self.slot = slot
        self._fd: int | None = fd

    @classmethod
    def claim(cls, directory: str | os.PathLike[str]) -> SlotLock:
        """Take the lowest free slot of `directory` (a new one if all are held), or
        raise `StorageError` if `MAX_SLOTS` runtimes hold one each."""
        for slot in range(MAX_SLOTS):
            lock = cls.try_take(directory, slot)
            if lock is not None:
                return lock
        raise StorageError(
            f"all {MAX_SLOTS} slots of {directory} are held by running runtimes; "
            "close some before opening another"
        )

    @classmethod
    def try_take(cls, directory: str | os.PathLike[str], slot: int) -> SlotLock | None:
        """Take `slot` if no process holds it, else None."""
        path = lock_path(directory, slot)
        if slot:
            path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(slot, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing drops the flock

    def disown(self) -> None:
        """Forget the lock without touching it (a forked child: the parent holds it;
        the lock file's descriptor is shared with the parent, so closing ours keeps the
        parent's flock)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


def holders(directory: str | os.PathLike[str]) -> dict[int, int]:
    """The slots of `directory` held by a running runtime now, each with its holder's
    pid (0 if unknown)."""
    out = {}
    for slot in slot_numbers(directory):
        path = lock_path(directory, slot)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                out[slot] = _read_pid(path) or 0
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return out


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
