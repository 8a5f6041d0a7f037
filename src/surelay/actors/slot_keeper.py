"""The SlotKeeper: adopts the outbox of every slot whose runtime is gone.

Several runtimes may run on one data directory, one per slot (`surelay.storage.slots`).
When one dies (kill -9 included) and no process opens the directory again to take its
slot (a worker pool that shrank), its accepted messages would wait for ever. Every
`EVERY` seconds the keeper looks at the other slots; one that holds outbox entries and
whose lock it can take has no runtime: it moves those entries into its own slot, one
transaction per chunk (so each message is in exactly one slot at any time), dispatches
them, and lets the lock go. It also clears LMDB's reader slots of dead processes.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surelay.actors.alarm import AlarmOwner
from surelay.storage.slots import SlotLock, slot_numbers

if TYPE_CHECKING:
    from surelay.recovery import Recovery
    from surelay.storage.store import Store

__all__ = ["EVERY", "Look", "SlotKeeper"]

logger = logging.getLogger("surelay.actors")

EVERY = 1.0
"""Seconds between looks (real time): a dead runtime's messages move within about this."""


@dataclass(frozen=True, slots=True)
class Look:
    """Look at the other slots now (also sent by the alarm); answers {slot: adopted}."""


class SlotKeeper(AlarmOwner):
    def __init__(self, store: Store, recovery: Recovery) -> None:
        super().__init__()
        self._store = store
        self._recovery = recovery

    def on_start(self) -> None:
        self.start_alarm(Look(), time.monotonic, name="surelay-slots", at=time.monotonic() + EVERY)

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, Look):
            return None
        try:
            return self._look()
        finally:
            if self._alarm is not None:
                self._alarm.set(time.monotonic() + EVERY)

    def _look(self) -> dict[int, int]:
        """Adopt what can be adopted; {slot: messages adopted} for each slot tried."""
        store = self._store
        if store.env.closed or not self._recovery.recovered:  # closed, or still opening
            return {}
        adopted = {}
        for slot in slot_numbers(store.path):
            if slot == store.slot:
                continue
            with store.read() as txn:
                holds = [store.outbox.holds, store.scheduled.holds, store.mailboxes.presence_holds]
                if self._recovery.hooked:
                    holds.append(store.hook_marks.holds)
                if not any(held(txn, slot) for held in holds):
                    continue  # nothing to adopt: leave its lock alone for whoever opens
            lock = SlotLock.try_take(store.path, slot)
            if lock is None:
                continue  # its runtime is alive
            try:
                adopted[slot] = self._recovery.adopt(slot)
                # its push connections died with it
                store.write(functools.partial(store.mailboxes.release_slot, slot=slot)).result()
            finally:
                lock.release()
        cleared = store.env.reader_check()
        if cleared:
            logger.info("cleared %d LMDB reader slot(s) left by dead processes", cleared)
        return adopted
