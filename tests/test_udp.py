"""UDP receiver and sender: library in-process and the CLI as a user runs it."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading

import pytest

from socketlab import udp
from socketlab.errors import AddressError
from socketlab.udp import SOCKET_RCVBUF, DatagramReceiver, DatagramTooLarge, NoReply, send_datagrams
from support import CLI, TIMEOUT, CliServer, LineReader, has_ipv6, run_cli, wait_until

pytestmark = pytest.mark.timeout(30)

LISTENING = r"^Listening for UDP on .*:(\d+)$"


class Recorder(DatagramReceiver):
    """Keeps every datagram with its sender."""

    def __init__(self, *args, **kwargs) -> None:
        self.got: list[tuple[bytes, tuple]] = []
        super().__init__(*args, **kwargs)

    def on_datagram(self, data: bytes, sender) -> None:
        self.got.append((data, sender))


@pytest.fixture
def receiver():
    started = []

    def start(host: str = "127.0.0.1", **options) -> Recorder:
        recorder = Recorder((host, 0), **options)
        thread = threading.Thread(target=recorder.serve_forever, daemon=True)
        thread.start()
        started.append((recorder, thread))
        return recorder

    yield start
    for recorder, thread in started:
        recorder.shutdown()
        recorder.server_close()
        thread.join(TIMEOUT)
        assert not thread.is_alive()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def has_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN (root in a container may not)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> 12 & 1)
    return False


def receive_buffer() -> int:
    receiver = DatagramReceiver(("127.0.0.1", 0))
    try:
        return receiver.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        receiver.server_close()


def test_receive_buffer_forced_when_allowed_else_as_large_as_rmem_max(monkeypatch) -> None:
    """With CAP_NET_ADMIN the receiver gets the full 32 MiB; without it (or without
    SO_RCVBUFFORCE) the most that net.core.rmem_max allows. Linux reports twice the
    size asked for: the rest is its bookkeeping."""
    with open("/proc/sys/net/core/rmem_max") as limit:
        capped = 2 * min(SOCKET_RCVBUF, int(limit.read()))
    assert receive_buffer() == (2 * SOCKET_RCVBUF if has_net_admin() else capped)
    monkeypatch.setattr(udp, "SO_RCVBUFFORCE", None)
    assert receive_buffer() == capped


def test_library_round_trip_and_max_size_datagram(receiver) -> None:
    """Datagrams arrive whole with their sender; 65507 bytes is not truncated."""
    recorder = receiver()
    port = recorder.server_address[1]
    big = bytes(range(256)) * 255 + bytes(range(227))
    assert len(big) == 65507
    report = send_datagrams("127.0.0.1", port, [b"Hello UDP Server"])
    assert (report.datagrams, report.bytes) == (1, 16)
    send_datagrams("127.0.0.1", port, [big])
    send_datagrams("127.0.0.1", port, [b""])
    wait_until(lambda: len(recorder.got) == 3, what="three datagrams")
    assert [data for data, _ in recorder.got] == [b"Hello UDP Server", big, b""]
    assert recorder.got[0][1][0] == "127.0.0.1"
    assert recorder.totals.datagrams == 3 and recorder.totals.bytes == 16 + 65507


def test_oversize_is_refused_before_anything_is_sent(receiver) -> None:
    """A payload over 65507 bytes raises, and no datagram of the batch leaves."""
    recorder = receiver()
    port = recorder.server_address[1]
    with pytest.raises(DatagramTooLarge, match="65508 bytes is larger than the 65507 bytes one IPv4 datagram"):
        send_datagrams("127.0.0.1", port, [b"first", b"x" * 65508])
    send_datagrams("127.0.0.1", port, [b"after"])
    wait_until(lambda: recorder.got, what="a datagram")
    assert [data for data, _ in recorder.got] == [b"after"]


def test_senders_are_attributed_and_receiver_stays_silent(receiver) -> None:
    """Three sockets are three senders; without echo nothing is ever sent back."""
    recorder = receiver()
    address = recorder.server_address
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for n, sock in enumerate(socks):
        sock.sendto(f"from {n}".encode(), address)
    wait_until(lambda: len(recorder.got) == 3)
    assert {sender[1] for _, sender in recorder.got} == {sock.getsockname()[1] for sock in socks}
    assert len(recorder.totals.senders) == 3
    socks[0].settimeout(0.2)
    with pytest.raises(socket.timeout):  # socketserver's DatagramRequestHandler would reply b""
        socks[0].recv(10)
    for sock in socks:
        sock.close()


def test_echo_and_wait_reply(receiver) -> None:
    """With echo the datagram comes back unchanged and send_datagrams returns it."""
    recorder = receiver(echo=True)
    report = send_datagrams("127.0.0.1", recorder.server_address[1], [b"ping \x00\xff"], wait_reply=TIMEOUT)
    assert report.reply == b"ping \x00\xff"


def test_no_listener_and_no_reply_are_reported(receiver) -> None:
    """ICMP port unreachable says nobody listens; silence past wait_reply says no reply."""
    port = free_udp_port()
    with pytest.raises(NoReply, match=rf"^no one is listening on 127\.0\.0\.1:{port}$"):
        send_datagrams("127.0.0.1", port, [b"hi"], wait_reply=TIMEOUT)
    with pytest.raises(NoReply, match=rf"^no one is listening on 127\.0\.0\.1:{port}$"):
        send_datagrams("127.0.0.1", port, [b"hi"])
    silent = receiver()
    with pytest.raises(NoReply, match=r"no reply from 127\.0\.0\.1:\d+ within 0\.2 s"):
        send_datagrams("127.0.0.1", silent.server_address[1], [b"hi"], wait_reply=0.2)


def test_bind_errors_name_the_address(receiver) -> None:
    """A taken UDP port and an unknown host are one-line AddressErrors."""
    taken = receiver().server_address[1]
    with pytest.raises(AddressError, match=rf"^cannot listen on 127\.0\.0\.1:{taken}: address already in use$"):
        DatagramReceiver(("127.0.0.1", taken))
    with pytest.raises(AddressError, match="^cannot listen on nosuch.invalid:0: unknown host"):
        DatagramReceiver(("nosuch.invalid", 0))


def test_cli_round_trip_count_and_totals() -> None:
    """udp-recv --count 1 prints the datagram and the totals, exit 0."""
    with CliServer("udp-recv", "--port", "0", "--count", "1", ready=LISTENING) as recv:
        sent = run_cli("udp-send", "--port", str(recv.port), "Hello", "UDP", "Server")
        assert sent.returncode == 0
        assert sent.stderr.decode().startswith(f"Sent 1 datagram (16 bytes) to 127.0.0.1:{recv.port} in ")
        assert recv.proc.wait(TIMEOUT) == 0
        rest = recv.out.rest()
    assert rest[0].startswith("Get message from client 127.0.0.1:") and rest[0].endswith(": Hello UDP Server")
    assert rest[-1] == "Receiver closed: 1 datagram, 16 bytes from 1 sender"


def test_cli_stdin_lines_are_datagrams_and_escapes() -> None:
    """Each stdin line is one datagram without its newline; empty ones are shown; ESC escaped."""
    with CliServer("udp-recv", "--port", "0", "--count", "3", ready=LISTENING) as recv:
        sent = run_cli("udp-send", "--port", str(recv.port), input=b"a\x1b[1m\r\n\nlast")
        assert sent.returncode == 0
        assert recv.proc.wait(TIMEOUT) == 0
        rest = recv.out.rest()
    assert rest[0].endswith(": a\\x1b[1m"), rest
    assert rest[1].endswith(" (empty datagram)")
    assert rest[2].endswith(": last")


def test_cli_raw_send_and_output_are_byte_exact(tmp_path) -> None:
    """udp-send --raw < file and udp-recv --output FILE (nc -u, nc -u -l > file): every byte value, CR and LF
    included, arrives unchanged; the log holds no payload."""
    data = bytes(range(256)) * 4 + b"a\r\nb\r\n"
    received = tmp_path / "received.bin"
    with CliServer("udp-recv", "--port", "0", "--count", "1", "--output", str(received), ready=LISTENING) as recv:
        sent = run_cli("udp-send", "--port", str(recv.port), "--raw", input=data)
        assert sent.returncode == 0
        assert sent.stderr.decode().startswith(f"Sent 1 datagram ({len(data)} bytes) to 127.0.0.1:{recv.port} in ")
        assert recv.proc.wait(TIMEOUT) == 0
        rest = recv.out.rest()
    assert received.read_bytes() == data
    assert rest == [f"Receiver closed: 1 datagram, {len(data)} bytes from 1 sender"]


def test_cli_raw_output_to_stdout_puts_the_log_on_stderr() -> None:
    data = b"\x00\xff\n" * 3
    proc = subprocess.Popen(
        CLI + ["udp-recv", "--port", "0", "--count", "2", "--output", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        port = proc.stderr.readline().decode().rsplit(":", 1)[1].strip()
        for _ in range(2):
            assert run_cli("udp-send", "--port", port, "--raw", input=data).returncode == 0
        assert proc.wait(TIMEOUT) == 0
        assert proc.stdout.read() == data * 2
        assert proc.stderr.read().decode().splitlines() == [f"Receiver closed: 2 datagrams, {2 * len(data)} bytes from 2 senders"]
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--raw", "hello"], "--raw sends stdin: drop the MESSAGE"),
        (["--repeat", "2"], "--repeat needs a MESSAGE (stdin is sent once)"),
    ],
)
def test_cli_raw_usage_errors(args: list[str], message: str) -> None:
    result = run_cli("udp-send", "--port", "9", *args, input=b"x")
    assert result.returncode == 2 and result.stderr.decode().splitlines()[-1] == f"Error: {message}"


def test_cli_hex_dump() -> None:
    """--hex prints a dump of the datagram."""
    with CliServer("udp-recv", "--port", "0", "--count", "1", "--hex", ready=LISTENING) as recv:
        run_cli("udp-send", "--port", str(recv.port), "AB")
        recv.proc.wait(TIMEOUT)
        rest = recv.out.rest()
    assert rest[0].endswith("(2 bytes):")
    assert rest[1] == "00000000  41 42" + " " * 44 + "|AB|"


def test_cli_echo_with_wait_reply() -> None:
    """udp-recv --echo sends back; udp-send --wait-reply prints the reply on stdout, one line with its sender."""
    with CliServer("udp-recv", "--port", "0", "--echo", ready=LISTENING) as recv:
        result = run_cli("udp-send", "--port", str(recv.port), "--wait-reply", "0.5", "ping")
        assert result.returncode == 0
        assert result.stdout == f"Reply from 127.0.0.1:{recv.port}: ping\n".encode()
        hexed = run_cli("udp-send", "--port", str(recv.port), "--wait-reply", "0.5", "--hex", "AB")
        assert hexed.stdout.decode().splitlines() == [
            f"Reply from 127.0.0.1:{recv.port} (2 bytes):",
            "00000000  41 42" + " " * 44 + "|AB|",
        ]


class Responder:
    """A UDP peer that answers a datagram with several replies, each when the test says so."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.client = None

    def receive(self) -> bytes:
        data, self.client = self.sock.recvfrom(65536)
        return data

    def reply(self, data: bytes) -> None:
        self.sock.sendto(data, self.client)

    def close(self) -> None:
        self.sock.close()


def test_cli_wait_reply_says_sent_first_then_prints_every_reply_as_it_arrives() -> None:
    """--wait-reply: 'Sent ...' comes before the wait; each reply is printed when it comes, escaped, until the wait ends."""
    responder = Responder()
    proc = subprocess.Popen(
        CLI + ["udp-send", "--port", str(responder.port), "--wait-reply", str(TIMEOUT / 4), "ping"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert responder.receive() == b"ping"
        err, out = LineReader(proc.stderr), LineReader(proc.stdout)
        err.wait_for(rf"^Sent 1 datagram \(4 bytes\) to 127\.0\.0\.1:{responder.port} in ")
        responder.reply(b"one")
        out.wait_for(rf"^Reply from 127\.0\.0\.1:{responder.port}: one$")
        assert proc.poll() is None  # printed as it arrived, while still waiting
        responder.reply(b"two\x1b[2J\n")
        responder.reply(b"")
        assert proc.wait(TIMEOUT) == 0
        assert out.rest() == [
            f"Reply from 127.0.0.1:{responder.port}: two\\x1b[2J\\n",
            f"Reply from 127.0.0.1:{responder.port} (empty datagram)",
        ]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        responder.close()


def test_ctrl_c_in_udp_send_exits_130_quietly() -> None:
    """Ctrl-C while udp-send waits for replies: status 130, no 'Aborted!', no traceback."""
    responder = Responder()
    proc = subprocess.Popen(
        CLI + ["udp-send", "--port", str(responder.port), "--wait-reply", str(TIMEOUT * 3), "ping"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        responder.receive()
        err = LineReader(proc.stderr)
        err.wait_for("^Sent 1 datagram")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 130
        assert err.rest() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        responder.close()


def test_library_hands_every_reply_to_on_reply(receiver) -> None:
    """send_datagrams(on_reply=...) gets each reply with its sender; on_sent comes first."""
    recorder = receiver(echo=True)
    port = recorder.server_address[1]
    events: list[object] = []
    report = send_datagrams(
        "127.0.0.1",
        port,
        [b"a", b"b"],
        wait_reply=0.3,
        on_sent=lambda report: events.append(("sent", report.datagrams)),
        on_reply=lambda data, sender: events.append((data, sender[1])),
    )
    assert events == [("sent", 2), (b"a", port), (b"b", port)]
    assert (report.replies, report.reply) == (2, b"a")


def test_send_report_keeps_meaningful_precision() -> None:
    """A fast send is not '0.000 s (0 datagrams/s)'; one datagram is one datagram."""
    from socketlab.udp import SendReport

    line = SendReport(datagrams=100, bytes=6400, seconds=0.000123).describe("h:1")
    assert line == "Sent 100 datagrams (6400 bytes) to h:1 in 0.000123 s (813,008 datagrams/s)"
    one = SendReport(datagrams=1, bytes=1, seconds=2.0).describe("h:1")
    assert one == "Sent 1 datagram (1 byte) to h:1 in 2.000 s (0.5 datagrams/s)"


def test_cli_timeout_and_unreachable_exit_1() -> None:
    """--timeout with no datagram and a port nobody listens on both exit 1 with one line."""
    result = run_cli("udp-recv", "--port", "0", "--timeout", "0.3")
    assert result.returncode == 1
    assert result.stderr.decode().splitlines()[-1].startswith("Error: no datagram within 0.3 s on 127.0.0.1:")
    port = free_udp_port()
    result = run_cli("udp-send", "--port", str(port), "--wait-reply", "2", "hi")
    assert result.returncode == 1
    assert result.stderr.decode().splitlines()[1:] == [f"Error: no one is listening on 127.0.0.1:{port}"]


def test_cli_unknown_host() -> None:
    """An unknown target host: one line naming it, exit 1."""
    result = run_cli("udp-send", "--host", "nosuch.invalid", "--port", "5", "x")
    assert result.returncode == 1
    assert result.stderr.decode().startswith("Error: cannot send to nosuch.invalid:5: unknown host")
    assert len(result.stderr.splitlines()) == 1


def test_cli_oversize_refused() -> None:
    """A MESSAGE over one datagram: one line, exit 1."""
    result = run_cli("udp-send", "--port", str(free_udp_port()), "x" * 65508)
    assert result.returncode == 1
    assert result.stderr.decode().startswith("Error: a datagram of 65508 bytes is larger than the 65507 bytes")
    assert b"Traceback" not in result.stderr


def test_cli_ten_thousand_datagrams_quiet_totals() -> None:
    """--repeat 10000 into -q: the totals count what arrived (loss is reported, not hidden)."""
    with CliServer("udp-recv", "--port", "0", "-q", ready=LISTENING) as recv:
        sent = run_cli("udp-send", "--port", str(recv.port), "--repeat", "10000", "x" * 64)
        assert sent.returncode == 0
        assert sent.stderr.decode().startswith("Sent 10000 datagrams (640000 bytes)")
        status, _ = recv.stop(signal.SIGINT)
        assert status == 0
        totals = recv.out.rest()[-1]
    prefix, _, senders = totals.partition(" bytes from ")
    count, _, size = prefix.removeprefix("Receiver closed: ").partition(" datagrams, ")
    received = int(count)
    assert 0 < received <= 10000 and int(size) == 64 * received and senders == "1 sender"
    print(f"received {received} of 10000 datagrams ({100 * (10000 - received) / 10000:.2f} % lost)")


def test_cli_sigterm_prints_totals() -> None:
    """SIGTERM stops the receiver within a second with its totals, exit 0."""
    with CliServer("udp-recv", "--port", "0", ready=LISTENING) as recv:
        status, seconds = recv.stop(signal.SIGTERM)
        assert status == 0 and seconds < 1.0
        assert recv.out.rest() == ["Receiver closed: 0 datagrams, 0 bytes from 0 senders"]


def test_cli_port_in_use() -> None:
    """A taken UDP port is one line naming it, exit 1."""
    with CliServer("udp-recv", "--port", "0", ready=LISTENING) as recv:
        result = run_cli("udp-recv", "--port", str(recv.port))
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [f"Error: cannot listen on 127.0.0.1:{recv.port}: address already in use"]


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 on this machine")
def test_ipv6_both_commands(receiver) -> None:
    """::1 works for the receiver and the sender; 65527 bytes is the IPv6 maximum."""
    with CliServer("udp-recv", "--host", "::1", "--port", "0", "--count", "1", ready=LISTENING) as recv:
        assert run_cli("udp-send", "--host", "::1", "--port", str(recv.port), "six").returncode == 0
        recv.proc.wait(TIMEOUT)
        assert recv.out.rest()[0].startswith("Get message from client [::1]:")
    recorder = receiver(host="::1")
    send_datagrams("::1", recorder.server_address[1], [b"y" * 65527])
    wait_until(lambda: recorder.got)
    assert len(recorder.got[0][0]) == 65527
    with pytest.raises(DatagramTooLarge, match="65527 bytes one IPv6"):
        send_datagrams("::1", recorder.server_address[1], [b"y" * 65528])
