"""``socketlab chat serve`` and ``chat connect``."""

from __future__ import annotations

import logging

import click

from socketlab.cli.options import (
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
)


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
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Drop clients silent for this many seconds (default: never).",
)
@click.option(
    "--max-rate",
    type=click.FloatRange(0),
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
@click.option("-v", "--verbose", is_flag=True, help="Also log every message's text.")
@click.option("-q", "--quiet", is_flag=True, help="Log only start, stop and errors.")
def chat_serve(
    host: str,
    port: int,
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
    """
    from socketlab.chat.config import ChatConfig
    from socketlab.chat.server import ChatServer
    from socketlab.serving import run_until_signal

    if web_root is not None and web is None:
        raise click.UsageError("--web-root needs --web PORT: the folder is served on the web address.")
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
    )
    log_to_stdout()
    logging.getLogger("socketlab.chat.messages").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if quiet:
        logging.getLogger("socketlab.chat.clients").setLevel(logging.WARNING)
        logging.getLogger("socketlab.chat.web").setLevel(logging.WARNING)
    with ChatServer((host, port), config) as server:
        run_until_signal(server)


@chat.command("connect")
@host_option
@port_option
@click.option("--name", help="Nickname to take at once (/nick).")
@click.option("--room", help="Room to join at once (/join).")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=5.0,
    show_default=True,
    help="Connect (and TLS handshake) timeout in seconds.",
)
@tls_client_options
def chat_connect(
    host: str,
    port: int,
    name: str | None,
    room: str | None,
    timeout: float,
    use_tls: bool,
    tls_ca: str | None,
    tls_no_verify: bool,
) -> None:
    """Chat from a terminal or a pipe: stdin lines out, server lines in.

    At the end of stdin it sends /quit and waits for the server to close.

    \b
    Example:
      socketlab chat connect --port 3000 --name alice --room chess
    """
    from socketlab.addresses import format_address
    from socketlab.chat.client import ChatClient, run_session

    tls = client_tls(use_tls, tls_ca, tls_no_verify)
    client = ChatClient.connect(host, port, timeout, tls=tls)
    with client:
        click.echo(f"Connected to Server {format_address((host, port))}{' (TLS)' if tls else ''}", err=True)
        run_session(client, name=name, room=room)
    click.echo("Disconnected from Server", err=True)
