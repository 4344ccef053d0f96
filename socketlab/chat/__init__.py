"""The chat: a line-based broadcast server with rooms, and its client.

- :mod:`socketlab.chat.protocol` -- sans-IO rules: names, rooms, commands;
- :mod:`socketlab.chat.server` -- threads and sockets that move the bytes;
- :mod:`socketlab.chat.client` -- the interactive line client.

The wire protocol is documented in docs/protocol.md.
"""
