"""The ``socketlab`` command line: options in, library calls out.

Nothing here serves or parses a protocol. One module per command group
(:mod:`~socketlab.cli.tcp`, :mod:`~socketlab.cli.chat`, :mod:`~socketlab.cli.udp`,
:mod:`~socketlab.cli.bench`), what they share in :mod:`~socketlab.cli.options`.
Library errors (:class:`~socketlab.errors.SocketlabError`) become one
``Error: ...`` line on stderr and exit status 1, translated once, by the
top-level group. Library modules are imported inside each command so
``socketlab --help`` starts fast.
"""

from __future__ import annotations

import errno
import sys
from typing import Any

import click

from socketlab import __version__
from socketlab.cli import bench, chat, tcp, udp
from socketlab.cli.options import OUTPUT_ERRORS, drop_stdout
from socketlab.errors import SocketlabError

__all__ = ["main", "run"]


class Commands(click.Group):
    """socketlab's top-level group: a library error from any command becomes click's one-line error, here, once."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SocketlabError as error:
            raise click.ClickException(str(error)) from None


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="socketlab")
def main() -> None:
    """Socket tools: TCP welcome/echo server and client, rooms chat, UDP.

    \b
    socketlab demo                        # the whole tutorial, narrated
    socketlab tcp-server --port 3000      # welcome server (Ctrl-C stops)
    socketlab tcp-client --port 3000 hi   # send a line, print the reply
    """


@main.command()
def demo() -> None:
    """Run the tutorial on loopback and narrate what each side sees.

    Starts servers on free ports in this process, connects clients to them and
    prints a transcript. Nothing leaves this machine.

    \b
    Example:
      socketlab demo
    """
    from socketlab.demo import run_demo

    run_demo(click.echo)


for command in (tcp.tcp_server, tcp.tcp_client, chat.chat, udp.udp_recv, udp.udp_send, bench.bench):
    main.add_command(command)


def run() -> None:
    """The console script: :func:`main`, with unwritable output as one line, not a traceback.

    A reader that went away (``socketlab demo | head``) ends the command
    quietly with status 1; a full disk or a failing device says so.
    """
    try:
        main()
    except OSError as error:
        if error.errno not in OUTPUT_ERRORS:
            raise
        drop_stdout()
        if error.errno != errno.EPIPE:
            sys.stderr.write(f"Error: cannot write output: {error.strerror}\n")
        sys.exit(1)


if __name__ == "__main__":
    run()
