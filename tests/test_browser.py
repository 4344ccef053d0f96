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

    def __init__(self, port: int = 0, web_port: int = 0) -> None:
        self.cli = CliServer(
            "chat", "serve", "--port", str(port), "--room-size", "2", "--web", str(web_port), ready=r"listening on (?:.*):(\d+)$"
        )
        self.port = self.cli.port
        seen = [re.search(WEB_LINE, line) for line in self.cli.out.seen]
        found = [match for match in seen if match]
        self.url = found[0].group(1) if found else self.cli.out.wait_for(WEB_LINE).group(1)
        self.web_port = int(self.url.rstrip("/").rpartition(":")[2])


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
    """/quit says so in words and offers Reconnect, which re-applies the name and the room; a server shutdown
    is told in words, never as a close code."""
    a = Watched(browser, web_chat.url)
    page = a.page
    try:
        expect(page.locator("#reconnect")).to_be_hidden()
        a.rename("dave")
        a.join("chess")
        expect(page.locator("#room")).to_have_text("chess", timeout=WAIT)
        a.say("/quit")
        expect(page.locator("#status")).to_have_text("You left the chat.", timeout=WAIT)
        expect(page.locator("#reconnect")).to_have_text("Reconnect")
        expect(page.locator("#reconnect")).to_be_visible()

        page.click("#reconnect")
        expect(page.locator("#status")).to_have_text("Connected", timeout=WAIT)
        expect(page.locator("#reconnect")).to_be_hidden()
        expect(page.locator("#name")).to_have_text("dave", timeout=WAIT)
        expect(page.locator("#room")).to_have_text("chess", timeout=WAIT)

        status, _seconds = web_chat.cli.stop()
        assert status == 0
        # The status lasts until the first retry (0.5-1 s); the line in the messages stays.
        later = r"Reconnecting…|The server cannot be reached\. Reconnecting in \d+ s…"
        expect(page.locator("#status")).to_have_text(
            re.compile(rf"^(The server shut down\. Reconnecting in \d+ s…|{later})$"), timeout=WAIT
        )
        expect(page.locator("#reconnect")).to_have_text("Try now")
        expect(a.line("* server shutting down")).to_have_count(1)
        expect(a.line("* The server shut down.")).to_have_count(1)
        assert "code" not in page.locator("#status").inner_text()
        assert a.dialogs == []
        assert not unexpected(a.problems)
    finally:
        a.close()


def unexpected(problems: list[str]) -> list[str]:
    """The problems a page recorded, less the console's word for each attempt at a server that is down."""
    return [problem for problem in problems if "WebSocket connection to" not in problem]


def test_the_page_reconnects_by_itself(browser: Browser) -> None:
    """A lost server (killed: close 1006) is told in words with a countdown and a Try now button; the page
    retries by itself with growing delays, and once a server is back it takes its name and room again."""
    first = WebChat()
    with first.cli:
        a = Watched(browser, first.url)
        page = a.page
        a.rename("erin")
        a.join("chess")
        expect(page.locator("#room")).to_have_text("chess", timeout=WAIT)
        first.cli.proc.kill()
        first.cli.proc.wait(WAIT)
    try:
        status = page.locator("#status")
        lost = "Connection lost: the server went away or the network dropped."
        # That status lasts until the first retry (0.5-1 s), on a slow machine perhaps unseen; the line stays.
        expect(status).to_have_text(
            re.compile(rf"^({re.escape(lost)} Reconnecting in 1 s…|Reconnecting…|The server cannot be reached\. .*)$"),
            timeout=WAIT,
        )
        expect(a.line(f"* {lost}")).to_have_count(1)
        expect(page.locator("#reconnect")).to_have_text("Try now")
        # The first attempt (after at most a second) fails: the next one waits up to two.
        expect(status).to_have_text(re.compile(r"^The server cannot be reached\. Reconnecting in [12] s…$"), timeout=WAIT)
        page.click("#reconnect")  # Try now: fails at once, and the wait doubles again
        expect(status).to_have_text(re.compile(r"^The server cannot be reached\. Reconnecting in [2-4] s…$"), timeout=WAIT)
        assert "1006" not in page.locator("#messages").inner_text()

        second = WebChat(first.port, first.web_port)
        with second.cli:
            expect(status).to_have_text("Connected", timeout=WAIT)
            expect(page.locator("#name")).to_have_text("erin", timeout=WAIT)
            expect(page.locator("#room")).to_have_text("chess", timeout=WAIT)
            bob = tcp_client(second.port, "bob")
            try:
                bob.send(b"/join chess\n")
                bob.until("* you are in chess")
                expect(page.locator("#members li")).to_have_text(["erin", "bob"], timeout=WAIT)
                a.say("back again")
                assert bob.line() == "<erin> back again"
            finally:
                bob.close()
        assert a.dialogs == []
        assert not unexpected(a.problems), a.problems
    finally:
        a.close()
