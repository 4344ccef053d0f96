"""The browser chat page (`chat serve --web`) in a real headless Chromium, beside a TCP client."""

from __future__ import annotations

import re
from typing import Any, Iterator

import pytest

from browsers import WAIT
from playwright.sync_api import Browser, Page, expect

from support import CliServer, Peer

pytestmark = pytest.mark.timeout(60)

WEB_LINE = r"Web chat on (http://\S+/)$"


class WebChat:
    """`socketlab chat serve --web 0` as a user runs it: the TCP port and the page's URL."""

    def __init__(self) -> None:
        self.cli = CliServer(
            "chat", "serve", "--port", "0", "--room-size", "2", "--web", "0", ready=r"listening on (?:.*):(\d+)$"
        )
        self.port = self.cli.port
        seen = [re.search(WEB_LINE, line) for line in self.cli.out.seen]
        found = [match for match in seen if match]
        self.url = found[0].group(1) if found else self.cli.out.wait_for(WEB_LINE).group(1)


@pytest.fixture
def web_chat() -> Iterator[WebChat]:
    server = WebChat()
    with server.cli:
        yield server


class Watched:
    """A page with everything that should never happen recorded: dialogs, errors, failed requests."""

    def __init__(self, browser: Browser, url: str, width: int = 1100, height: int = 760) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page: Page = self.context.new_page()
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        page = self.page
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("console", self._console)
        page.on("requestfailed", lambda request: self.problems.append(f"request failed: {request.url}"))
        page.on("response", self._response)
        page.set_default_timeout(WAIT)
        page.goto(url)
        expect(page.locator("#status")).to_have_text("Connected", timeout=WAIT)
        expect(page.locator("#name")).to_have_text(re.compile(r"^user\d+$"), timeout=WAIT)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):  # CSP violations included
            self.problems.append(f"console {message.type}: {message.text}")

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status} for {response.url}")

    def rename(self, name: str) -> None:
        self.page.fill("#nick-input", name)
        self.page.press("#nick-input", "Enter")
        expect(self.page.locator("#name")).to_have_text(name, timeout=WAIT)

    def join(self, room: str) -> None:
        self.page.fill("#room-input", room)
        self.page.click("#join")

    def say(self, text: str) -> None:
        self.page.fill("#message-input", text)
        self.page.press("#message-input", "Enter")

    def line(self, text: str) -> Any:
        """The message-list entry whose text is exactly *text*."""
        return self.page.locator("#messages li").filter(has_text=re.compile("^" + re.escape(text) + "$"))

    def close(self) -> None:
        self.context.close()


def tcp_client(port: int, name: str) -> Peer:
    """A plain line client that takes *name*."""
    peer = Peer(port)
    welcome = re.fullmatch(r"\* welcome (user\d+), you are in lobby \(type /help\)", peer.line())
    assert welcome, "no welcome line"
    peer.send(f"/nick {name}\n".encode())
    peer.until(f"* {welcome.group(1)} is now known as {name}")
    return peer


def test_two_pages_and_a_tcp_client(web_chat: WebChat, browser: Browser, tmp_path) -> None:
    """Chat both ways with a TCP client, a full room refused, hostile text shown as text."""
    a = Watched(browser, web_chat.url)
    a.rename("alice")
    a.join("chess")
    expect(a.page.locator("#room")).to_have_text("chess", timeout=WAIT)
    expect(a.page.locator("#members li")).to_have_text(["alice"], timeout=WAIT)

    bob = tcp_client(web_chat.port, "bob")
    try:
        bob.send(b"/join chess\n")
        bob.until("* you are in chess")
        # The member list follows the room: bob's join arrives as a notice.
        expect(a.page.locator("#members li")).to_have_text(["alice", "bob"], timeout=WAIT)

        bob.send(b"hello from a terminal\n")
        expect(a.line("<bob> hello from a terminal")).to_have_count(1, timeout=WAIT)
        a.say("hi bob, from the browser")
        assert bob.line() == "<alice> hi bob, from the browser"
        own = a.line("<alice> hi bob, from the browser")
        expect(own).to_have_count(1, timeout=WAIT)
        expect(own).to_have_class(re.compile(r"\bown\b"))

        # A third member: the tutorial's "room is full" result, shown in the alert region.
        b = Watched(browser, web_chat.url, width=360, height=740)
        b.rename("carol")
        b.join("chess")
        expect(b.page.locator("#alert")).to_contain_text("room chess is full (2/2)", timeout=WAIT)
        expect(b.page.locator("#alert")).to_be_visible()
        expect(b.page.locator("#room")).to_have_text("lobby")
        assert b.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "horizontal scrolling at 360px"
        b.page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)

        # Hostile text from the TCP client is shown literally, never parsed as HTML.
        bob.send(b"<img src=x onerror=alert(1)>\n")
        expect(a.line("<bob> <img src=x onerror=alert(1)>")).to_have_count(1, timeout=WAIT)
        expect(a.page.locator("#messages img")).to_have_count(0)
        expect(a.page.locator("#members li")).to_have_text(["alice", "bob"])

        shot = tmp_path / "chat.png"
        a.page.screenshot(path=str(shot), full_page=True)
        assert shot.is_file() and shot.stat().st_size > 0
        assert a.dialogs == [] and b.dialogs == []
        assert a.problems == [] and b.problems == []
        b.close()
    finally:
        bob.close()
        a.close()


def test_disconnect_and_reconnect(web_chat: WebChat, browser: Browser) -> None:
    """/quit and a server shutdown both show the close code and offer Reconnect, which re-applies the name."""
    a = Watched(browser, web_chat.url)
    page = a.page
    try:
        expect(page.locator("#reconnect")).to_be_hidden()
        a.rename("dave")
        a.say("/quit")
        expect(page.locator("#status")).to_contain_text("Disconnected (code 1000", timeout=WAIT)
        expect(page.locator("#reconnect")).to_be_visible()

        page.click("#reconnect")
        expect(page.locator("#status")).to_have_text("Connected", timeout=WAIT)
        expect(page.locator("#reconnect")).to_be_hidden()
        expect(page.locator("#name")).to_have_text("dave", timeout=WAIT)

        status, _seconds = web_chat.cli.stop()
        assert status == 0
        expect(page.locator("#status")).to_contain_text("Disconnected (code 1001", timeout=WAIT)
        expect(page.locator("#reconnect")).to_be_visible()
        expect(a.line("* server shutting down")).to_have_count(1)
        assert a.dialogs == []
        assert a.problems == []
    finally:
        a.close()
