"""The tutorial's TCP server and client in a dozen lines of socketlab.

Run it: python docs/examples/tcp_welcome.py
"""

import threading

from socketlab.tcp import WelcomeServer, exchange


class LoudServer(WelcomeServer):
    """Override an event, as Node code would pass a callback."""

    def on_data(self, peer: str, chunk: bytes) -> None:
        print(f"server got {chunk!r} from a client")


with LoudServer(("127.0.0.1", 0)) as server:  # port 0: the OS picks a free port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    reply = exchange(host, port, b"Hello Socket Server\n")  # send, end, read until closed
    print(f"client got {reply!r}")
    server.shutdown()
