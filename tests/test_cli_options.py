"""Option parsing, with click's CliRunner (in-process; nothing listens): what each option becomes."""

from __future__ import annotations

from typing import Any

import click
import pytest
from click.testing import CliRunner

from socketlab.chat.config import ChatConfig
from socketlab.cli import main
from socketlab.cli.options import AddressList, Origin, PidList, WebAddress

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def captured(monkeypatch) -> dict[str, Any]:
    """chat serve, stopped right after it built its server's settings."""
    seen: dict[str, Any] = {}

    class Captured(Exception):
        pass

    def fake_server(address: Any, config: ChatConfig) -> None:
        seen["address"], seen["config"] = address, config
        raise Captured

    import socketlab.chat.server

    monkeypatch.setattr(socketlab.chat.server, "ChatServer", fake_server)
    monkeypatch.setattr("socketlab.cli.chat.log_to_stdout", lambda: None)
    seen["error"] = Captured
    return seen


def serve(captured: dict[str, Any], *args: str) -> ChatConfig:
    result = CliRunner().invoke(main, ["chat", "serve", *args])
    assert isinstance(result.exception, captured["error"]), result.output
    return captured["config"]


def test_chat_serve_defaults_are_the_configs_but_flood_control(captured) -> None:
    config = serve(captured)
    assert captured["address"] == ("127.0.0.1", 3000)
    assert config == ChatConfig(max_rate=20.0)


def test_chat_serve_options_become_one_config(captured) -> None:
    config = serve(
        captured,
        "--host",
        "::1",
        "--port",
        "0",
        "--room-size",
        "2",
        "--max-clients",
        "7",
        "--max-line",
        "100",
        "--idle-timeout",
        "30",
        "--max-rate",
        "0",
        "--web",
        "8080",
        "--web-origin",
        "https://example.org",
        "--web-origin",
        "http://localhost:8000",
        "--max-per-ip",
        "3",
    )
    assert captured["address"] == ("::1", 0)
    assert config == ChatConfig(
        room_size=2,
        max_clients=7,
        max_line=100,
        idle_timeout=30.0,
        max_rate=0.0,
        web=("::1", 8080),
        web_origins=("https://example.org", "http://localhost:8000"),
        max_per_ip=3,
    )
    assert serve(captured, "--web", "127.0.0.5:0").web == ("127.0.0.5", 0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--web", "x:y"], "Invalid value for '--web': invalid address 'x:y': expected HOST:PORT"),
        (
            ["--web-origin", "ftp://x"],
            "Invalid value for '--web-origin': 'ftp://x' is not an origin like https://example.org or http://localhost:8000",
        ),
        (
            ["--web-origin", "https://x/path"],
            "Invalid value for '--web-origin': 'https://x/path' is not an origin like https://example.org or http://localhost:8000",
        ),
        (["--redis", "http://x/"], "Invalid value for '--redis': 'http://x/' is not a URL like redis://HOST:PORT/DB"),
        (["--max-clients", "0"], "Invalid value for '--max-clients': 0 is not in the range x>=1."),
    ],
)
def test_chat_serve_bad_options_are_one_usage_error(args, message) -> None:
    result = CliRunner().invoke(main, ["chat", "serve", *args])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == f"Error: {message}"


def test_bench_chat_lists_of_addresses_and_pids() -> None:
    result = CliRunner().invoke(main, ["bench", "chat", "--target", "127.0.0.1:4000", "--server-pid", "12,x"])
    assert result.exit_code == 2
    assert (
        result.output.splitlines()[-1]
        == "Error: Invalid value for '--server-pid': '12,x' is not a PID or a comma-separated list of them"
    )
    result = CliRunner().invoke(main, ["bench", "chat", "--target", "127.0.0.1:4000,nope"])
    assert result.output.splitlines()[-1] == "Error: Invalid value for '--target': invalid address 'nope': expected HOST:PORT"


def test_parameter_types_convert() -> None:
    assert WebAddress().convert("8080", None, None) == (None, 8080)
    assert WebAddress().convert("[::1]:9000", None, None) == ("::1", 9000)
    assert AddressList().convert("a:1, [::1]:2", None, None) == (("a", 1), ("::1", 2))
    assert PidList().convert("1,22", None, None) == [1, 22]
    assert Origin().convert("https://example.org:8443", None, None) == "https://example.org:8443"
    with pytest.raises(click.BadParameter):
        Origin().convert("example.org", None, None)
