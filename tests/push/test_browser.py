"""The JavaScript client in a real browser (the system's headless Chromium, driven by
Playwright): a page gets its messages, goes offline, more come, it reloads and resumes
after its saved cursor, each message shown once."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from surelay import Runtime
from surelay.push import PushConfig
from tests.helpers import system_chromium, wait_until
from tests.push.serving import SECRET, serving

CHROMIUM = system_chromium()  # (skips this module without one, unless required)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>chat</title>
<ul id="messages"></ul>
<script src="/push/client.js"></script>
<script>
  const params = new URLSearchParams(location.search);
  const url = `ws://${location.host}/push/ws`;
  window.push = new SurelayPush(url, params.get("token"), "browser-1", {
    onMessage: (message) => {
      if (message.text() === "boom" && !window.failedOnce) {
        window.failedOnce = true;
        throw new Error("the app failed once");  // unacked: it comes again, in order
      }
      const item = document.createElement("li");
      item.textContent = `${message.seq}:${message.text()}`;  // text, never HTML
      document.getElementById("messages").appendChild(item);
    },
  });
</script>
"""


async def page(_request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


def test_a_page_gets_its_messages_goes_offline_reloads_and_resumes(tmp_path: Path) -> None:
    with (
        Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET, ack_timeout=0.3)) as rt,
        serving(rt, [Route("/", page)]) as url,
        sync_playwright() as playwright,
    ):
        token = rt.push.issue_token("ann", device="browser-1")
        home = url.replace("ws://", "http://").removesuffix("/push/ws") + f"/?token={token}"
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            tab = browser.new_page()
            tab.goto(home)
            first = [rt.push.send("ann", f"hello {i}".encode()) for i in range(3)]
            first.append(rt.push.send("ann", b"<img src=x onerror=alert(1)>"))
            items = tab.locator("#messages li")
            expect(items).to_have_text(
                ["1:hello 0", "2:hello 1", "3:hello 2", "4:<img src=x onerror=alert(1)>"]
            )
            wait_until(lambda: rt.push.status(first[-1].msg_id).state == "delivered", 10)  # type: ignore[union-attr]
            tab.evaluate("window.push.close()")  # offline
            later = [rt.push.send("ann", f"later {i}".encode()) for i in range(2)]
            tab.reload()
            expect(items).to_have_text(["5:later 0", "6:later 1"])  # after the saved cursor
            assert tab.evaluate("localStorage.getItem('surelay.push.cursor.browser-1')") == "6"
            wait_until(lambda: rt.push.status(later[-1].msg_id).state == "delivered", 10)  # type: ignore[union-attr]
            rt.push.send("ann", b"boom")
            rt.push.send("ann", b"after")
            expect(items).to_have_text(["5:later 0", "6:later 1", "7:boom", "8:after"])
        finally:
            browser.close()
