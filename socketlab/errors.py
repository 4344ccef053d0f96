"""Exceptions raised by socketlab.

Every error socketlab raises on purpose derives from :class:`SocketlabError`
and carries a one-line message meant for a person; the command line prints it
as ``Error: <message>`` and exits with status 1.
"""

from __future__ import annotations


class SocketlabError(Exception):
    """Base class of socketlab's errors; ``str(error)`` is one readable line."""


class AddressError(SocketlabError):
    """A host or port could not be resolved, bound or connected to."""


class OutputError(SocketlabError):
    """What was received could not be written out (a full disk, a failing device)."""


class BenchError(SocketlabError):
    """A benchmark could not run or finish (a process that did not start, clients that could not connect).

    Only these become one ``Error: ...`` line in ``socketlab bench``: any other exception there is a
    bug and keeps its traceback.
    """
