"""Answering the callers of a written group: coroutines a few per loop turn, so a write
that answers hundreds never holds their loop for long; every caller answered once."""

from __future__ import annotations

import asyncio
from typing import Any

from surelay.ingress.answers import WAKE_MAX, settle_on_loop
from surelay.receipts import Tracker


def test_a_large_group_wakes_its_coroutines_a_few_per_loop_turn() -> None:
    async def main() -> tuple[list[int], list[Any]]:
        loop = asyncio.get_running_loop()
        answers = [loop.create_future() for _ in range(3 * WAKE_MAX + 5)]
        receipts = Tracker().add([f"m{i}" for i in range(len(answers))])
        answers[1].cancel()  # a caller that stopped waiting is left alone
        done_by_turn: list[int] = []
        settle_on_loop(loop, answers, receipts, None)
        while len(done_by_turn) < 6:
            done_by_turn.append(sum(1 for a in answers if a.done()))
            await asyncio.sleep(0)  # one turn of the loop
        return done_by_turn, [a.result() for a in answers if not a.cancelled()]

    done_by_turn, results = asyncio.run(main())
    assert done_by_turn[0] == WAKE_MAX  # the first chunk at once, the next ones later
    assert done_by_turn[1] == 2 * WAKE_MAX
    assert done_by_turn[-1] == 3 * WAKE_MAX + 5
    assert [r.message_id for r in results] == [f"m{i}" for i in range(3 * WAKE_MAX + 5) if i != 1]


def test_an_error_answers_every_caller_with_it() -> None:
    async def main() -> list[BaseException | None]:
        loop = asyncio.get_running_loop()
        answers = [loop.create_future() for _ in range(WAKE_MAX + 1)]
        error = OSError("disk")
        settle_on_loop(loop, answers, [], error)
        await asyncio.gather(*answers, return_exceptions=True)
        return [a.exception() for a in answers]

    errors = asyncio.run(main())
    assert all(isinstance(e, OSError) for e in errors)
