"""The running runtime's last published status, for readers in other processes.

Counters, gauges, breaker states and the pressure level live in the runtime's memory;
the runtime publishes a snapshot here (see `surelay.actors.status`) so that
`surelay stats --path DIR` can show them from another process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from surelay.storage.codec import V1, DecodeError
from surelay.storage.environment import Environment, Txn

__all__ = ["RuntimeStatus"]

_KEY = b"runtime_status"


class RuntimeStatus:
    def __init__(self, env: Environment) -> None:
        self._meta = env.db("meta")

    def put(self, txn: Txn, status: Mapping[str, Any]) -> None:
        txn.put(_KEY, msgpack.packb([V1, dict(status)], use_bin_type=True), db=self._meta)

    def get(self, txn: Txn) -> dict[str, Any] | None:
        """The last snapshot, or None if no runtime ever published one."""
        raw = txn.get(_KEY, db=self._meta)
        if raw is None:
            return None
        try:
            version, status = msgpack.unpackb(bytes(raw), raw=False)
        except (ValueError, TypeError, msgpack.UnpackException) as error:
            raise DecodeError(f"runtime status: not a status record ({error})") from error
        if version != V1 or not isinstance(status, dict):
            raise DecodeError(f"runtime status: unknown version {version!r}")
        return status
