"""``socketlab udp-recv`` and ``udp-send``."""

from __future__ import annotations

import sys
from typing import Any

import click

from socketlab.cli.options import (
    Finite,
    open_output,
    access_options,
    access_rules,
    client_host_option,
    client_port_option,
    host_option,
    log_to_stdout,
    port_option,
    stopped_by_ctrl_c,
)


#: The most of stdin one --raw datagram carries: what one IPv4 datagram can (IPv6's limit is a little higher).
MAX_RAW_DATAGRAM = 65507


@click.command("udp-recv")
@host_option
@port_option
@click.option("--echo", is_flag=True, help="Send each datagram back to its sender.")
@click.option("--hex", "hex_dump", is_flag=True, help="Print datagrams as hex dumps.")
@click.option("-q", "--quiet", is_flag=True, help="Print no datagrams, only the totals at exit.")
@click.option("--count", type=click.IntRange(1), default=None, help="Exit 0 after this many datagrams.")
@click.option("--timeout", type=Finite(0, min_open=True), default=None, help="Exit 1 after this many seconds without a datagram.")
@click.option(
    "--output",
    metavar="FILE",
    default=None,
    help="Write every datagram's bytes there unchanged, one after another ('-': stdout, the log then on stderr).",
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
    output: str | None,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
) -> None:
    """Print each UDP datagram with its sender's address.

    Datagrams arrive whole or not at all; this counts what arrives and prints
    the totals (datagrams, bytes, senders) when it stops.

    \b
    Examples:
      socketlab udp-recv --port 3000 --count 1
      socketlab udp-recv --port 3000 --count 1 --output packet.bin   # nc -u -l > packet.bin
    """
    from socketlab.serving import run_until_signal
    from socketlab.udp import DatagramReceiver

    if hex_dump and quiet:
        raise click.UsageError("--hex prints datagrams and -q prints none: choose one")
    access = access_rules(allow, deny)
    log_to_stdout(stream=sys.stderr if output == "-" else None)
    payload = "hex" if hex_dump else "quiet" if quiet or output is not None else "text"
    receiver = DatagramReceiver((host, port), echo=echo, payload=payload, max_datagrams=count, timeout=timeout, access=access)
    try:  # the output is opened (a file emptied) once the address is bound
        sink = receiver.output = open_output(output) if output is not None else None
    except BaseException:
        receiver.server_close()
        raise
    try:
        with receiver:
            run_until_signal(receiver, on_stop=receiver.on_close)
    finally:
        if sink is not None:
            sink.close()


@click.command("udp-send")
@client_host_option
@client_port_option
@click.option(
    "--repeat",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Send MESSAGE this many times, as fast as the socket allows.",
)
@click.option("--interval", type=Finite(0), default=0.0, help="Seconds between datagrams (pacing).")
@click.option(
    "--wait-reply",
    type=Finite(0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Then wait this long for datagrams back, printing each as it arrives with its sender (exit 1 if none).",
)
@click.option("--hex", "hex_dump", is_flag=True, help="With --wait-reply: print replies as hex dumps.")
@click.option(
    "--raw",
    is_flag=True,
    help="Send stdin unchanged, newlines included: each read of it one datagram of up to 65,507 bytes (nc -u).",
)
@click.argument("message", nargs=-1)
def udp_send(
    host: str,
    port: int,
    repeat: int,
    interval: float,
    wait_reply: float | None,
    hex_dump: bool,
    raw: bool,
    message: tuple[str, ...],
) -> None:
    """Send MESSAGE as one datagram (or each stdin line as one; stdin unchanged with --raw).

    Reports what was sent on stderr. UDP gives no delivery receipt: only
    --wait-reply, or the OS reporting that nobody listens, tells you more.
    Replies go to stdout, one line each: 'Reply from HOST:PORT: text' with
    control characters escaped (or a hex dump with --hex). Ctrl-C exits 130.

    \b
    Examples:
      socketlab udp-send --port 3000 Hello UDP Server
      socketlab udp-send --port 3000 --raw < packet.bin   # the file's bytes, unchanged
      socketlab udp-recv --port 3000 --echo -q &          # a UDP echo server
      socketlab udp-send --port 3000 --wait-reply 1 ping  # ... answers: Reply from 127.0.0.1:3000: ping
    """
    from socketlab.addresses import format_address
    from socketlab.udp import send_datagrams

    if message:
        if raw:
            raise click.UsageError("--raw sends stdin: drop the MESSAGE")
        payloads: Any = [" ".join(message).encode()]
    else:
        if repeat > 1:
            raise click.UsageError("--repeat needs a MESSAGE (stdin is sent once)")
        if raw:
            stdin: Any = sys.stdin.buffer  # a BufferedReader: read1() is one read of what is there
            payloads = iter(lambda: stdin.read1(MAX_RAW_DATAGRAM), b"")
        else:
            payloads = (line[:-2] if line.endswith(b"\r\n") else line.rstrip(b"\n") for line in sys.stdin.buffer)
    target = format_address((host, port))
    with stopped_by_ctrl_c():
        send_datagrams(
            host,
            port,
            payloads,
            repeat=repeat,
            interval=interval,
            wait_reply=wait_reply,
            on_sent=lambda report: click.echo(report.describe(target), err=True),
            on_reply=lambda data, sender: click.echo(describe_reply(data, sender, hex_dump)),
        )


def describe_reply(data: bytes, sender: Any, hex_dump: bool) -> str:
    """One reply as udp-send prints it: its sender, then its text escaped (or a hex dump)."""
    from socketlab.addresses import format_address
    from socketlab.text import display_bytes, hexdump, plural

    peer = format_address(sender)
    if not data:
        return f"Reply from {peer} (empty datagram)"
    if hex_dump:
        return f"Reply from {peer} ({plural(len(data), 'byte')}):\n{hexdump(data)}"
    return f"Reply from {peer}: {display_bytes(data)}"
