"""How coroutines that sent are answered once their write has ended (on their loop, a
few per turn), and what a `Turn` of their sends holds. (A thread's send waits for its
own future: `surelay.ingress.way_in`.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from surelay.ingress.checks import Checked
from surelay.receipts import Receipt
from surelay.telemetry import record_error

__all__ = [
    "Settle",
    "Turn",
    "answer_batch",
    "end_spans",
    "resolve_empty",
    "settle_on_loop",
]

WAKE_MAX = 32
"""Coroutines woken per turn of their loop when a write answers many at once: the loop
runs every coroutine woken in one turn before anything else (a timer, a request), so
two hundred woken together would hold it for milliseconds."""

Settle = Callable[[list[Any], list[Receipt], BaseException | None], None]
"""Answer the callers of a written group: their receipts, or the error for all."""


def end_spans(spans: list[Any] | None, error: BaseException) -> None:
    """End the send spans of messages that were not accepted, with the error."""
    for span in spans or ():
        if span is not None:
            record_error(span, error)
            span.end()


def answer_batch(
    future: asyncio.Future[list[Receipt]], receipts: list[Receipt], error: BaseException | None
) -> None:
    """Answer one coroutine's batch (on its loop), unless it stopped waiting."""
    if future.done():
        return
    if error is None:
        future.set_result(receipts)
    else:
        future.set_exception(error)


def _settle(answers: list[Any], receipts: list[Receipt], error: BaseException | None) -> None:
    """Give each future its receipt (or all the error); those answered already (a
    caller that stopped waiting) are left alone."""
    for index, future in enumerate(answers):
        if future.done():
            continue
        if error is None:
            future.set_result(receipts[index])
        else:
            future.set_exception(error)


def settle_on_loop(
    loop: asyncio.AbstractEventLoop,
    answers: list[Any],
    receipts: list[Receipt],
    error: BaseException | None,
    start: int = 0,
) -> None:
    """Answer coroutines' futures on their loop (called through
    `loop.call_soon_threadsafe`): `WAKE_MAX` of them per turn, the rest in the turns
    after (the loop's other work runs in between)."""
    end = start + WAKE_MAX
    if error is None:
        _settle(answers[start:end], receipts[start:end], None)
    else:
        _settle(answers[start:end], [], error)
    if end < len(answers):
        loop.call_soon(settle_on_loop, loop, answers, receipts, error, end)


def resolve_empty(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass(slots=True)
class Turn:
    """The `asend`s of one event-loop turn, written to the outbox together (coroutines
    woken together send again in the same turn, so the loop pays for one write and one
    wake-up per turn rather than per message). Each message's send span is started in
    its caller's call (its trace context); ids are given in call order when the turn is
    written."""

    checked: list[Checked] = field(default_factory=list)
    spans: list[Any] | None = None
    answers: list[Any] = field(default_factory=list)
    """The `asend`s' asyncio futures."""

    def add(self, checked: Checked, span: Any, answer: Any) -> None:
        """One more send: its checked arguments, its span (None without tracing; the
        list of spans is made at the first one) and the future of its answer."""
        if span is not None and self.spans is None:
            self.spans = [None] * len(self.checked)
        if self.spans is not None:
            self.spans.append(span)
        self.checked.append(checked)
        self.answers.append(answer)
