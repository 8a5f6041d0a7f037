"""The HookRunner: runs `RuntimeConfig.on_dead_letter` once for each dead letter, after it
is durable, where a hook that raises or hangs harms nothing else.

The dead letter and its mark (`surelay.storage.hook_marks`) are written in one
transaction; the sink (or the intake, for a consumed message refused as invalid) then
tells this actor. Each hook call runs on a thread of its own, cut off after `timeout`
seconds (its thread is left to end by itself; a coroutine hook is cancelled); whatever it
did, its mark is cleared, so it is not called again. A hook that raises or times out is
logged with its dead letter's id. At start (after a crash, a kill or a restart) the
marks left are run first. Delivery never waits for a hook: only this actor does.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surelay.supervision import Actor

if TYPE_CHECKING:
    from surelay.storage.records import DeadLetter
    from surelay.storage.store import Store

__all__ = ["CHUNK", "HookEndpoint", "HookRunner", "Resume", "RunHooks", "run_hook"]

logger = logging.getLogger("surelay.hooks")

CHUNK = 100
"""Marks left by an earlier run read per step (then the mailbox flows again)."""

Hook = Callable[["DeadLetter"], "Awaitable[None] | None"]


@dataclass(frozen=True, slots=True)
class RunHooks:
    """These dead letters are durable, each with its mark: run the hook for each (ids
    only: a slow hook must not let payloads pile up in the mailbox)."""

    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Resume:
    """Run the hooks of the marks left by an earlier run, or adopted (one chunk)."""


@dataclass(frozen=True, slots=True)
class HookEndpoint:
    """What the HookRunner works with: the store (the marks), the hook (None: there is
    none, and nothing is ever marked) and how long one call may take."""

    store: Store
    hook: Hook | None
    timeout: float


def run_hook(
    hook: Hook, record: DeadLetter, timeout: float
) -> tuple[str, BaseException | None] | None:
    """Call `hook(record)` on a thread of its own, waiting `timeout` seconds at most; None
    if it returned, else what went wrong (and the error it raised, if it did)."""
    outcome: list[tuple[str, BaseException | None] | None] = []

    def call() -> None:
        try:
            result = hook(record)
            if inspect.isawaitable(result):
                asyncio.run(_bounded(result, timeout))
            outcome.append(None)
        except TimeoutError:
            outcome.append((f"it did not end within {timeout}s (cancelled)", None))
        except BaseException as error:  # every outcome is reported
            outcome.append((f"it raised {type(error).__name__}", error))

    thread = threading.Thread(target=call, name="surelay-hook", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)  # (a coroutine's own timeout ends it before this)
    if thread.is_alive():
        return f"it did not end within {timeout}s (left running on its thread)", None
    return outcome[0] if outcome else ("it ended without an outcome", None)


async def _bounded(result: Awaitable[Any], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        await result


class HookRunner(Actor):
    def __init__(self, endpoint: HookEndpoint) -> None:
        super().__init__()
        self._at = endpoint

    def on_start(self) -> None:
        if self._at.hook is not None and self.ref is not None:
            self.ref.tell(Resume())

    def on_receive(self, message: Any) -> None:
        if isinstance(message, RunHooks):
            self._call_hooks(message.ids)
        elif isinstance(message, Resume):
            self._resume()

    def _resume(self) -> None:
        """Run a chunk of the marks left on disk, then look again (behind newer mail)."""
        store = self._at.store
        if store.env.closed or self._at.hook is None:
            return
        with store.read() as txn:
            ids = store.hook_marks.pending(txn, limit=CHUNK)
        self._call_hooks(tuple(ids))
        if len(ids) >= CHUNK and self.ref is not None:
            self.ref.tell(Resume())

    def _call_hooks(self, ids: tuple[str, ...]) -> None:
        """Run the hook of each dead letter whose mark is still there, then clear the
        mark (waited for: a mark read again later is one whose hook has not run)."""
        at = self._at
        store = at.store
        if at.hook is None:
            return
        for dead_letter_id in ids:
            if store.env.closed:
                return  # its mark stays: it runs at the next open
            with store.read() as txn:
                record = store.dead_letters.get(txn, dead_letter_id)
                marked = store.hook_marks.has(txn, dead_letter_id)
            if not marked:
                continue  # run already (a resume and a RunHooks may both name it)
            if record is not None:  # (none: purged since; nothing to tell the hook)
                self._call(at.hook, record)
            try:
                store.write(
                    functools.partial(store.hook_marks.clear, ids=[dead_letter_id])
                ).result()
            except Exception as error:  # (the store closing): it runs again at the next open
                logger.warning("could not clear the hook mark of %s: %s", dead_letter_id, error)
                return

    def _call(self, hook: Hook, record: DeadLetter) -> None:
        problem = run_hook(hook, record, self._at.timeout)
        if problem is not None:
            why, error = problem
            logger.error(
                "on_dead_letter failed for dead letter %s (message %s): %s; it is not "
                "called again for it",
                record.id,
                record.message_id,
                why,
                exc_info=error,
            )
