"""Every example in every command's --help works as written.

Each ``socketlab ...`` line of a help text is parsed by click (CliRunner's
command tree, in-process), and the ones that can run on this machine alone
run, per help text and in order, as a user would run them from a shell in
an empty folder: servers (a line ending in ``&``, or any server command) in
the background until the block ends, clients to completion, ``< FILE`` and
``> FILE`` as redirections. Ports are replaced by free ones (the same
literal port, the same free port within a help text) and absolute paths by
paths in a temporary folder. A client with no server of its own in the
block gets the plain server it talks to. An example that copies ``< A`` to
``> B`` must copy it unchanged.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import click
import pytest
from click.testing import CliRunner

from socketlab.cli import main
from support import CLI, TIMEOUT, LineReader

pytestmark = pytest.mark.timeout(60)

#: Commands that serve until stopped, and what announces that they listen.
SERVERS = {"tcp-server": "listening on", "udp-recv": "Listening for UDP on", "chat serve": "listening on"}
#: The server a client example talks to when its help text starts none.
DEFAULT_SERVER = {"tcp-client": "tcp-server", "udp-send": "udp-recv", "chat connect": "chat serve"}
#: Commands whose examples run here; the others (bench, chat connect to a URL) are only parsed.
RUNNABLE = {*SERVERS, *DEFAULT_SERVER, "demo"}
#: Options whose examples need what a bare machine lacks (a Redis, certificates, a page folder).
NEEDS_MORE = ("--redis", "--tls", "--web-root", "ws://", "wss://")


def all_commands(group: click.Group = main, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path, the groups' included: (), ("chat",), ("chat", "serve"), ..."""
    yield path
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from all_commands(command, (*path, name))
        else:
            yield (*path, name)


def help_text(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(main, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def examples(text: str) -> list[str]:
    """The ``socketlab ...`` lines of a help text, as written."""
    return [line.strip() for line in text.splitlines() if line.strip().startswith("socketlab ")]


@dataclass
class Example:
    """One example line, split as a shell splits it."""

    line: str
    args: list[str]
    stdin: str | None = None
    stdout: str | None = None
    background: bool = False
    command: str = field(init=False)

    def __post_init__(self) -> None:
        self.command = command_name(self.args)

    def needs_more(self) -> bool:
        return any(marker in word for word in self.args for marker in NEEDS_MORE)

    def port(self) -> str | None:
        return self.option("--port")

    def option(self, name: str) -> str | None:
        """The value given to option *name*, or None."""
        for option, value in zip(self.args, self.args[1:], strict=False):
            if option == name:
                return value
        return None


def command_name(args: list[str]) -> str:
    if args[:1] in (["chat"], ["bench"]):
        return " ".join(args[:2])
    return args[0] if args else ""


def split_example(line: str) -> Example:
    words = shlex.split(line, comments=True)
    assert words[0] == "socketlab", line
    example = Example(line, [])
    rest = iter(words[1:])
    for word in rest:
        if word == "&":
            example.background = True
        elif word == "<":
            example.stdin = next(rest)
        elif word == ">":
            example.stdout = next(rest)
        elif word in ("|", ";", "&&"):
            break  # a pipeline's or list's next command is not socketlab's
        else:
            example.args.append(word)
    example.command = command_name(example.args)
    return example


def parse(args: list[str]) -> click.Context:
    """Parse *args* as ``socketlab ARGS`` would, down to the command; raises click's UsageError when they are wrong."""
    ctx = click.Context(main, info_name="socketlab")
    command: click.Command = main
    while isinstance(command, click.Group):
        name, found, args = command.resolve_command(ctx, args)
        assert found is not None and name is not None
        command = found
        if isinstance(command, click.Group):
            ctx = click.Context(command, info_name=name, parent=ctx)
    return command.make_context(name, list(args), parent=ctx)


def every_example() -> list[tuple[str, str]]:
    return [(" ".join(path) or "socketlab", line) for path in all_commands() for line in examples(help_text(path))]


def test_every_command_shows_examples() -> None:
    """Each command's help shows at least one example of that very command."""
    for path in all_commands():
        if not path or path in (("chat",), ("bench",)):
            continue
        lines = examples(help_text(path))
        assert any(line.startswith(f"socketlab {' '.join(path)}") for line in lines), path


@pytest.mark.parametrize("where, line", every_example())
def test_every_example_parses(where: str, line: str, tmp_path, monkeypatch) -> None:
    """Click accepts every example's options and arguments as written."""
    monkeypatch.chdir(tmp_path)
    example = split_example(line)
    folder = example.option("--web-root")
    if folder is not None:  # the tutorial's project folder, which the example expects the user to have
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    for name in ("SOCKETLAB_HOST", "SOCKETLAB_PORT", "SOCKETLAB_REDIS"):
        monkeypatch.delenv(name, raising=False)
    if example.option("--redis") is not None:
        pytest.importorskip("redis")
    try:
        parse(example.args)
    except click.ClickException as error:
        pytest.fail(f"{where}: {line!r}: {error.format_message()}")


# -- running them ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Block:
    """One help text's examples, run in order in an empty folder."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.ports: dict[str, str] = {}
        self.servers: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self.readers: list[LineReader] = []
        self.failures: list[str] = []

    # Rewriting an example for this machine: ports and absolute paths.

    def mapped_port(self, literal: str) -> str:
        if literal not in self.ports:
            self.ports[literal] = str(free_port())
        return self.ports[literal]

    def localize(self, command: str, args: list[str]) -> list[str]:
        """*args* with free ports for literal ones, paths in the folder for absolute ones, and a port where the
        example relies on the default one (3000)."""
        out = []
        for previous, word in zip(["", *args], args, strict=False):
            if previous in ("--port", "--web") and word.isdigit():
                word = self.mapped_port(word)
            elif previous in ("--unix", "--output", "-o") or word.startswith("/"):
                word = os.path.join(self.folder, os.path.basename(word)) if word.startswith("/") else word
            else:
                word = re.sub(r"(?<=:)(\d{2,5})\b", lambda m: self.mapped_port(m.group(1)), word)
            out.append(word)
        if command in (*SERVERS, *DEFAULT_SERVER) and "--port" not in args and "--unix" not in args:
            out += ["--port", self.mapped_port("3000")]
        return out

    def key(self, example: Example, args: list[str]) -> tuple[str, str]:
        """Where a server listens, or a client connects: a TCP or UDP port, or a UNIX path."""
        kind = "udp" if example.command in ("udp-recv", "udp-send") else "tcp"
        unix = Example("", args).option("--unix")
        if unix is not None:
            return ("unix", unix)
        port = Example("", args).port()
        assert port is not None, args
        return (kind, port)

    # Running.

    def start_server(self, example: Example, args: list[str]) -> None:
        key = self.key(example, args)
        self.stop_server(key)  # the user stops the previous server on that port first
        proc = subprocess.Popen(
            CLI + args,
            cwd=self.folder,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        out = LineReader(proc.stdout)
        self.readers.append(out)
        try:
            out.wait_for(re.escape(SERVERS[example.command]))
        except AssertionError as error:
            proc.kill()
            proc.wait(TIMEOUT)
            self.failures.append(f"{example.line!r} did not start: {error}; stderr: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            return
        self.servers[key] = proc

    def stop_server(self, key: tuple[str, str]) -> None:
        proc = self.servers.pop(key, None)
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(TIMEOUT)
        errors = proc.stderr.read()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
        if status != 0 or b"Traceback" in errors:
            self.failures.append(f"a server stopped with status {status}: {errors.decode(errors='replace')}")

    def run_client(self, example: Example, args: list[str]) -> None:
        if example.command in DEFAULT_SERVER:
            key = self.key(example, args)
            if key not in self.servers:
                server = DEFAULT_SERVER[example.command]
                where = ["--unix", key[1]] if key[0] == "unix" else ["--port", key[1]]
                self.start_server(Example("", server.split()), [*server.split(), *where])
        stdin: Any = subprocess.DEVNULL
        if example.stdin is not None:
            source = os.path.join(self.folder, example.stdin)
            if not os.path.exists(source):
                with open(source, "wb") as file:
                    file.write(os.urandom(300_000))
            stdin = open(source, "rb")
        try:
            result = subprocess.run(CLI + args, cwd=self.folder, stdin=stdin, capture_output=True, timeout=TIMEOUT)
        finally:
            if stdin is not subprocess.DEVNULL:
                stdin.close()
        if result.returncode != 0 or b"Traceback" in result.stderr:
            self.failures.append(f"{example.line!r} exited {result.returncode}: {result.stderr.decode(errors='replace')}")
            return
        if example.stdout is not None:
            with open(os.path.join(self.folder, example.stdout), "wb") as file:
                file.write(result.stdout)
            if example.stdin is not None:
                with open(os.path.join(self.folder, example.stdin), "rb") as source_file:
                    if result.stdout != source_file.read():
                        self.failures.append(f"{example.line!r} did not copy {example.stdin} unchanged to {example.stdout}")

    def run(self, lines: list[str]) -> list[str]:
        try:
            for line in lines:
                example = split_example(line)
                if example.command not in RUNNABLE or example.needs_more():
                    continue
                args = self.localize(example.command, example.args)
                if example.command in SERVERS:
                    self.start_server(example, args)
                else:
                    self.run_client(example, args)
        finally:
            for key in list(self.servers):
                self.stop_server(key)
        return self.failures


def runnable_help_texts() -> list[str]:
    texts = []
    for path in all_commands():
        lines = [line for line in examples(help_text(path)) if split_example(line).command in RUNNABLE]
        if lines:
            texts.append(" ".join(path) or "socketlab")
    return texts


@pytest.mark.parametrize("where", runnable_help_texts())
def test_examples_run_as_written(where: str) -> None:
    """Each help text's runnable examples, run in order against real servers on free ports, all succeed."""
    path = () if where == "socketlab" else tuple(where.split())
    with tempfile.TemporaryDirectory(prefix="sl-") as folder:  # short: UNIX socket paths have a limit
        failures = Block(folder).run(examples(help_text(path)))
    assert not failures, "\n".join(failures)
