"""The tutorial's Socket.IO page, on `chat serve --web-root`, in real headless Chromium beside an nc member."""

from __future__ import annotations

import re

import pytest

from browsers import WAIT
from playwright.sync_api import Browser, Page, expect

from support import CliServer, Peer
from test_web_root import tutorial_folder

pytestmark = pytest.mark.timeout(60)


class TutorialPage:
    """The example page (docs/examples/socketio_rooms): its own io() and nothing else."""

    def __init__(self, browser: Browser, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 720, "height": 560})
        self.page: Page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("response", self._response)
        self.page.on("requestfailed", lambda request: self.problems.append(f"request failed: {request.url}"))
        self.page.set_default_timeout(WAIT)
        self.page.goto(url)
        self.page.wait_for_function("window.socket && window.socket.connected", timeout=WAIT)

    def _response(self, response) -> None:  # type: ignore[no-untyped-def]
        if response.status >= 400 and not response.url.endswith("/favicon.ico"):  # the page has no icon
            self.problems.append(f"HTTP {response.status} for {response.url}")

    def join(self, room: str) -> None:
        self.page.fill("#room", room)
        self.page.click("#room-form button")

    def say(self, text: str) -> None:
        self.page.fill("#m", text)
        self.page.press("#m", "Enter")

    def messages(self) -> list[str]:
        return self.page.locator("#messages li").all_inner_texts()

    def expect_message(self, text: str) -> None:
        exact = self.page.locator("#messages li").filter(has_text=re.compile("^" + re.escape(text) + "$"))
        expect(exact).to_have_count(1, timeout=WAIT)


def test_two_tutorial_pages_and_nc_share_a_room_and_a_third_page_is_refused(browser: Browser, tmp_path) -> None:
    """--room-size 3: two pages and an nc member chat in r1 (each page hears itself, as io.to(room).emit
    does); a third page is told `failed` and stays out; the screenshot shows it."""
    folder = tutorial_folder(tmp_path)
    with CliServer(
        "chat", "serve", "--port", "0", "--room-size", "3", "--web", "0", "--web-root", str(folder),
        ready=r"listening on (?:.*):(\d+)$",
    ) as cli:  # fmt: skip
        url = cli.out.wait_for(r"Web chat on (http://\S+/)$").group(1)
        alice, bob = TutorialPage(browser, url), TutorialPage(browser, url)
        nc = Peer(cli.port)
        try:
            nc.send(b"/join r1\n")
            nc.until("* you are in r1")
            for page, name in ((alice, "user1"), (bob, "user2")):
                page.join("r1")
                nc.until(f"* {name} joined r1")  # the page's join reached the server: nothing is said before
            alice.say("hello from a page")
            for page in (alice, bob):
                page.expect_message("<user1> hello from a page")
            assert nc.until("<user1> hello from a page")
            nc.send(b"hello from nc\n")
            for page in (alice, bob):
                page.expect_message("<user3> hello from nc")
            bob.say("<b>not bold</b>")
            alice.expect_message("<user2> <b>not bold</b>")
            assert nc.until("<user2> <b>not bold</b>")
            expect(alice.page.locator("#messages b")).to_have_count(0)

            carol = TutorialPage(browser, url)
            carol.join("r1")
            expect(carol.page.locator("#status")).to_have_text("room: failed", timeout=WAIT)
            carol.say("anyone?")  # still in the lobby: the room does not hear it
            carol.expect_message("<user4> anyone?")
            alice.say("still three of us")
            bob.expect_message("<user1> still three of us")
            assert nc.until("<user1> still three of us")
            assert not any("anyone?" in text for text in alice.messages() + bob.messages())

            shot = tmp_path / "tutorial-page.png"
            alice.page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 0
            assert alice.problems == [] and bob.problems == [] and carol.problems == []
        finally:
            nc.close()
            for page in (alice, bob):
                page.context.close()
