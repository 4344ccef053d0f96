"""The tutorial's UDP receiver and sender, with socketlab.

Run it: python docs/examples/udp_hello.py
"""

import threading

from socketlab.udp import DatagramReceiver, send_datagrams


class Collector(DatagramReceiver):
    received = []

    def on_datagram(self, data: bytes, sender) -> None:  # socket.on('message')
        self.received.append(f"receiver got {data!r} from {sender[0]}")


with Collector(("127.0.0.1", 0), max_datagrams=1) as receiver:  # bind to a free port
    thread = threading.Thread(target=receiver.serve_forever)
    thread.start()
    report = send_datagrams("127.0.0.1", receiver.server_address[1], [b"Hello UDP Server"])
    print(f"sender sent {report.datagrams} datagram of {report.bytes} bytes")
    thread.join()  # serve_forever returns after max_datagrams
    print(*receiver.received, sep="\n")
    print(receiver.totals.describe())
