"""``socketlab udp-recv`` and ``udp-send``."""

from __future__ import annotations

import sys
from typing import Any

import click

from socketlab.cli.options import access_options, access_rules, host_option, log_to_stdout, port_option


@click.command("udp-recv")
@host_option
@port_option
@click.option("--echo", is_flag=True, help="Send each datagram back to its sender.")
@click.option("--hex", "hex_dump", is_flag=True, help="Print datagrams as hex dumps.")
@click.option("-q", "--quiet", is_flag=True, help="Print no datagrams, only the totals at exit.")
@click.option("--count", type=click.IntRange(1), default=None, help="Exit 0 after this many datagrams.")
@click.option(
    "--timeout", type=click.FloatRange(0, min_open=True), default=None, help="Exit 1 after this many seconds without a datagram."
)
@access_options
def udp_recv(
    host: str,
    port: int,
    echo: bool,
    hex_dump: bool,
    quiet: bool,
    count: int | None,
    timeout: float | None,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
) -> None:
    """Print each UDP datagram with its sender's address.

    Datagrams arrive whole or not at all; this counts what arrives and prints
    the totals (datagrams, bytes, senders) when it stops.

    \b
    Example:
      socketlab udp-recv --port 3000 --count 1
    """
    from socketlab.serving import run_until_signal
    from socketlab.udp import DatagramReceiver

    access = access_rules(allow, deny)
    log_to_stdout()
    payload = "quiet" if quiet else "hex" if hex_dump else "text"
    receiver = DatagramReceiver((host, port), echo=echo, payload=payload, max_datagrams=count, timeout=timeout, access=access)
    with receiver:
        run_until_signal(receiver, on_stop=receiver.on_close)


@click.command("udp-send")
@host_option
@port_option
@click.option(
    "--repeat",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Send MESSAGE this many times, as fast as the socket allows.",
)
@click.option("--interval", type=click.FloatRange(0), default=0.0, help="Seconds between datagrams (pacing).")
@click.option(
    "--wait-reply",
    type=click.FloatRange(0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Wait this long for a datagram back and print it.",
)
@click.argument("message", nargs=-1)
def udp_send(host: str, port: int, repeat: int, interval: float, wait_reply: float | None, message: tuple[str, ...]) -> None:
    """Send MESSAGE as one datagram (or each stdin line as one).

    Reports what was sent on stderr. UDP gives no delivery receipt: only
    --wait-reply, or the OS reporting that nobody listens, tells you more.

    \b
    Examples:
      socketlab udp-send --port 3000 Hello UDP Server
      socketlab udp-send --port 7 --wait-reply 1 ping
    """
    from socketlab.addresses import format_address
    from socketlab.udp import send_datagrams

    if message:
        payloads: Any = [" ".join(message).encode()]
    else:
        if repeat > 1:
            raise click.UsageError("--repeat needs a MESSAGE (stdin lines are sent once)")
        payloads = (line[:-2] if line.endswith(b"\r\n") else line.rstrip(b"\n") for line in sys.stdin.buffer)
    report = send_datagrams(host, port, payloads, repeat=repeat, interval=interval, wait_reply=wait_reply)
    click.echo(report.describe(format_address((host, port))), err=True)
    if report.reply is not None:
        write_received(report.reply)


def write_received(data: bytes) -> None:
    """Received bytes to stdout: raw into a pipe, escaped text on a terminal."""
    if sys.stdout.isatty():
        from socketlab.text import display_bytes

        click.echo(display_bytes(data))
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
