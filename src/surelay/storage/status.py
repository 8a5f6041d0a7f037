"""The running runtimes' last published statuses, for readers in other processes.

Counters, gauges, breaker states and the pressure level live in each runtime's memory;
a runtime publishes a snapshot here under its slot (see `surelay.actors.status`) so that
`surelay stats --path DIR` can show them from another process. The snapshot names the
transports the runtime offers, so that a replay request for a transport no live runtime
offers can be refused (`surelay.actors.replay`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from surelay.storage.codec import V1, DecodeError
from surelay.storage.environment import Environment, Txn, keys_with_prefix
from surelay.storage.keys import from_u16, u16

__all__ = ["RuntimeStatus"]

_KEY = b"runtime_status"
"""Slot 0's key (as the single-owner layout had it); slot n's is this, "/", u16(n)."""


def _key(slot: int) -> bytes:
    return _KEY if slot == 0 else _KEY + b"/" + u16(slot)


class RuntimeStatus:
    def __init__(self, env: Environment, slot: int = 0) -> None:
        self._meta = env.db("meta")
        self._key = _key(slot)

    def put(self, txn: Txn, status: Mapping[str, Any]) -> None:
        """Publish this slot's snapshot."""
        txn.put(self._key, msgpack.packb([V1, dict(status)], use_bin_type=True), db=self._meta)

    def get(self, txn: Txn, slot: int | None = None) -> dict[str, Any] | None:
        """The last snapshot of `slot` (default: this one), or None if no runtime ever
        published one there. `DecodeError` if it is not one."""
        return self._decode(txn.get(self._key if slot is None else _key(slot), db=self._meta))

    def all(self, txn: Txn) -> dict[int, dict[str, Any]]:
        """The last snapshot of every slot that has one (a snapshot that does not decode
        shows as `{"error": why}`)."""
        out = {}
        for key in keys_with_prefix(txn, self._meta, _KEY):
            slot = 0 if key == _KEY else from_u16(key, len(_KEY) + 1)
            try:
                status = self._decode(txn.get(key, db=self._meta))
            except DecodeError as error:
                status = {"error": str(error)}
            if status is not None:
                out[slot] = status
        return out

    def offers(self, txn: Txn, live: Mapping[int, int]) -> list[frozenset[str]]:
        """What each live runtime publishes that it offers. `live`: the held slots and
        their holders' pids (`surelay.storage.slots.holders`); a status left by an
        earlier holder of a slot (another pid) does not count."""
        out: list[frozenset[str]] = []
        for slot, pid in live.items():
            try:
                status = self.get(txn, slot)
            except DecodeError:
                continue
            if status is None or (pid and status.get("pid") != pid):
                continue
            names = status.get("transports")
            if isinstance(names, list):
                out.append(frozenset(name for name in names if isinstance(name, str)))
        return out

    def _decode(self, raw: Any) -> dict[str, Any] | None:
        if raw is None:
            return None
        try:
            version, status = msgpack.unpackb(bytes(raw), raw=False)
        except (ValueError, TypeError, msgpack.UnpackException) as error:
            raise DecodeError(f"runtime status: not a status record ({error})") from error
        if version != V1 or not isinstance(status, dict):
            raise DecodeError(f"runtime status: unknown version {version!r}")
        return status
