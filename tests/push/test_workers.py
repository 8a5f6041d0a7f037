"""Several worker processes on one directory, as uvicorn or gunicorn workers are: a
message accepted in one reaches a device connected to another; a device that connects
to a second worker is closed on the first (4002); a killed worker's presence is
cleared when its slot is adopted."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from surelay import Runtime
from surelay.push import PushConfig
from tests.helpers import listening, wait_until
from tests.push.serving import SECRET, Client, Worker


@contextmanager
def worker(data: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    started = Worker(data)
    started.start()
    try:
        assert started.process is not None
        wait_until(lambda: listening(started.port) or started.process.poll() is not None, 30)  # type: ignore[union-attr]
        assert started.process.poll() is None, "the worker did not start"
        yield started.url, started.process
    finally:
        started.stop()


def test_a_message_accepted_anywhere_reaches_a_device_on_any_worker(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Runtime.open(data, transports={}).close()
    with (
        worker(data) as (first, _),
        worker(data) as (second, _),
        Runtime.open(data, transports={}, push=PushConfig(SECRET)) as rt,
    ):
        token = rt.push.issue_token("ann")

        async def main() -> None:
            phone = await Client.connect(first, token, "phone")
            laptop = await Client.connect(second, token, "laptop")
            sent = [rt.push.send("ann", b"%d" % i) for i in range(20)]  # a third process
            for client in (phone, laptop):
                frames = await client.take(20)
                assert [f["seq"] for f in frames] == list(range(1, 21))
            await phone.ack(20)
            wait_until(lambda: rt.push.status(sent[-1].msg_id).state == "delivered", 5)  # type: ignore[union-attr]
            # the same device on the other worker: the first connection goes (4002)
            again = await Client.connect(second, token, "phone", acked=20)
            assert await phone.closed() == (4002, "the same device connected again")
            rt.push.send("ann", b"later")
            assert (await again.next())["seq"] == 21
            await again.close()
            await laptop.close()

        asyncio.run(main())


def test_a_killed_workers_presence_is_cleared_and_its_devices_served_elsewhere(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with Runtime.open(data, transports={}, push=PushConfig(SECRET)) as rt:
        token = rt.push.issue_token("ann")
        with worker(data) as (doomed, process), worker(data) as (other, _):

            async def connect_then_die() -> None:
                phone = await Client.connect(doomed, token, "phone")
                tablet = await Client.connect(doomed, token, "tablet")
                rt.push.send("ann", b"x")
                assert (await phone.next())["seq"] == 1  # never acked
                assert (await tablet.next())["seq"] == 1
                assert _online(rt) == 2
                process.send_signal(signal.SIGKILL)
                process.wait(10)
                again = await Client.connect(other, token, "phone")
                assert (await again.next())["seq"] == 1  # sent again: it was not acked
                # the dead worker's slot is adopted (by this runtime's keeper): the
                # tablet's row goes with it; the phone's is the new connection's
                wait_until(lambda: _online(rt) == 1, 30)
                await again.ack(1)
                await again.close()

            asyncio.run(connect_then_die())
            wait_until(lambda: _online(rt) == 0, 10)


def _online(rt: Runtime) -> int:
    with rt._store.read() as txn:
        return rt.push.mailboxes.online(txn)
