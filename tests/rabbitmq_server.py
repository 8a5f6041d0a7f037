"""A real RabbitMQ node for the tests: Debian's `rabbitmq-server`, started with a node
name, ports and data directory of its own, killed or stopped by the test.

`.ci/run` installs the package when missing. Without it the tests that need a broker are
skipped, unless SURELAY_RABBITMQ_TESTS=required (as in CI), where that is a failure. The
node keeps its data (queues, persistent messages) in its directory, so `kill()`
(SIGKILL to the whole node) and `start()` again bring back what it had stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiormq
from pamqp.commands import Basic

from tests.helpers import free_port, listening, wait_until

__all__ = ["RabbitMQServer", "declare", "depth", "drain", "find_server", "publish"]

T = TypeVar("T")

MAX_MESSAGE_SIZE = 262_144
"""The nodes' `max_message_size`: a larger message is refused (the channel closed)."""

_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server")


def find_server() -> str | None:
    """The `rabbitmq-server` script (the package's own, which runs as the caller)."""
    for candidate in _CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("rabbitmq-server")


class RabbitMQServer:
    """One node of its own. `url`; `kill()` (SIGKILL), `stop()`, `start()` again on the
    same ports and data."""

    def __init__(self, *, vm_memory_high_watermark: float | None = None) -> None:
        server = find_server()
        assert server, "RabbitMQ is missing: apt-get install rabbitmq-server"
        self._server = server
        self._ctl = str(Path(server).with_name("rabbitmqctl"))
        self.root = Path(tempfile.mkdtemp(prefix="surelay-rmq-"))
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"surelay{uuid.uuid4().hex[:10]}@localhost"
        (self.root / "home").mkdir()
        (self.root / "enabled_plugins").write_text("[].\n")
        config = [
            "loopback_users = none",
            f"listeners.tcp.1 = 127.0.0.1:{self.port}",
            "log.console = false",
            "log.file.level = warning",
            f"max_message_size = {MAX_MESSAGE_SIZE}",
        ]
        if vm_memory_high_watermark is not None:
            config.append(f"vm_memory_high_watermark.relative = {vm_memory_high_watermark}")
        (self.root / "rabbitmq.conf").write_text("\n".join(config) + "\n")
        self.env = {
            **os.environ,
            "HOME": str(self.root / "home"),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.root / "node.pid"),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self, timeout: float = 90.0) -> RabbitMQServer:
        self.process = subprocess.Popen(
            [self._server],
            env=self.env,
            stdout=open(self.root / "stdout.log", "ab"),  # noqa: SIM115 - the child holds it
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the node's Erlang processes: one group to kill
        )
        wait_until(lambda: listening(self.port) or self.process.poll() is not None, timeout)  # type: ignore[union-attr]
        if self.process.poll() is not None:
            raise RuntimeError(f"rabbitmq-server exited: {self.tail()}")
        return self

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """`rabbitmqctl -n <node> args...`, its output (raises if it fails)."""
        done = subprocess.run(
            [self._ctl, "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def kill(self) -> None:
        """SIGKILL the node (and everything it started), as a crash would."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
        self.process = None
        wait_until(lambda: not listening(self.port), 30)

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        self.process = None

    def tail(self) -> str:
        logs = [self.root / "stdout.log", *sorted((self.root / "log").glob("*.log"))]
        text = "".join(p.read_text(errors="replace")[-2000:] for p in logs if p.exists())
        return text[-4000:]

    def close(self) -> None:
        self.kill()
        # epmd, started by the first node, outlives it by design; it serves every node
        shutil.rmtree(self.root, ignore_errors=True)


# -- what the tests do on the broker, with aiormq ------------------------------------------


def run(coroutine: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coroutine())


async def _channel(url: str) -> tuple[Any, Any]:
    connection = await aiormq.connect(url)
    return connection, await connection.channel()


def declare(
    url: str,
    queue: str,
    *,
    arguments: dict[str, Any] | None = None,
    exchange: str | None = None,
    exchange_type: str = "direct",
    routing_key: str | None = None,
) -> None:
    """A durable queue (and, with `exchange`, a durable exchange it is bound to)."""

    async def go() -> None:
        connection, channel = await _channel(url)
        try:
            await channel.queue_declare(queue, durable=True, arguments=arguments or {})
            if exchange is not None:
                await channel.exchange_declare(exchange, exchange_type=exchange_type, durable=True)
                await channel.queue_bind(queue, exchange, routing_key=routing_key or queue)
        finally:
            await connection.close()

    run(go)


def declare_exchange(url: str, exchange: str, exchange_type: str = "direct") -> None:
    async def go() -> None:
        connection, channel = await _channel(url)
        try:
            await channel.exchange_declare(exchange, exchange_type=exchange_type, durable=True)
        finally:
            await connection.close()

    run(go)


def publish(
    url: str,
    queue: str,
    messages: list[tuple[bytes, dict[str, Any]]],
    *,
    message_ids: list[str | None] | None = None,
    priorities: list[int] | None = None,
) -> None:
    """Publish to `queue` through the default exchange, persistent, confirmed."""

    async def go() -> None:
        connection, channel = await _channel(url)
        try:
            for index, (body, headers) in enumerate(messages):
                properties = Basic.Properties(
                    delivery_mode=2,
                    headers=headers or None,
                    message_id=message_ids[index] if message_ids else None,
                    priority=priorities[index] if priorities else None,
                )
                await channel.basic_publish(body, routing_key=queue, properties=properties)
        finally:
            await connection.close()

    run(go)


def drain(url: str, queue: str) -> list[Any]:
    """Take every message the queue holds now (acknowledged): aiormq's delivered
    messages, in queue order."""

    async def go() -> list[Any]:
        connection, channel = await _channel(url)
        out = []
        try:
            while True:
                message = await channel.basic_get(queue, no_ack=True)
                if message.delivery.__class__.__name__ == "GetEmpty":
                    return out
                out.append(message)
        finally:
            await connection.close()

    return run(go)


def depth(url: str, queue: str) -> int:
    """Messages ready in `queue` (not those delivered and unacknowledged)."""

    async def go() -> int:
        connection, channel = await _channel(url)
        try:
            declared = await channel.queue_declare(queue, passive=True)
            return int(declared.message_count)
        finally:
            await connection.close()

    return run(go)


def delete_queue(url: str, queue: str) -> None:
    async def go() -> None:
        connection, channel = await _channel(url)
        try:
            await channel.queue_delete(queue)
        finally:
            await connection.close()

    run(go)
