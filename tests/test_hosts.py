"""Real web servers with several worker processes on one data directory, one worker
killed with SIGKILL in the middle of the load: every request answered 2xx ends delivered.

The apps are the recipes of docs/recipes.md, run as written: the FastAPI app under
uvicorn with 2 workers (`asend` per request), the Flask app under gunicorn with 3
workers (`send` per request). The receiver is a real HTTP server that answers slowly, so
messages are in flight and in the outbox when the worker dies.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from surelay.storage.slots import holders

from .helpers import free_port, listening
from .test_recipes import program, wait_for
from .transports.http_server import HttpServer, Reply


class Load:
    """Client threads posting order events until stopped; keeps the bodies answered 2xx."""

    def __init__(self, port: int, clients: int = 6) -> None:
        self.port = port
        self.acknowledged: list[bytes] = []
        self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def _run(self, client: int) -> None:
        connection: http.client.HTTPConnection | None = None
        n = 0
        while not self._stop.is_set():
            order = f"o{client}-{n % 5}"
            body = json.dumps({"client": client, "n": n, "order": order}).encode()
            n += 1
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                connection.request("POST", f"/orders/{order}/events", body=body)
                response = connection.getresponse()
                response.read()
                ok = 200 <= response.status < 300
            except (OSError, http.client.HTTPException):
                ok = False
                if connection is not None:
                    connection.close()
                connection = None
            with self._lock:
                if ok:
                    self.acknowledged.append(body)
                else:
                    self.failed += 1


def serve_and_kill_one_worker(
    tmp_path: Path, command: Callable[[int], list[str]], workers: int, receiver: HttpServer
) -> tuple[list[bytes], str]:
    """Run the server, load it, SIGKILL one worker mid-load, let the load go on, stop
    the server with SIGTERM; returns the bodies answered 2xx and the server's output."""
    data = tmp_path / "data"
    port = free_port()
    env = {
        **os.environ,
        "HOOK_URL": receiver.url + "/hook",
        "SURELAY_PATH": str(data),
        "PYTHONPATH": str(tmp_path),
    }
    server = subprocess.Popen(
        command(port),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: listening(port) or server.poll() is not None, 30)
        assert server.poll() is None, server.stdout.read() if server.stdout else ""
        # every worker has opened its runtime: one slot each, all on one directory
        wait_for(lambda: len(holders(data)) == workers, 30)
        with Load(port) as load:
            wait_for(lambda: load.count() >= 150, 60)
            victim = sorted(holders(data).values())[0]
            os.kill(victim, signal.SIGKILL)
            killed_at = load.count()
            wait_for(lambda: load.count() >= killed_at + 150, 60)
        acknowledged = list(load.acknowledged)
        wait_until_received(receiver, acknowledged)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            output, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate(timeout=10)
    return acknowledged, output


def wait_until_received(receiver: HttpServer, acknowledged: list[bytes]) -> None:
    wanted = set(acknowledged)

    def all_there() -> bool:
        return wanted <= {request.body for request in list(receiver.requests)}

    wait_for(all_there, 90)


def slow_receiver() -> HttpServer:
    """Answers each request after 300 ms: slower than the load comes in, so when the
    worker dies it has calls in flight and messages waiting in its outbox."""
    return HttpServer(default=Reply(200, delay=0.3))


def check(acknowledged: list[bytes], receiver: HttpServer, output: str) -> None:
    assert len(acknowledged) >= 300, output
    received = [request.body for request in receiver.requests]
    missing = set(acknowledged) - set(received)
    assert not missing, f"{len(missing)} acknowledged requests never delivered\n{output}"


def test_uvicorn_with_two_workers_loses_nothing_when_one_is_killed(tmp_path: Path) -> None:
    program(tmp_path, "app.py")

    def command(port: int) -> list[str]:
        uvicorn = [sys.executable, "-m", "uvicorn", "app:app", "--workers", "2"]
        return [*uvicorn, "--host", "127.0.0.1", "--port", str(port)]

    with slow_receiver() as receiver:
        acknowledged, output = serve_and_kill_one_worker(tmp_path, command, 2, receiver)
        check(acknowledged, receiver, output)


def test_gunicorn_with_three_workers_loses_nothing_when_one_is_killed(tmp_path: Path) -> None:
    program(tmp_path, "orders.py")
    program(tmp_path, "gunicorn.conf.py")

    def command(port: int) -> list[str]:
        gunicorn = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "orders:app"]
        return [*gunicorn, "--bind", f"127.0.0.1:{port}"]

    with slow_receiver() as receiver:
        acknowledged, output = serve_and_kill_one_worker(tmp_path, command, 3, receiver)
        check(acknowledged, receiver, output)
