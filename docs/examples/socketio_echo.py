"""The echo service the official Socket.IO and Engine.IO protocol test suites run against.

Run it: python docs/examples/socketio_echo.py [PORT]      (port 3000 unless given; Ctrl-C stops it)
Then, in test-suite/ of github.com/socketio/socket.io-protocol or engine.io-protocol: npm ci && npm test

Socket.IO at /socket.io/ does what the socket.io-protocol README's server does; plain Engine.IO
at /engine.io/ what the engine.io-protocol README's does. Both with the settings the suites
assume: a ping every 300 ms, 200 ms to answer it, 1 MB payloads, 1 s to connect, any origin.
"""

import sys
from typing import Any

from socketlab.engineio import EngineServer, EngineSession, EngineSettings, Message
from socketlab.socketio import Client, SocketIOServer
from socketlab.socketio_server import SocketIOService

settings = EngineSettings(ping_interval=0.3, ping_timeout=0.2, max_payload=1_000_000)
sio = SocketIOServer(settings, connect_timeout=1.0)
main, custom = sio.of("/"), sio.of("/custom")


@main.on("connect")
@custom.on("connect")
def connect(client: Client, auth: dict[str, Any]) -> None:
    client.emit("auth", auth)


@main.on("message")
def message(client: Client, *args: Any) -> None:
    client.emit("message-back", *args)


@main.on("message-with-ack")
def message_with_ack(client: Client, *args: Any) -> tuple[Any, ...]:
    return args  # the ack's arguments


class EngineEcho:
    """A plain Engine.IO application: every message goes back to its sender."""

    def opened(self, session: EngineSession) -> None:
        pass

    def received(self, session: EngineSession, message: Message) -> None:
        session.send(message)

    def closed(self, session: EngineSession, reason: str) -> None:
        pass


port = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
# no_delay=False for the suites: they wait for each message with a one-shot listener added once the one
# before has come, so two messages in one TCP segment (the CONNECT answer and the "auth" event) reach them
# together and the second is missed. With Nagle's algorithm on, the second waits for the ACK of the first,
# as the JavaScript server's waits for its first write to finish. A service keeps the default (True):
# Nagle costs some 40 ms whenever two messages leave together.
with SocketIOService(("127.0.0.1", port), sio, origins=["*"], no_delay=False) as service:
    service.mount("/engine.io/", EngineServer(EngineEcho(), settings))
    print(f"Socket.IO echo on http://{service.address_text}/socket.io/ (Engine.IO echo at /engine.io/)", flush=True)
    service.serve_until_signal()
