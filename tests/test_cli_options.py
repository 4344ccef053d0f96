"""Option parsing, with click's CliRunner (in-process; nothing listens): what each option becomes."""

from __future__ import annotations

from typing import Any

import click
import pytest
from click.testing import CliRunner

from socketlab.chat.config import ChatConfig
from socketlab.cli import main
from socketlab.cli.options import AddressList, Host, Origin, PidList, WebAddress
from support import run_cli

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
        "--metrics",
        "9100",
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
        metrics=("127.0.0.1", 9100),  # the numbers stay local whatever --host is
    )
    assert serve(captured, "--web", "127.0.0.5:0").web == ("127.0.0.5", 0)
    assert serve(captured, "--metrics", "127.0.0.5:0").metrics == ("127.0.0.5", 0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--web", "x:y"], "Invalid value for '--web': invalid address 'x:y': expected HOST:PORT"),
        (["--metrics", "x:y"], "Invalid value for '--metrics': invalid address 'x:y': expected HOST:PORT"),
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
        (
            ["--reuse-port", "--redis", "redis://127.0.0.1:1/0", "--unix", "/tmp/x.sock"],
            "--reuse-port is for TCP ports: a UNIX socket file has one server.",
        ),
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


@pytest.mark.parametrize(
    "command, args, message",
    [
        (["chat", "serve"], ["--web", "127.0.0.1:99999"], "invalid address '127.0.0.1:99999': the port must be 0-65535"),
        (["chat", "serve"], ["--web", "99999"], "invalid port '99999': ports are 0-65535"),
        (["chat", "serve"], ["--web", "\u00b2"], "invalid port '\u00b2': ports are 0-65535"),
        (["chat", "serve"], ["--web", "h:\u00b2"], "invalid address 'h:\u00b2': expected HOST:PORT"),
        (["bench", "chat"], ["--target", "127.0.0.1:99999"], "invalid address '127.0.0.1:99999': the port must be 1-65535"),
        (["bench", "chat"], ["--target", "127.0.0.1:0"], "invalid address '127.0.0.1:0': the port must be 1-65535"),
        (["tcp-client"], ["-s", "127.0.0.1:99999"], "invalid address '127.0.0.1:99999': the port must be 0-65535"),
        (["tcp-server"], ["--port", "99999"], "99999 is not in the range 0<=x<=65535."),
        (["tcp-client"], ["--port", "0"], "0 is not in the range 1<=x<=65535."),
        (["tcp-client"], ["--timeout", "nan"], "'nan' is not a finite number"),
        (["tcp-client"], ["-w", "inf"], "'inf' is not a finite number"),
        (["tcp-client"], ["--timeout", "1e20"], "'1e20' is more than 1000000000 seconds"),
        (["tcp-client"], ["--buffer", "inf"], "'inf' is not a size like 4096, 64K, 100M or 1G"),
        (["chat", "connect"], ["--timeout", "inf"], "'inf' is not a finite number"),
        (["chat", "serve"], ["--idle-timeout", "nan"], "'nan' is not a finite number"),
        (["chat", "serve"], ["--max-rate", "nan"], "'nan' is not a finite number"),
        (["udp-recv"], ["--timeout", "-inf"], "-inf is not in the range x>0."),
        (["udp-send"], ["--interval", "inf"], "'inf' is not a finite number"),
        (["udp-send"], ["--wait-reply", "1e309"], "'1e309' is not a finite number"),
        (["bench", "chat"], ["--rate", "inf"], "'inf' is not a finite number"),
        (["tcp-server"], ["--host", ""], "an empty host would listen on every interface: name it (0.0.0.0 or :: for every one)"),
        (["udp-recv"], ["--host", " "], "an empty host would listen on every interface: name it (0.0.0.0 or :: for every one)"),
        (["tcp-client"], ["--host", ""], "an empty host: name the server"),
        (["tcp-client"], ["--host", "h:3199"], "'h:3199' is not a host name or address (the port goes in --port)"),
    ],
)
def test_bad_option_values_are_one_clear_line(command, args, message) -> None:
    """Every port-taking option says which ports exist, not only 'expected HOST:PORT'; nan, inf and times
    past any timer are refused as options, not met as tracebacks deep inside."""
    result = CliRunner().invoke(main, [*command, *args])
    assert result.exit_code == 2
    option = {"-s": "'-s' / '--source'", "-w": "'-w' / '--idle-timeout'"}.get(args[0], f"'{args[0]}'")
    assert result.output.splitlines()[-1] == f"Error: Invalid value for {option}: {message}"


def test_clients_and_servers_describe_host_and_port_in_their_own_words() -> None:
    """Clients name the server they reach; only servers speak of listening and of port 0."""
    for command in (["tcp-client"], ["udp-send"]):
        text = CliRunner().invoke(main, [*command, "--help"], terminal_width=200).output
        assert "Server's host name or address" in text and "Server's port" in text, command
        options = text[text.index("Options:") :]
        assert "listen" not in options.lower() and "free one" not in options, command
    for command in (["tcp-server"], ["udp-recv"], ["chat", "serve"]):
        text = CliRunner().invoke(main, [*command, "--help"], terminal_width=200).output
        assert "Address to listen on" in text and "0 picks a free one" in text, command


def test_missing_redis_extra_names_both_ways_to_install_it(monkeypatch) -> None:
    """Without the redis package, --redis says how to install it from PyPI and from a checkout, as the README does."""
    monkeypatch.setitem(__import__("sys").modules, "redis", None)
    result = CliRunner().invoke(main, ["chat", "serve", "--redis", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        "Error: --redis needs the redis package: pip install 'socketlab[redis]', or pip install '.[redis]' from a checkout"
    )


@pytest.fixture
def tcp_server_built(monkeypatch) -> dict[str, Any]:
    """tcp-server, stopped right after it built its server: the server class and its arguments."""
    seen: dict[str, Any] = {}

    class Captured(Exception):
        pass

    def fake(kind: str) -> Any:
        def build(address: Any, *args: Any, **options: Any) -> None:
            seen.update(kind=kind, address=address, args=args, options=options)
            raise Captured

        return build

    import socketlab.programs
    import socketlab.tcp

    monkeypatch.setattr(socketlab.tcp, "WelcomeServer", fake("welcome"))
    monkeypatch.setattr(socketlab.programs, "ProgramServer", fake("program"))
    monkeypatch.setattr("socketlab.cli.tcp.log_to_stdout", lambda **_: None)
    seen["error"] = Captured
    return seen


def tcp_server(seen: dict[str, Any], *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["tcp-server", *args])
    assert isinstance(result.exception, seen["error"]), result.output
    return seen


def test_tcp_server_output_once_exec_and_unix_become_the_servers_settings(tcp_server_built, tmp_path) -> None:
    """--output: no welcome unless given, payloads not logged; --once; --exec split without a shell; --unix's mode."""
    from socketlab.unix import UnixAddress

    target = str(tmp_path / "out.bin")
    seen = tcp_server(tcp_server_built, "--output", target, "--once")
    assert seen["kind"] == "welcome" and seen["address"] == ("127.0.0.1", 3000)
    options = seen["options"]
    assert (options["welcome"], options["payload"], options["once"]) == ("", "quiet", True)
    assert options["output"].name == target
    options["output"].close()
    seen = tcp_server(tcp_server_built, "--output", target, "--welcome", "hi", "--hex")
    assert (seen["options"]["welcome"], seen["options"]["payload"]) == ("hi", "hex")
    seen["options"]["output"].close()
    seen = tcp_server(
        tcp_server_built, "--exec", "cat -n 'a b'", "--max-clients", "3", "--unix", "/tmp/x.sock", "--unix-mode", "660"
    )
    assert seen["kind"] == "program" and seen["address"] == UnixAddress("/tmp/x.sock", 0o660)
    assert seen["args"] == (["cat", "-n", "a b"],) and seen["options"]["max_clients"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--output", "x", "--max-clients", "4"], "--output takes one client at a time: drop --max-clients"),
        (["--exec", "cat", "--echo", "--welcome", "hi"], "--exec hands the connection to the program: drop --welcome, --echo"),
        (["--exec", "'unclosed"], "Invalid value for '--exec': \"'unclosed\": No closing quotation"),
        (["--unix", "/tmp/x.sock", "--port", "4000"], "--unix replaces --host and --port: drop --port"),
        (["--unix-mode", "660"], "--unix-mode needs --unix PATH"),
        (
            ["--unix", "/tmp/x.sock", "--unix-mode", "999"],
            "Invalid value for '--unix-mode': '999' is not a file mode in octal, like 600 or 660",
        ),
    ],
)
def test_tcp_server_options_that_do_not_go_together(args, message) -> None:
    """Options that cannot work together are one usage error, exit 2, before anything listens."""
    result = CliRunner().invoke(main, ["tcp-server", *args])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == f"Error: {message}"


def test_tcp_client_unix_names_its_own_address() -> None:
    """tcp-client --unix with --port or --source is a usage error."""
    result = CliRunner().invoke(main, ["tcp-client", "--unix", "/tmp/x.sock", "--port", "4000", "--source", "127.0.0.2"])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == "Error: --unix names its own address: drop --port and --source"


@pytest.mark.parametrize(
    "url, message",
    [
        (
            "ws://[::1/ws",
            "Error: Invalid value for URL: 'ws://[::1/ws' is not a URL like ws://HOST:PORT/ws or wss://HOST:PORT/ws",
        ),
        ("ws://127.0.0.1:99999/ws", "Error: invalid URL 'ws://127.0.0.1:99999/ws': Port out of range 0-65535"),
        ("ws://127.0.0.1:abc/ws", "Error: invalid URL 'ws://127.0.0.1:abc/ws': Port could not be cast to integer value as 'abc'"),
        ("ws://127.0.0.1:0/ws", "Error: invalid URL 'ws://127.0.0.1:0/ws': the port must be 1-65535"),
    ],
)
def test_chat_connect_bad_urls_are_one_line(url: str, message: str) -> None:
    result = run_cli("chat", "connect", url, input=b"")
    assert result.returncode == (2 if "Invalid value" in message else 1)
    assert result.stderr.decode().splitlines()[-1] == message and "Traceback" not in result.stderr.decode()


def test_host_takes_ipv6_with_or_without_brackets() -> None:
    for server in (True, False):
        assert Host(server).convert("[::1]", None, None) == "::1"
        assert Host(server).convert("::1", None, None) == "::1"
        assert Host(server).convert("fe80::1%lo", None, None) == "fe80::1%lo"
        assert Host(server).convert("example.org", None, None) == "example.org"


@pytest.mark.parametrize(
    "command, message",
    [
        (["tcp-server", "--hex", "-q"], "--hex logs payloads and -q logs none: choose one"),
        (["udp-recv", "--hex", "-q"], "--hex prints datagrams and -q prints none: choose one"),
    ],
)
def test_options_that_contradict_each_other_are_refused(command: list[str], message: str) -> None:
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == f"Error: {message}"
