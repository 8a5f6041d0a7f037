"""The console in a real browser: headless Chromium (the system's) driven by Playwright.

`.ci/run` installs Chromium when it is missing and sets SURELAY_BROWSER_TESTS=required,
so there these tests must run; elsewhere they skip, saying how to enable them.
Screenshots of each page go to artifacts/console/.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from surelay import Outcome, RetryPolicy, Runtime, RuntimeConfig
from tests.cli.test_dlq import Switch
from tests.helpers import free_port, listening, system_chromium
from tests.nats_server import wait_for

ROOT = Path(__file__).resolve().parent.parent.parent
SHOTS = ROOT / "artifacts" / "console"
CHROMIUM = system_chromium()  # (skips this module without one, unless required)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Path, Runtime, Switch]]:
    """A running runtime with six dead letters: keys a (x3), b (x2), c."""
    switch = Switch()
    path = tmp_path / "data"
    transports = {"sms": switch.recorder, "mail": switch.recorder}
    config = RuntimeConfig(retry=RetryPolicy(max_attempts=1))
    with Runtime.open(path, transports=transports, config=config) as rt:  # type: ignore[arg-type]
        for i, (transport, key) in enumerate(
            [("sms", "a"), ("sms", "b"), ("mail", "a"), ("sms", "a"), ("mail", "c"), ("sms", "b")]
        ):
            assert rt.send(transport, f"{key}-{i}".encode(), key=key).wait(10) is (
                Outcome.DEAD_LETTERED
            )
        yield path, rt, switch


@pytest.fixture
def console(live: tuple[Path, Runtime, Switch]) -> Iterator[str]:
    path = live[0]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "surelay.cli", "console", "--path", str(path), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: listening(port) or server.poll() is not None, 30, "the console")
        assert server.poll() is None, server.stdout.read() if server.stdout else ""
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def page() -> Iterator[Page]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def test_an_operator_finds_a_dead_letter_and_replays_it_as_a_canary(
    console: str, page: Page, live: tuple[Path, Runtime, Switch]
) -> None:
    _, rt, switch = live
    page.goto(console + "/")
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator("#runtimes")).to_contain_text("running")
    page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)

    page.click("text=Dead letters")
    expect(page.locator("#records tr")).to_have_count(7)  # a header and six records
    page.fill("input[name=key]", "a")
    page.click("input[type=submit][value=Filter]")
    expect(page.locator("#records tr")).to_have_count(4)
    page.screenshot(path=str(SHOTS / "dead-letters.png"), full_page=True)

    page.locator("#records a").first.click()
    expect(page.locator("#status")).to_have_text("dead")
    expect(page.locator("#payload-text")).to_have_text("a-0")
    page.screenshot(path=str(SHOTS / "record.png"), full_page=True)
    record_url = page.url

    switch.on = True  # the cause is fixed: replay one first
    page.click("#canary")
    expect(page.locator("#count")).to_have_text("1")
    page.screenshot(path=str(SHOTS / "confirm.png"), full_page=True)
    page.click("#confirm")
    expect(page.locator("#replay-status")).to_have_text("done", timeout=30_000)
    expect(page.locator("#replayed")).to_have_text("1")
    page.screenshot(path=str(SHOTS / "replay.png"), full_page=True)

    page.goto(record_url)
    expect(page.locator("#status")).to_have_text("replayed")
    expect(page.locator("#history")).to_contain_text("by id")
    expect(page.locator("#history")).to_contain_text("done")
    page.screenshot(path=str(SHOTS / "record-replayed.png"), full_page=True)
    assert [e.payload for e in switch.recorder.delivered] == [b"a-0"]
    assert rt.stats().replayed == 1


def test_a_phone_sized_screen_never_scrolls_sideways(
    console: str, live: tuple[Path, Runtime, Switch]
) -> None:
    _, rt, _ = live
    record = rt.dead_letters.list(limit=1)[0].id
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            phone = browser.new_page(viewport={"width": 375, "height": 740})
            for name, address in (
                ("overview", "/"),
                ("dead-letters", "/dead-letters"),
                ("record", f"/dead-letters/{record}"),
                ("confirm", "/confirm/purge"),
            ):
                phone.goto(console + address)
                overflow = phone.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                phone.screenshot(path=str(SHOTS / f"phone-{name}.png"), full_page=True)
                assert overflow <= 0, f"{address} is {overflow}px wider than a 375px screen"
            icon = phone.goto(console + "/favicon.ico")
            assert icon is not None and icon.status == 200
        finally:
            browser.close()
