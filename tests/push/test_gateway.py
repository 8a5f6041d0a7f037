"""`rt.push`: messages durable in a recipient's mailbox with their sequence numbers, in
acceptance order across processes; the checks of the write; status; tokens."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from surelay import InvalidMessage, Rate, Runtime, RuntimeConfig
from surelay.push import InvalidToken, MailboxFull, Overloaded, PushConfig
from surelay.push.tokens import verify

ROOT = Path(__file__).resolve().parent.parent.parent
SECRET = "push-test-secret-0123456789"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_send_returns_the_seq_and_status_follows(tmp_path: Path) -> None:
    with Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET)) as rt:
        first = rt.push.send("user-42", b'{"text": "hi"}', headers={"kind": "chat"})
        second = rt.push.send("user-42", b"again")
        other = rt.push.send("user-7", b"elsewhere")
        assert (first.seq, second.seq, other.seq) == (1, 2, 1)
        assert (first.status, first.duplicate) == ("queued", False)
        status = rt.push.status(first.msg_id)
        assert status is not None
        assert (status.recipient, status.seq, status.state) == ("user-42", 1, "queued")
        assert status.expires_at == pytest.approx(status.updated_at + 7 * 86400)
        assert rt.push.status("unknown") is None
    with Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET)) as rt:  # restart
        assert rt.push.send("user-42", b"later").seq == 3
        kept = rt.push.status(second.msg_id)
        assert kept is not None
        assert kept.state == "queued"


def test_an_idempotency_key_answers_the_first_message(tmp_path: Path) -> None:
    with Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET)) as rt:
        first = rt.push.send("u", b"a", idempotency_key="msg-9001")
        again = rt.push.send("u", b"b", idempotency_key="msg-9001")
        assert (again.msg_id, again.seq, again.duplicate, again.status) == (
            first.msg_id,
            1,
            True,
            "queued",
        )


def test_max_pending_and_the_rate_refuse_only_the_send_past_them(tmp_path: Path) -> None:
    clock = Clock()
    push = PushConfig(SECRET, max_pending=3, rate_per_recipient=Rate(2, 60.0, burst=2))
    config = RuntimeConfig(clock=clock)
    with Runtime.open(tmp_path, transports={}, config=config, push=push) as rt:
        rt.push.send("u", b"1")
        rt.push.send("u", b"2")
        with pytest.raises(Overloaded, match="rate_per_recipient") as raised:
            rt.push.send("u", b"3")
        assert raised.value.retry_after == pytest.approx(30.0)
        clock.now += 30
        rt.push.send("u", b"3")
        clock.now += 30
        with pytest.raises(MailboxFull, match="holds 3 undelivered"):
            rt.push.send("u", b"4")
        assert rt.push.send("v", b"1").seq == 1  # another recipient is not held


def test_asend_is_the_asyncio_twin(tmp_path: Path) -> None:
    with Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET)) as rt:

        async def main() -> list[int]:
            receipts = await asyncio.gather(*(rt.push.asend("u", b"%d" % i) for i in range(20)))
            return sorted(r.seq for r in receipts)

        assert asyncio.run(main()) == list(range(1, 21))


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("", b"x"), {}, "recipient must be a non-empty str"),
        (("u\x1b[2J", b"x"), {}, "control characters"),
        (("u", "text"), {}, "payload must be bytes"),
        (("u", b"x" * (256 * 1024 + 1)), {}, "over max_payload_bytes"),
        (("u", b"x"), {"idempotency_key": ""}, "idempotency_key must be"),
        (("u", b"x"), {"headers": {"Content-Length": "5"}}, "framing"),
        (("u", b"x"), {"ttl": 0}, "ttl must be seconds > 0"),
        (("u", b"x"), {"ttl": 8 * 86400}, "<= retention"),
        (("u", b"x"), {"ttl": True}, "ttl must be"),
    ],
)
def test_a_bad_send_is_refused_naming_it(
    tmp_path: Path, args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    with Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET)) as rt:
        with pytest.raises(InvalidMessage, match=message):
            rt.push.send(*args, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(InvalidMessage, match="msg_id must be"):
            rt.push.status("")
        assert rt.push.send("u", b"fine").seq == 1  # nothing was taken before


def test_push_needs_its_config(tmp_path: Path) -> None:
    with (
        Runtime.open(tmp_path, transports={}) as rt,
        pytest.raises(RuntimeError, match="push is not configured"),
    ):
        rt.push  # noqa: B018
    with pytest.raises(TypeError, match="push must be a PushConfig"):
        Runtime.open(tmp_path, transports={}, push={"secret": SECRET})  # type: ignore[arg-type]


def test_issued_tokens_verify_and_expire(tmp_path: Path) -> None:
    clock = Clock()
    config = RuntimeConfig(clock=clock)
    with Runtime.open(tmp_path, transports={}, config=config, push=PushConfig(SECRET)) as rt:
        token = rt.push.issue_token("user-42", device="ios-7f3a", ttl=900)
        grant = verify(SECRET.encode(), token, now=clock.now + 899)
        assert (grant.recipient, grant.device) == ("user-42", "ios-7f3a")
        with pytest.raises(InvalidToken, match="expired"):
            verify(SECRET.encode(), token, now=clock.now + 900)
        with pytest.raises(InvalidToken, match="signature"):
            verify(b"another-secret-0123456789", token, now=clock.now)
        with pytest.raises(ValueError, match="ttl must be"):
            rt.push.issue_token("user-42", ttl=0)


def _hosts(data: Path, count: int, *extra: str) -> dict[str, list[str]]:
    """Three processes sending `count` messages each to "ann" at once; their answers."""
    Runtime.open(data, transports={}).close()  # (made once, not by three at a time)
    start_at = time.time() + 2.0
    hosts = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.push_host",
                str(data),
                "ann",
                str(count),
                name,
                repr(start_at),
                *extra,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for name in ("a", "b", "c")
    }
    answers: dict[str, list[str]] = {}
    try:
        for name, host in hosts.items():
            out, _ = host.communicate(timeout=90)
            assert host.returncode == 0
            answers[name] = out.split()
    finally:
        for host in hosts.values():
            host.kill()
    return answers


def test_max_pending_and_the_rate_are_exact_across_processes(tmp_path: Path) -> None:
    full = _hosts(tmp_path / "full", 40, "50")  # 120 sent at once, room for 50
    taken = [a for answers in full.values() for a in answers if a != "full"]
    assert sorted(int(a) for a in taken) == list(range(1, 51))
    over = _hosts(tmp_path / "over", 40, "100000", "30")  # 30 a minute, a burst of 30
    taken = [a for answers in over.values() for a in answers if a != "over"]
    assert sorted(int(a) for a in taken) == list(range(1, 31))


def test_seq_is_the_acceptance_order_across_processes(tmp_path: Path) -> None:
    """Three processes send to one recipient at once: the sequence numbers are 1..N,
    each taken once, and each process's own messages are in the order it sent them."""
    data = tmp_path / "data"
    seqs = {name: [int(a) for a in answers] for name, answers in _hosts(data, 100).items()}
    every = sorted(s for own in seqs.values() for s in own)
    assert every == list(range(1, 301))
    for own in seqs.values():
        assert own == sorted(own)
    with Runtime.open(data, transports={}, push=PushConfig(SECRET)) as rt:
        with rt._store.read() as txn:  # what each seq holds is what its sender was told
            held = rt.push.mailboxes.after(txn, "ann", 0, limit=1000)
        by_seq = {m.seq: m.payload.decode() for m in held}
        for name, own in seqs.items():
            assert [by_seq[s] for s in own] == [f"{name}-{i}" for i in range(100)]
