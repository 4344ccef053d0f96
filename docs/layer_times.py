"""Where a Socket.IO chat line's time goes inside a running server, layer by layer.

    python docs/layer_times.py                              # 1,000 members, a line each every 0.2 s
    python docs/layer_times.py --clients 10000 --interval 2

Starts ``socketlab chat serve --web`` in this process with a clock (``time.perf_counter()``)
around each layer of the path a Socket.IO line takes, runs ``socketlab bench chat --scenario
pairs --transport socketio`` against it (``--placement split``: it pins this process to the first
CPU and itself to the others), and
prints each layer's calls and mean time per call over a window of the steady state, with the
server's user and system CPU per line over the same window. Each clock costs about 0.3 us, so
the layers' sum is a little above the plain server's cost. Layers nest: a layer's time
includes the layers it calls (``Outbox.write`` is the ``send()`` to one member).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from typing import Any

from socketlab.bench.common import cpu_times
from socketlab.chat import outbox, reader, service, socketio_chat, web
from socketlab import engineio, engineio_http

#: The path of one line, outermost first: (class, method).
LAYERS = [
    (reader.ReaderLoop, "_readable"),
    (web.WebConnection, "data_received"),
    (engineio_http.EngineConnection, "_websocket_data"),
    (engineio.EngineSession, "websocket_message"),
    (socketio_chat.SocketIOChat, "event"),
    (socketio_chat.SocketIOChat, "settle"),
    (service.ChatService, "receive"),
    (socketio_chat.SocketIOMember, "send"),
    (socketio_chat.SocketIOChat, "encoded"),
    (engineio.EngineSession, "send_many"),
    (engineio_http.EngineConnection, "deliver_messages"),
    (outbox.Outbox, "write"),
]


def clock(cls: type, name: str, totals: dict[str, list[float]]) -> None:
    """Wrap cls.name so that its calls and their time add up in totals[key]."""
    original = getattr(cls, name)
    key = f"{cls.__name__}.{name}"
    totals[key] = [0, 0.0]
    entry = totals[key]
    now = time.perf_counter

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = now()
        try:
            return original(*args, **kwargs)
        finally:
            entry[0] += 1
            entry[1] += now() - started

    setattr(cls, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before the window opens")
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args()
    totals: dict[str, list[float]] = {}
    for cls, name in LAYERS:
        clock(cls, name, totals)

    from socketlab.chat.config import ChatConfig
    from socketlab.chat.server import ChatServer

    config = ChatConfig(max_clients=args.clients + 10, room_size=2, max_rate=0, web=("127.0.0.1", 0))
    server = ChatServer(("127.0.0.1", 0), config)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    duration = args.warmup + args.window + 5
    bench = subprocess.Popen(
        [sys.executable, "-m", "socketlab", "bench", "chat", "--scenario", "pairs", "--transport", "socketio"]
        + ["--clients", str(args.clients), "--interval", str(args.interval), "--duration", str(duration)]
        + ["--target", f"127.0.0.1:{server.web_address[1]}", "--server-pid", str(os.getpid()), "--placement", "split"],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(args.warmup + 3)  # the storm and the joins, then the warm-up
    for entry in totals.values():
        entry[0], entry[1] = 0, 0.0
    user, system = cpu_times(os.getpid())
    time.sleep(args.window)
    snapshot = {key: tuple(entry) for key, entry in totals.items()}
    user, system = (after - before for after, before in zip(cpu_times(os.getpid()), (user, system), strict=True))
    bench.wait()
    server.shutdown()
    server.server_close()
    lines = args.clients / args.interval * args.window
    print(f"{args.clients:,} members, a line each every {args.interval} s; {args.window} s window, about {lines:,.0f} lines")
    print(f"server CPU per line: user {user / lines * 1e6:.1f} us, system {system / lines * 1e6:.1f} us")
    for key, (calls, seconds) in snapshot.items():
        mean = seconds / calls * 1e6 if calls else 0.0
        print(f"  {key:42s} {calls / lines:5.2f} calls per line  {mean:7.2f} us per call")


if __name__ == "__main__":
    main()
