"""socketlab: socket tools and a small library for TCP, chat rooms and UDP.

The command line (``socketlab --help``) is a thin layer over the library:

- :mod:`socketlab.tcp` -- the welcome/echo server and a client helper;
- :mod:`socketlab.chat` -- the line-based chat server with rooms;
- :mod:`socketlab.udp` -- the datagram receiver and sender;
- :mod:`socketlab.lines` and :mod:`socketlab.chat.protocol` -- the sans-IO
  protocol objects the servers are built on.

Submodules are imported on demand so the command line starts quickly.
"""

__version__ = "0.1.0"
