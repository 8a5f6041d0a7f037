"""`surelay dlq` and `surelay stats` as an operator runs them: a real subprocess on a data
directory written by a runtime in this (another) process."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from surelay import Envelope, Outcome, PermanentError, Priority, RetryPolicy, Runtime
from surelay.storage.keys import new_id
from surelay.storage.records import DeadLetter
from surelay.storage.store import Store
from tests.helpers import Recorder, open_runtime


def surelay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command as an operator piping it runs it (no terminal, no COLUMNS unless `env`
    sets it)."""
    command = [sys.executable, "-m", "surelay.cli", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | (env or {})
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=env)


def surelay_json(*args: str) -> Any:
    done = surelay(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        threading.Event().wait(0.01)


class Switch:
    """A transport that rejects (permanently) until switched on."""

    def __init__(self) -> None:
        self.on = False
        self.recorder = Recorder(self._behave)

    def _behave(self, envelope: Envelope) -> None:
        if not self.on:
            raise PermanentError(f"HTTP 422 for {envelope.payload.decode()}")


def fill(rt: Runtime) -> None:
    """Six dead letters: keys a (x3), b (x2), c; transports sms and mail; in this order
    (each sent once the one before failed: different keys fail in any order)."""
    sends = [("sms", "a"), ("sms", "b"), ("mail", "a"), ("sms", "a"), ("mail", "c"), ("sms", "b")]
    for i, (transport, key) in enumerate(sends):
        receipt = rt.send(transport, f"{key}-{i}".encode(), key=key)
        assert receipt.wait(10) is Outcome.DEAD_LETTERED


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Path, Runtime, Switch]]:
    """A running runtime with six dead letters."""
    switch = Switch()
    transports = {"sms": switch.recorder, "mail": switch.recorder}
    path = tmp_path / "data"
    with open_runtime(path, transports, retry=RetryPolicy(max_attempts=1)) as rt:  # type: ignore[arg-type]
        fill(rt)
        yield path, rt, switch


def test_list_and_get_for_scripts_and_people(live: tuple[Path, Runtime, Switch]) -> None:
    path, rt, _ = live
    listed = surelay_json("dlq", "list", "--path", str(path))
    assert [d["payload_text"] for d in listed] == [f"{k}-{i}" for i, k in enumerate("abaacb")]
    assert [d["id"] for d in listed] == [d.id for d in rt.dead_letters.list()]
    first = listed[0]
    assert (first["reason_class"], first["transport"], first["status"]) == (
        "permanent",
        "sms",
        "dead",
    )
    assert first["reason"] == "PermanentError: HTTP 422 for a-0"
    assert surelay_json("dlq", "get", "--path", str(path), first["id"]) == first

    only_a = surelay_json("dlq", "list", "--path", str(path), "--key", "a", "--transport", "sms")
    assert [d["payload_text"] for d in only_a] == ["a-0", "a-3"]
    page = surelay_json("dlq", "list", "--path", str(path), "--limit", "4")
    rest = surelay_json("dlq", "list", "--path", str(path), "--after", page[-1]["id"])
    assert [d["id"] for d in page + rest] == [d["id"] for d in listed]

    table = surelay("dlq", "list", "--path", str(path), "--reason-class", "permanent")
    assert table.returncode == 0
    for text in ("reason", "transport", "attempts", "age", "HTTP 422 for c-4", first["id"]):
        assert text in table.stdout, table.stdout
    shown = surelay("dlq", "get", "--path", str(path), first["id"])
    assert "HTTP 422 for a-0" in shown.stdout and "replay_count" in shown.stdout

    missing = surelay("dlq", "get", "--path", str(path), "01NOSUCHID")
    assert missing.returncode == 1
    assert "no dead letter '01NOSUCHID'" in missing.stderr


def test_a_replay_request_is_carried_out_by_the_running_runtime(
    live: tuple[Path, Runtime, Switch],
) -> None:
    path, rt, switch = live
    switch.on = True
    canary = surelay_json("dlq", "replay", "--path", str(path), "--all", "--limit", "1", "--wait")
    assert (canary["requested"], canary["replayed"], canary["done"]) == (1, 1, True)
    assert [e.payload for e in switch.recorder.delivered] == [b"a-0"]

    rest = surelay("dlq", "replay", "--path", str(path), "--key", "a", "--wait", "--rate", "50")
    assert rest.returncode == 0, rest.stderr
    assert "replayed" in rest.stdout
    assert switch.recorder.payloads("a") == [b"a-0", b"a-2", b"a-3"]  # the canary only once
    assert rt.stats().replayed == 3

    again = surelay_json("dlq", "replay", "--path", str(path), "--all", "--wait")
    assert (again["requested"], again["replayed"]) == (3, 3)  # the dead ones left: b, c, b
    assert len(switch.recorder.delivered) == 6


def test_archived_records_are_refused_and_purged(live: tuple[Path, Runtime, Switch]) -> None:
    path, rt, switch = live
    first, second = (d.id for d in rt.dead_letters.list(limit=2))
    assert surelay_json("dlq", "archive", "--path", str(path), first) == {"archived": 1}
    switch.on = True
    refused = surelay("dlq", "replay", "--path", str(path), first, second, "--wait", "--json")
    assert refused.returncode == 1  # not everything asked for was replayed
    report = json.loads(refused.stdout)
    assert (report["refused"], report["replayed"]) == (1, 1)
    assert "1 refused" in refused.stderr
    assert surelay_json("dlq", "purge", "--path", str(path), "--older-than", "1d") == {"purged": 0}
    assert surelay_json("dlq", "purge", "--path", str(path)) == {"purged": 1}
    assert rt.dead_letters.get(first) is None
    assert surelay_json("dlq", "archive", "--path", str(path), "--transport", "mail") == {
        "archived": 2
    }


def test_a_request_waits_for_the_next_runtime(tmp_path: Path) -> None:
    switch = Switch()
    path = tmp_path / "data"
    transports = {"sms": switch.recorder, "mail": switch.recorder}
    with open_runtime(path, transports, retry=RetryPolicy(max_attempts=1)) as rt:  # type: ignore[arg-type]
        fill(rt)
    asked = surelay("dlq", "replay", "--path", str(path), "--reason-class", "permanent")
    assert asked.returncode == 0, asked.stderr
    assert "NO runtime runs" in asked.stderr and "until one opens there" in asked.stderr
    stats = surelay_json("stats", "--path", str(path))
    assert stats["runtime"] == {"running": False, "pid": None}
    assert stats["replay_requests"]["pending"] == 1
    assert stats["last_status"]["dead_lettered"] == 6  # published when that runtime closed
    switch.on = True
    with open_runtime(path, transports, retry=RetryPolicy(max_attempts=1)) as rt:  # type: ignore[arg-type]
        wait_until(lambda: rt.stats().replayed == 6)
        stats = surelay_json("stats", "--path", str(path))
    assert stats["runtime"]["running"] is True
    assert stats["dead_letters"]["replayed"] == 6
    assert stats["outbox_pending"] == 0


def test_stats_for_people(live: tuple[Path, Runtime, Switch]) -> None:
    path, _, _ = live
    shown = surelay("stats", "--path", str(path))
    assert shown.returncode == 0, shown.stderr
    for text in ("slot 0 (pid", "dead 6", "permanent 6", "outbox pending"):
        assert text in shown.stdout


def test_bad_usage_and_bad_directories(tmp_path: Path) -> None:
    missing = surelay("dlq", "list", "--path", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a data directory")
    alien = surelay("stats", "--path", str(foreign))
    assert alien.returncode == 2 and "not a surelay data directory" in alien.stderr
    assert not (foreign / "data.mdb").exists()  # nothing created there
    nothing = surelay("dlq", "replay", "--path", str(foreign))
    assert nothing.returncode == 2 and "ids, a filter, or --all" in nothing.stderr
    assert surelay("dlq", "purge", "--older-than", "soon").returncode == 2
    assert surelay("dlq", "list", "--status", "lost").returncode == 2


def test_the_version_is_shown() -> None:
    shown = surelay("--version")
    assert shown.returncode == 0
    assert shown.stdout.startswith("surelay ") and shown.stdout.strip() != "surelay"


def test_replaying_an_unknown_id_records_nothing_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "data"
    with open_runtime(path, {"sms": Recorder()}):
        pass
    done = surelay("dlq", "replay", "--path", str(path), "garbage")
    assert done.returncode == 1
    assert "no dead letter 'garbage'" in done.stderr and "nothing was recorded" in done.stderr
    assert surelay_json("stats", "--path", str(path))["replay_requests"]["pending"] == 0


def test_waiting_with_no_runtime_gives_up_and_says_why(tmp_path: Path) -> None:
    switch = Switch()
    path = tmp_path / "data"
    with open_runtime(
        path, {"sms": switch.recorder, "mail": switch.recorder}, retry=RetryPolicy(max_attempts=1)
    ) as rt:  # type: ignore[arg-type]
        fill(rt)
        first = rt.dead_letters.list(limit=1)[0].id
    assert "[default: 60s]" in surelay("dlq", "replay", "--help").stdout
    started = time.monotonic()
    waited = surelay("dlq", "replay", "--path", str(path), first, "--wait", "--timeout", "1s")
    assert time.monotonic() - started < 30
    assert waited.returncode == 1
    assert "NO runtime runs" in waited.stderr
    assert "gave up waiting after 1s" in waited.stderr and "no runtime runs there" in waited.stderr


def test_what_was_not_replayed_is_named_with_why(live: tuple[Path, Runtime, Switch]) -> None:
    path, rt, _ = live
    first, second = (d.id for d in rt.dead_letters.list(limit=2))
    surelay_json("dlq", "archive", "--path", str(path), first)
    done = surelay("dlq", "replay", "--path", str(path), first, second, "--wait")  # still failing
    assert done.returncode == 1
    assert f"{first}: refused, it is archived" in done.stderr
    assert f"{second}: failed again, replay attempt failed: PermanentError: HTTP 422" in done.stderr


def test_a_narrow_terminal_keeps_every_column(live: tuple[Path, Runtime, Switch]) -> None:
    path, _, _ = live
    env = {**os.environ, "COLUMNS": "80"}
    shown = subprocess.run(
        [sys.executable, "-m", "surelay.cli", "dlq", "list", "--path", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert shown.returncode == 0, shown.stderr
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80
    assert "ago" in shown.stdout  # the age
    assert "PermanentError: HTTP 422 for a-0" in shown.stdout  # the whole error


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_a_directory_on_a_read_only_filesystem_can_be_read(
    live: tuple[Path, Runtime, Switch],
) -> None:
    path, rt, _ = live
    rt.close()
    mount = path.parent / "read-only"
    mount.mkdir()
    cli = f"{sys.executable} -m surelay.cli"
    script = (
        f"mount --bind {path} {mount} && mount -o remount,bind,ro {mount} && "
        f"{cli} dlq list --path {mount} --json && {cli} stats --path {mount} --json >/dev/null "
        f"&& {cli} dlq archive --all --path {mount}"
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parent.parent.parent,
    )
    assert "Read-only" not in done.stderr.split("Error:")[0], done.stderr
    listed = json.loads(done.stdout)
    assert len(listed) == 6  # read, although nothing can be written there
    assert done.returncode == 1  # the archive: refused, with why
    assert "read-only filesystem: it can be read, not changed" in done.stderr


# -- what a producer or a downstream wrote never drives the operator's terminal -------------

HOSTILE = "\x1b]0;pwned\x07\x1b[2J[bold red]boom[/]\u202eevil\x9b31m"
"""Retitle the terminal, clear it, rich markup, a right-to-left override, a C1 CSI."""
RAW = ("\x1b", "\x07", "\x9b", "\u202e")


def raw_control(output: str) -> list[str]:
    return [c for c in RAW if c in output]


def hostile_record(now: float) -> DeadLetter:
    return DeadLetter(
        id=new_id(now),
        message_id=f"m-{HOSTILE}",
        key=f"k-{HOSTILE}",
        transport=f"sms-{HOSTILE}",
        payload=f"body {HOSTILE}".encode(),
        headers={f"X-Note-{HOSTILE}": f"v-{HOSTILE}"},
        idempotency_key=f"i-{HOSTILE}",
        priority=Priority.NORMAL,
        trace_id=None,
        reason_class="permanent",
        reason=f"PermanentError: HTTP 400: {HOSTILE}",
        error_type=f"Error{HOSTILE}",
        attempts=1,
        first_attempt_at=now,
        failed_at=now,
    )


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, str]:
    """A directory holding one dead letter whose every producer- or downstream-given field
    carries terminal escapes; returns it and the record's id."""
    path = tmp_path / "data"
    record = hostile_record(time.time())
    with Store.open(path) as store:
        store.write(lambda txn: store.dead_letters.insert(txn, record)).result()
    return path, record.id


@pytest.mark.parametrize("columns", [None, "80"], ids=["wide", "narrow"])
def test_list_and_get_escape_what_producers_and_downstreams_wrote(
    hostile: tuple[Path, str], columns: str | None
) -> None:
    path, record_id = hostile
    extra = {"COLUMNS": columns} if columns else {}
    for command in (("dlq", "list"), ("dlq", "get", record_id), ("stats",)):
        done = surelay(*command, "--path", str(path), env=extra)
        assert done.returncode == 0, done.stderr
        assert raw_control(done.stdout + done.stderr) == [], (command, done.stdout)
    if columns:
        return  # folded cells: the wide run reads every field whole
    shown = surelay("dlq", "get", "--path", str(path), record_id).stdout
    escaped = "\\x1b]0;pwned\\x07\\x1b[2J[bold red]boom[/]\\u202eevil\\x9b31m"
    for field in ("k-", "sms-", "body ", "X-Note-", "HTTP 400: ", "Error"):
        assert field + escaped in shown, field  # markup printed literally, escapes readable


def test_json_output_escapes_too_and_keeps_the_strings(hostile: tuple[Path, str]) -> None:
    path, record_id = hostile
    for command in (("dlq", "list"), ("dlq", "get", record_id)):
        done = surelay(*command, "--path", str(path), "--json")
        assert done.returncode == 0, done.stderr
        assert done.stdout.isascii()  # every control or bidi character as \uXXXX
        listed = json.loads(done.stdout)
        record = listed[0] if isinstance(listed, list) else listed
        assert record["reason"] == f"PermanentError: HTTP 400: {HOSTILE}"  # the same text
        assert record["headers"] == {f"X-Note-{HOSTILE}": f"v-{HOSTILE}"}


def test_a_failed_replay_names_the_downstreams_words_escaped(tmp_path: Path) -> None:
    def downstream(envelope: Envelope) -> None:
        raise PermanentError(f"HTTP 500: {HOSTILE}")  # a server writes the reason

    path = tmp_path / "data"
    with open_runtime(path, {"sms": downstream}, retry=RetryPolicy(max_attempts=1)) as rt:
        assert rt.send("sms", b"x").wait(10) is Outcome.DEAD_LETTERED
        (record,) = rt.dead_letters.list()
        wait_until(lambda: published(rt))  # it says which transports it offers
        done = surelay("dlq", "replay", "--path", str(path), record.id, "--wait")
    assert done.returncode == 1
    assert "failed again" in done.stderr and "HTTP 500: \\x1b]0;pwned\\x07" in done.stderr
    assert raw_control(done.stdout + done.stderr) == []


def published(rt: Runtime) -> bool:
    store = rt._store
    with store.read() as txn:
        return store.status.get(txn) is not None


def test_get_shows_the_payload_as_text_before_its_base64(
    live: tuple[Path, Runtime, Switch],
) -> None:
    path, rt, _ = live
    first = rt.dead_letters.list(limit=1)[0]
    shown = surelay("dlq", "get", "--path", str(path), first.id).stdout
    text_at, base64_at = shown.index("payload_text"), shown.index("payload_base64")
    assert text_at < base64_at
    assert "a-0" in shown[text_at:base64_at]


# -- replay and purge as the help and the runbook say -----------------------------------------


def test_limit_alone_replays_the_oldest_dead_records(live: tuple[Path, Runtime, Switch]) -> None:
    path, rt, switch = live
    assert "canary first: --limit 1" in surelay("dlq", "replay", "--help").stdout
    switch.on = True
    canary = surelay_json("dlq", "replay", "--path", str(path), "--limit", "1", "--wait")
    assert (canary["requested"], canary["replayed"]) == (1, 1)
    two = surelay_json("dlq", "replay", "--path", str(path), "--limit", "2", "--wait")
    assert (two["requested"], two["replayed"]) == (2, 2)
    delivered = [e.payload for e in switch.recorder.delivered]
    assert delivered[0] == b"a-0" and sorted(delivered[1:]) == [b"a-2", b"b-1"]  # two keys
    ids = [d.id for d in rt.dead_letters.list()]  # a-3, c-4, b-5 left
    chosen = surelay_json("dlq", "replay", "--path", str(path), *ids[1:], "--limit", "1", "--wait")
    assert (chosen["requested"], chosen["replayed"]) == (1, 1)  # with ids: the first of them
    assert switch.recorder.delivered[-1].payload == b"c-4"


def test_purge_shows_first_and_asks_before_deleting_dead_records(
    live: tuple[Path, Runtime, Switch],
) -> None:
    path, rt, _ = live
    dry = surelay("dlq", "purge", "--path", str(path), "--status", "dead", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would purge 6 dead dead letter(s)" in dry.stdout and "nothing was deleted" in dry.stdout
    assert "HTTP 422 for a-0" in dry.stdout  # what would go, by id, key and reason
    as_json = surelay_json("dlq", "purge", "--path", str(path), "--status", "dead", "--dry-run")
    assert as_json["would_purge"] == 6 and len(as_json["sample"]) == 6

    no_terminal = surelay("dlq", "purge", "--path", str(path), "--status", "dead")
    assert no_terminal.returncode == 2
    assert "never delivered" in no_terminal.stderr and "--yes" in no_terminal.stderr

    declined = on_a_terminal("dlq", "purge", "--path", str(path), "--status", "dead", answer="n")
    assert "this deletes 6 dead dead letter(s) for good" in declined and "purge them?" in declined
    assert len(rt.dead_letters.list()) == 6  # nothing went
    accepted = on_a_terminal("dlq", "purge", "--path", str(path), "--status", "dead", answer="y")
    assert "purged 6 dead dead letter(s)" in accepted
    assert rt.dead_letters.list() == []


def test_purge_with_yes_deletes_dead_records_in_a_script(
    live: tuple[Path, Runtime, Switch],
) -> None:
    path, rt, _ = live
    young = surelay_json(
        "dlq", "purge", "--path", str(path), "--status", "dead", "--older-than", "1d"
    )
    assert young == {"purged": 0}  # nothing to delete: nothing to ask
    done = surelay_json("dlq", "purge", "--path", str(path), "--status", "dead", "--yes")
    assert done == {"purged": 6}
    assert rt.dead_letters.list() == []


def on_a_terminal(*args: str, answer: str) -> str:
    """Run the command with a terminal for its stdin (the prompt's), answering `answer`;
    returns everything it wrote."""
    controller, terminal = pty.openpty()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "surelay.cli", *args],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        os.write(controller, f"{answer}\n".encode())
        out, _ = child.communicate(timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    return out
