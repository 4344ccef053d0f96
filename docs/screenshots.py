"""Take the chat page's screenshots for the docs, in headless Chromium (Debian's).

    python docs/screenshots.py [--chromium /usr/bin/chromium]

Starts ``socketlab chat serve --room-size 2 --web 0``; alice and bob join
room chess from two pages and chat, a terminal client chats with them from the
lobby, carol's page (at phone width) is told the room is full. Writes
docs/images/web-chat.png (alice's page) and docs/images/web-chat-full.png
(carol's). Needs playwright (the test extra); never downloads a browser.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import shutil
import subprocess
import sys

from playwright.sync_api import Page, expect, sync_playwright

IMAGES = pathlib.Path(__file__).resolve().parent / "images"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def join(page: Page, url: str, name: str, room: str) -> None:
    page.goto(url)
    expect(page.locator("#status")).to_have_text("Connected")
    page.fill("#nick-input", name)
    page.press("#nick-input", "Enter")
    expect(page.locator("#name")).to_have_text(name)
    page.fill("#room-input", room)
    page.click("#join")


def say(page: Page, text: str) -> None:
    page.fill("#message-input", text)
    page.press("#message-input", "Enter")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    options = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-m", "socketlab", "chat", "serve", "--port", "0", "--room-size", "2", "--web", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()
        match = re.search(r"(http://\S+/)$", server.stdout.readline().strip())
        if not match:
            raise SystemExit("the server did not print its web address")
        url = match.group(1)
        IMAGES.mkdir(exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=options.chromium, headless=True, args=ARGS)
            alice = browser.new_page(viewport={"width": 900, "height": 600})
            bob = browser.new_page(viewport={"width": 900, "height": 600})
            carol = browser.new_page(viewport={"width": 360, "height": 640})
            join(alice, url, "alice", "chess")
            join(bob, url, "bob", "chess")
            expect(alice.locator("#members")).to_contain_text("bob")
            say(bob, "hi alice, fancy a game?")
            expect(alice.locator("#messages")).to_contain_text("<bob> hi alice")
            say(alice, "sure: e4")
            expect(bob.locator("#messages")).to_contain_text("<alice> sure: e4")
            say(bob, "<b>e5</b>, and markup stays text")
            expect(alice.locator("#messages")).to_contain_text("markup stays text")
            join(carol, url, "carol", "chess")
            expect(carol.locator("#alert")).to_contain_text("room chess is full (2/2)")
            alice.screenshot(path=str(IMAGES / "web-chat.png"))
            carol.screenshot(path=str(IMAGES / "web-chat-full.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
    print(f"wrote {IMAGES / 'web-chat.png'} and {IMAGES / 'web-chat-full.png'}")


if __name__ == "__main__":
    main()
