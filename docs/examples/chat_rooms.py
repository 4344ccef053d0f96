"""A chat server with rooms of two, and three clients, in one script.

Run it: python docs/examples/chat_rooms.py
"""

import threading

from socketlab.chat.client import ChatClient
from socketlab.chat.server import ChatServer


def skip(inbox, count):
    """Drop *count* notices we are not interested in here."""
    for _ in range(count):
        next(inbox)


with ChatServer(("127.0.0.1", 0), room_size=2) as server:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    one, two, three = (ChatClient.connect("127.0.0.1", port) for _ in range(3))
    inbox1, inbox2, inbox3 = one.lines(), two.lines(), three.lines()
    skip(inbox1, 3), skip(inbox2, 2), skip(inbox3, 1)  # welcomes and join notices

    one.send_line("/join den")  # like socket.join(room) in Socket.IO
    print("user1 reads:", next(inbox1))
    skip(inbox2, 1), skip(inbox3, 1)  # "* user1 left lobby"
    two.send_line("/join den")
    print("user2 reads:", next(inbox2))
    print("user1 reads:", next(inbox1))
    skip(inbox3, 1)  # "* user2 left lobby"
    three.send_line("/join den")  # the room holds two: refused
    print("user3 reads:", next(inbox3))

    two.send_line("only the den hears this")  # like io.to(room).emit(...)
    print("user1 reads:", next(inbox1))
    server.shutdown()
