"""Every recipe of docs/recipes.md runs as written: a real uvicorn serving the FastAPI
app, a real worker process stopped with SIGTERM, both forwarding to a real HTTP
receiver."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .helpers import free_port, listening
from .transports.http_server import HttpServer

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"
PROGRAMS = dict(
    re.findall(r"```python\n# ([\w./]+\.py)[^\n]*\n(.*?)```", RECIPES.read_text(), re.S)
)
SCRIPTS = dict(re.findall(r"```sh\n# ([\w.]+\.sh)[^\n]*\n(.*?)```", RECIPES.read_text(), re.S))


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        threading.Event().wait(0.02)


def program(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PROGRAMS[name])
    return path


def start_uvicorn(cwd: Path, app: str, port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    """A real uvicorn serving `app` (module:attribute in `cwd`), once it listens."""
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for(lambda: listening(port) or server.poll() is not None)
    assert server.poll() is None, server.stdout.read() if server.stdout else ""
    return server


def test_the_recipes_are_all_tested() -> None:
    assert sorted(PROGRAMS) == [
        "app.py",
        "chat.py",
        "gunicorn.conf.py",
        "orders.py",
        "orders/migrations/0001_initial.py",  # the SQL outbox recipes: tests/sql/test_recipes.py
        "orders/models.py",
        "orders/outbox.py",
        "place_orders.py",
        "settings.py",
        "shop.py",
        "worker.py",
        "writer.py",
    ]
    assert sorted(SCRIPTS) == ["relay.sh"]


def test_fastapi_recipe_under_uvicorn(tmp_path: Path) -> None:
    program(tmp_path, "app.py")
    port = free_port()
    with HttpServer() as receiver:
        env = {
            **os.environ,
            "HOOK_URL": receiver.url + "/hook",
            "SURELAY_PATH": str(tmp_path / "data"),
        }
        server = start_uvicorn(tmp_path, "app:app", port, env)
        try:
            sent = []
            for i in range(20):
                order = f"o{i % 4}"
                body = json.dumps({"order": order, "n": i}).encode()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("POST", f"/orders/{order}/events", body=body)
                response = connection.getresponse()
                assert response.status == 200 and b"accepted" in response.read()
                connection.close()
                sent.append(body)
            wait_for(lambda: len(receiver.requests) >= 20)
        finally:
            server.send_signal(signal.SIGTERM)  # uvicorn shuts down: the lifespan closes
            output, _ = server.communicate(timeout=20)
    # uvicorn shuts down gracefully, then (in recent versions) re-raises the signal
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    got = [request.body for request in receiver.requests]
    assert sorted(got) == sorted(sent)
    for order in ("o0", "o1", "o2", "o3"):  # one order's events arrive in order
        mine = [b for b in got if json.loads(b)["order"] == order]
        assert mine == [b for b in sent if json.loads(b)["order"] == order]


def test_chat_recipe_pushes_to_a_device_under_uvicorn(tmp_path: Path) -> None:
    import asyncio  # noqa: PLC0415

    from surelay.push.client import PushClient  # noqa: PLC0415

    program(tmp_path, "chat.py")
    port = free_port()
    env = {**os.environ, "PUSH_SECRET": "s" * 32, "SURELAY_PATH": str(tmp_path / "data")}
    server = start_uvicorn(tmp_path, "chat:app", port, env)

    def call(method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        answer = (response.status, response.read())
        connection.close()
        return answer

    try:
        status, page = call("GET", "/")
        assert status == 200 and b"/push/client.js" in page
        assert call("GET", "/push/client.js")[0] == 200
        token = json.loads(call("GET", "/token?user=bob")[1])["token"]
        first = json.loads(
            call("POST", "/messages/bob", b"alice: hi", **{"Idempotency-Key": "k1"})[1]
        )
        again = json.loads(
            call("POST", "/messages/bob", b"alice: hi", **{"Idempotency-Key": "k1"})[1]
        )
        assert (first["seq"], again["duplicate"], again["msg_id"]) == (1, True, first["msg_id"])

        async def phone() -> list[bytes]:
            url = f"ws://127.0.0.1:{port}/push/ws"
            async with PushClient(url, token, "phone") as client:
                async for message in client:
                    return [message.data]  # handled: acked as the block ends
            return []

        assert asyncio.run(phone()) == [b"alice: hi"]
        wait_for(
            lambda: (
                json.loads(call("GET", f"/messages/{first['msg_id']}/status")[1])["state"]
                == "delivered"
            )
        )
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=20)
    assert "Application shutdown complete" in output


def test_worker_recipe_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    worker_py = program(tmp_path, "worker.py")
    with HttpServer() as receiver:
        env = {
            **os.environ,
            "HOOK_URL": receiver.url + "/hook",
            "SURELAY_PATH": str(tmp_path / "data"),
        }
        worker = subprocess.Popen(
            [sys.executable, str(worker_py)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert worker.stdin is not None and worker.stdout is not None
        for i in range(10):
            worker.stdin.write(json.dumps({"id": i, "account": f"a{i % 3}"}) + "\n")
            worker.stdin.flush()
            assert worker.stdout.readline() == f"accepted {i}\n"
        wait_for(lambda: len(receiver.requests) >= 10)
        worker.send_signal(signal.SIGTERM)  # stdin stays open: the worker is mid-read
        _, errors = worker.communicate(timeout=15)
    assert worker.returncode == 0, errors
    assert sorted(json.loads(r.body)["id"] for r in receiver.requests) == list(range(10))
