"""``socketlab chat serve`` and ``chat connect``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click

from socketlab.addresses import DEFAULT_HOST

from socketlab.cli.options import (
    Finite,
    client_host_option,
    client_port_option,
    Origin,
    RedisUrl,
    WebAddress,
    access_options,
    access_rules,
    client_tls,
    host_option,
    log_to_stdout,
    per_ip_option,
    port_option,
    server_tls,
    tls_client_options,
    tls_server_options,
    unix_address,
    unix_server_options,
)

if TYPE_CHECKING:
    from socketlab.chat.client import LineClient


@click.group()
def chat() -> None:
    """Line-based chat with rooms: a server and a client.

    \b
    socketlab chat serve --port 3000 --room-size 2
    socketlab chat connect --port 3000 --name alice --room chess
    """


@chat.command("serve")
@host_option
@port_option
@unix_server_options
@click.option(
    "--room-size", type=click.IntRange(0), default=0, show_default=True, help="Members per room, lobby excepted (0: no cap)."
)
@click.option("--max-clients", type=click.IntRange(1), default=1000, show_default=True, help="Clients connected at once.")
@click.option("--max-line", type=click.IntRange(16), default=4096, show_default=True, help="Longest line in bytes.")
@click.option(
    "--max-backlog",
    type=click.IntRange(1024),
    default=1024 * 1024,
    show_default=True,
    help="Bytes waiting for a client before it is dropped as too slow.",
)
@click.option(
    "--idle-timeout",
    type=Finite(0, min_open=True),
    default=None,
    help="Drop clients silent for this many seconds (default: never).",
)
@click.option(
    "--max-rate",
    type=Finite(0, seconds=False),
    default=20.0,
    show_default=True,
    metavar="LINES",
    help=(
        "Lines per second per client (a burst of twice that; bytes: 8 MiB/s); over it a client is read later, "
        "never dropped (0: no limit)."
    ),
)
@click.option("--web", type=WebAddress(), help="Also serve the chat page and its WebSocket (/ws) here (0: a free port).")
@click.option(
    "--web-origin",
    "web_origins",
    type=Origin(),
    multiple=True,
    help="Another origin whose pages may open the WebSocket (repeatable).",
)
@click.option(
    "--web-root",
    type=click.Path(exists=True, file_okay=False, dir_okay=True),
    metavar="FOLDER",
    help="With --web: serve this folder's page instead of socketlab's (e.g. the tutorial's Socket.IO project).",
)
@per_ip_option
@access_options
@tls_server_options
@click.option(
    "--redis",
    "redis_url",
    type=RedisUrl(),
    envvar="SOCKETLAB_REDIS",
    help="Join a cluster through Redis: redis://HOST:PORT/DB, rediss://, a password in the URL (env SOCKETLAB_REDIS).",
)
@click.option(
    "--cluster",
    default="socketlab",
    show_default=True,
    metavar="NAME",
    help="With --redis: the cluster's name; servers with the same Redis and name serve one chat.",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    help=(
        "With --redis: let several servers of the cluster on this machine listen on the same port and --web port "
        "(SO_REUSEPORT); the kernel spreads new clients over them, one core each."
    ),
)
@click.option(
    "--metrics",
    type=WebAddress(),
    callback=lambda ctx, param, value: _needs_prometheus(value),
    help=(
        "Serve Prometheus metrics at http://[HOST:]PORT/metrics (HOST: 127.0.0.1 whatever --host is; 0: a free port; "
        "pip install 'socketlab[metrics]'; docs/security.md)."
    ),
)
@click.option("-v", "--verbose", is_flag=True, help="Also log every message's text.")
@click.option("-q", "--quiet", is_flag=True, help="Log only start, stop and errors.")
def chat_serve(
    host: str,
    port: int,
    unix_path: str | None,
    unix_mode: int,
    room_size: int,
    max_clients: int,
    max_line: int,
    max_backlog: int,
    idle_timeout: float | None,
    max_rate: float,
    web: tuple[str | None, int] | None,
    web_origins: tuple[str, ...],
    web_root: str | None,
    max_per_ip: int | None,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
    tls_cert: str | None,
    tls_key: str | None,
    redis_url: str | None,
    cluster: str,
    reuse_port: bool,
    metrics: tuple[str | None, int] | None,
    verbose: bool,
    quiet: bool,
) -> None:
    """Run the chat server; nc, telnet, 'chat connect' and browsers are clients.

    Every line a client sends reaches the other members of its room as
    '<name> text'. Commands: /nick /join /leave /who /rooms /msg /quit /help
    (docs/protocol.md). With --web, browsers join the same rooms from the
    page it serves. With --redis, every server started with the same Redis
    and --cluster serves one chat (docs/cluster.md). Ctrl-C or SIGTERM tells
    clients and stops.

    \b
    Examples:
      socketlab chat serve --port 3000 --room-size 2
      socketlab chat serve --room-size 2 --web 8080   # and open http://127.0.0.1:8080/
      socketlab chat serve --room-size 2 --web 8080 --web-root chat_example_join
      socketlab chat serve --port 3001 --redis redis://127.0.0.1:6379/0
      socketlab chat serve --port 3001 --redis redis://127.0.0.1:6379/0 --reuse-port   # one per core
      socketlab chat serve --metrics 127.0.0.1:9100   # Prometheus's format at /metrics
    """
    from socketlab.chat.config import ChatConfig
    from socketlab.chat.server import ChatServer
    from socketlab.serving import run_until_signal

    if web_root is not None and web is None:
        raise click.UsageError("--web-root needs --web PORT: the folder is served on the web address.")
    if reuse_port and not redis_url:
        raise click.UsageError(
            "--reuse-port needs --redis URL: servers sharing a port must be one cluster, or the chat is split among them."
        )
    if reuse_port and unix_path is not None:
        raise click.UsageError("--reuse-port is for TCP ports: a UNIX socket file has one server.")
    config = ChatConfig(
        room_size=room_size,
        max_clients=max_clients,
        max_line=max_line,
        max_backlog=max_backlog,
        idle_timeout=idle_timeout,
        max_rate=max_rate,
        access=access_rules(allow, deny),
        max_per_ip=max_per_ip,
        web=(web[0] or host, web[1]) if web is not None else None,
        web_origins=web_origins,
        web_root=web_root,
        tls=server_tls(tls_cert, tls_key),
        redis=redis_url or None,
        cluster=cluster,
        reuse_port=reuse_port,
        metrics=(metrics[0] or DEFAULT_HOST, metrics[1]) if metrics is not None else None,
    )
    log_to_stdout()
    logging.getLogger("socketlab.chat.messages").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if quiet:
        logging.getLogger("socketlab.chat.clients").setLevel(logging.WARNING)
        logging.getLogger("socketlab.chat.web").setLevel(logging.WARNING)
    address = unix_address(click.get_current_context(), unix_path, unix_mode) or (host, port)
    with ChatServer(address, config) as server:
        run_until_signal(server)


def _needs_prometheus(metrics: tuple[str | None, int] | None) -> tuple[str | None, int] | None:
    """--metrics needs the metrics extra: one error line saying how to install it, before anything listens."""
    if metrics is not None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise click.ClickException(
                "--metrics needs the prometheus_client package: pip install 'socketlab[metrics]', "
                "or pip install '.[metrics]' from a checkout"
            ) from None
    return metrics


@chat.command("connect")
@click.argument("url", required=False, metavar="[ws://HOST:PORT/ws]")
@client_host_option
@client_port_option
@click.option(
    "--unix",
    "unix_path",
    metavar="PATH",
    type=click.Path(dir_okay=False),
    help="Connect to a chat server's UNIX domain socket instead of --host/--port.",
)
@click.option(
    "--name", callback=lambda _ctx, _param, value: _checked_name(value, "nickname"), help="Nickname to take at once (/nick)."
)
@click.option(
    "--room", callback=lambda _ctx, _param, value: _checked_name(value, "room name"), help="Room to join at once (/join)."
)
@click.option(
    "--timeout",
    type=Finite(0, min_open=True),
    default=5.0,
    show_default=True,
    help="Connect (and TLS handshake) timeout in seconds.",
)
@tls_client_options
@click.pass_context
def chat_connect(
    ctx: click.Context,
    url: str | None,
    host: str,
    port: int,
    unix_path: str | None,
    name: str | None,
    room: str | None,
    timeout: float,
    use_tls: bool,
    tls_ca: str | None,
    tls_no_verify: bool,
) -> None:
    """Chat from a terminal or a pipe: stdin lines out, server lines in.

    On a terminal, lines are edited with readline (history included) and
    incoming lines appear above the line being typed. At the end of input
    (Ctrl-D), on /quit or Ctrl-C it says goodbye and waits for the server to
    close. A ws:// or wss:// URL joins through the WebSocket of 'chat serve
    --web'. Exits 1 when the server refuses the connection (server full,
    too many connections from this address, ...).

    \b
    Examples:
      socketlab chat connect --port 3000 --name alice --room chess
      socketlab chat connect ws://127.0.0.1:8080/ws --name bob
      socketlab chat connect --unix /run/chat.sock
    """
    client = _open_chat_client(ctx, url, host, port, unix_path, timeout, use_tls, tls_ca, tls_no_verify)
    from socketlab.chat.client import run_session

    try:
        click.echo(f"Connected to Server {client.address}{' (TLS)' if client.tls else ''}", err=True)
        end = run_session(client, name=name, room=room)
    finally:
        client.close()
    click.echo("Disconnected from Server", err=True)
    if end.signal:
        ctx.exit(128 + end.signal)


def _checked_name(value: str | None, what: str) -> str | None:
    """*value* in the form the server compares names in (NFC), or a usage error when the server would refuse it."""
    if value is None:
        return None
    import unicodedata

    from socketlab.chat.words import NAME_RULE, RESERVED_NAME, valid_name

    name = unicodedata.normalize("NFC", value)
    if not valid_name(name):
        raise click.BadParameter(f"invalid {what} {value!r}: {NAME_RULE}")
    if what == "nickname" and RESERVED_NAME.match(name):
        raise click.BadParameter(f"nickname {value} is reserved: names user<N> are the server's to give")
    return name


def _open_chat_client(
    ctx: click.Context,
    url: str | None,
    host: str,
    port: int,
    unix_path: str | None,
    timeout: float,
    use_tls: bool,
    tls_ca: str | None,
    tls_no_verify: bool,
) -> LineClient:
    """The connection ``chat connect`` asked for: a URL, a UNIX socket, or --host/--port."""
    from click.core import ParameterSource

    explicit = [f"--{name}" for name in ("host", "port") if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    wants_tls = use_tls or tls_ca is not None or tls_no_verify
    if url is not None:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(url)
        except ValueError:  # Invalid IPv6 URL
            parts = urlsplit("")
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise click.BadParameter(f"{url!r} is not a URL like ws://HOST:PORT/ws or wss://HOST:PORT/ws", param_hint="URL")
        if unix_path or explicit:
            raise click.UsageError(f"a URL names its own address: drop {' and '.join(explicit) or '--unix'}")
        if parts.scheme == "ws" and wants_tls:
            raise click.UsageError("ws:// is plaintext: use a wss:// URL for TLS")
        from socketlab.chat.client import WebSocketClient

        tls = client_tls(True, tls_ca, tls_no_verify) if parts.scheme == "wss" else None
        return WebSocketClient.connect(url, timeout, tls=tls)
    if unix_path is not None:
        if explicit:
            raise click.UsageError(f"--unix names its own address: drop {' and '.join(explicit)}")
        if wants_tls:
            raise click.UsageError("--unix connects without TLS: drop --tls, --tls-ca and --tls-no-verify")
        from socketlab.chat.client import ChatClient

        return ChatClient.connect_unix(unix_path, timeout)
    from socketlab.chat.client import ChatClient

    return ChatClient.connect(host, port, timeout, tls=client_tls(use_tls, tls_ca, tls_no_verify))
