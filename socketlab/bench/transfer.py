"""Bulk TCP and UDP benchmarks through socketlab's own commands and peers.

``run_tcp`` streams ``size`` bytes from this process through a client
command into a receiving server command and times it from the client's
first read until the receiver has everything (start-up is reported
apart); ``run_udp`` sends ``count`` datagrams flat out into a
receiver and counts what arrived. The same source feeds every tool, so the
figures compare the tools, not the harness. Peers (socat, ncat) are run
only when installed.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from socketlab.errors import BenchError
from socketlab.text import format_rate, format_seconds

SOCKETLAB = [sys.executable, "-m", "socketlab"]
CHUNK = 1 << 20
#: After the sender is done, how long the UDP receiver may keep draining.
UDP_DRAIN = 1.0


@dataclass
class TcpResult:
    tool: str
    bytes: int
    seconds: float
    received: int | None = None
    #: The largest read/write both ends were told to use (None: the tool's default here).
    buffer: int | None = None
    #: Seconds from starting the client until it read its first bytes (start-up; not in *seconds*).
    startup: float = 0.0

    @property
    def mb_per_second(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0

    def describe(self) -> str:
        check = "" if self.received is None else f", receiver counted {self.received:,} bytes"
        return (
            f"tcp  {self.tool:<40} {self.bytes:,} bytes in {self.seconds:.3f} s = "
            f"{self.mb_per_second:,.0f} MB/s (after {1000 * self.startup:.0f} ms of start-up){check}"
        )


@dataclass
class UdpResult:
    tool: str
    sent: int
    received: int
    send_seconds: float

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else 0.0

    def describe(self) -> str:
        rate = self.sent / self.send_seconds if self.send_seconds else 0.0
        return (
            f"udp  {self.tool:<40} sent {self.sent:,} in {format_seconds(self.send_seconds)} s ({format_rate(rate)}/s), "
            f"received {self.received:,} ({100 * self.loss:.2f} % lost)"
        )


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def has(tool: str) -> bool:
    return shutil.which(tool) is not None


def _feed(pipe_fd: int, size: int, first_read: list[float], failed: list[OSError]) -> None:
    """Write *size* bytes into *pipe_fd* (a pipe we own), then close it.

    Appends to *first_read* the moment the reader took its first bytes
    (the pipe, filled by the first write, has room again): the transfer is
    timed from there, so neither tool's start-up counts. A reader that
    stops early leaves its error in *failed*.
    """
    try:
        fcntl.fcntl(pipe_fd, 1031, CHUNK)  # F_SETPIPE_SZ: fewer wake-ups
    except OSError:
        pass
    block = memoryview(bytes(CHUNK))
    left = size
    try:
        left -= os.write(pipe_fd, block[: min(left, CHUNK)])
        _wait_first_read(pipe_fd)
        first_read.append(time.perf_counter())
        while left:
            left -= os.write(pipe_fd, block[: min(left, CHUNK)])
    except OSError as error:  # the client went away (BrokenPipeError) or the pipe failed
        failed.append(error)
    finally:
        os.close(pipe_fd)


def _wait_first_read(pipe_fd: int, limit: float = 30.0) -> None:
    """Wait (without spinning) until the full pipe has room again, its reader is gone, or *limit* s pass."""
    poller = select.poll()
    poller.register(pipe_fd, select.POLLOUT | select.POLLERR)
    poller.poll(limit * 1000)


def listening_port(proc: subprocess.Popen, what: str, marker: str = "listening") -> int:
    """The port in the ``... listening on HOST:PORT`` line *proc* prints next
    (or the next line containing another *marker*, e.g. ``... http://HOST:PORT/``).

    Raises BenchError (and kills *proc*) when it printed something else:
    it did not start.
    """
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if marker.lower() in line.lower():
        ports = re.findall(r":(\d+)\b", line)
        if ports:
            return int(ports[-1])
    stop(proc)
    raise BenchError(f"{what} did not start")


def stop(proc: subprocess.Popen) -> None:
    """Kill *proc* if it still runs, and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@dataclass
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, made for one benchmark run."""

    cert: str
    key: str

    @classmethod
    def make(cls, directory: str) -> "Certificate":
        """Make one with the openssl command (ECDSA P-256, valid one day); BenchError without it."""
        cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        command = [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            key,
            "-out",
            cert,
        ]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as error:
            raise BenchError(f"cannot make a test certificate with openssl: {error}") from None
        return cls(cert, key)


#: socat's -b when no --buffer is asked for (its own default, 8 KiB, is far slower).
SOCAT_BUFFER = 262144


def run_tcp(size: int, tool: str = "socketlab", tls: Certificate | None = None, buffer: int | None = None) -> TcpResult:
    """Stream *size* bytes through *tool*'s client into its server (over TLS with *tls*); time it.

    *buffer* is the largest read or write at both ends (socketlab's
    ``--buffer``, socat's ``-b``); None leaves socketlab's default and gives
    socat SOCAT_BUFFER.
    """
    if tool == "socketlab":
        tls_server = ["--tls-cert", tls.cert, "--tls-key", tls.key] if tls else []
        sized = ["--buffer", str(buffer)] if buffer else []
        server = subprocess.Popen(
            SOCKETLAB + ["tcp-server", "--port", "0", "-q", "--welcome", "", *tls_server, *sized],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        port = listening_port(server, "socketlab tcp-server")
        client_cmd = SOCKETLAB + ["tcp-client", "--port", str(port), *(["--tls-ca", tls.cert] if tls else []), *sized]
        label = f"socketlab tcp-client | tcp-server -q{' (TLS)' if tls else ''}"
    elif tool == "socat":
        port = free_port()
        listen = f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr"
        connect = f"TCP:127.0.0.1:{port}"
        if tls:
            listen = f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,cert={tls.cert},key={tls.key},verify=0"
            connect = f"OPENSSL:127.0.0.1:{port},cafile={tls.cert},commonname=localhost"
        block = str(buffer or SOCAT_BUFFER)
        server = subprocess.Popen(
            ["socat", "-b", block, "-u", listen, "OPEN:/dev/null"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening(port, server, "socat", limit=5)
        except BenchError:
            stop(server)
            raise
        client_cmd = ["socat", "-b", block, "-u", "STDIN", connect]
        label = f"socat -b {block} -u (both ends){' OPENSSL' if tls else ''}"
    else:
        raise ValueError(f"unknown tool {tool}")
    read_fd, write_fd = os.pipe()
    try:
        client = subprocess.Popen(client_cmd, stdin=read_fd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        os.close(write_fd)
        stop(server)
        raise
    finally:
        os.close(read_fd)
    launched = time.perf_counter()
    first_read: list[float] = []
    failed: list[OSError] = []
    feeder = threading.Thread(target=_feed, args=(write_fd, size, first_read, failed))
    feeder.start()
    received = None
    try:
        if tool == "socketlab":
            assert server.stdout is not None
            for raw in server.stdout:
                match = re.search(rb"Client disconnected .* \((\d+) bytes received\)", raw)
                if match:
                    received = int(match.group(1))
                    break
            end = time.perf_counter()
        else:
            server.wait(600)
            end = time.perf_counter()
    finally:
        feeder.join()
        client.wait(60)
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    if failed:
        raise BenchError(f"{label} stopped reading its input: {failed[0].strerror or failed[0]}")
    start = first_read[0] if first_read else launched
    return TcpResult(label, size, end - start, received, buffer, round(start - launched, 4))


def wait_listening(port: int, proc: subprocess.Popen | None = None, what: str = "the server", limit: float = 10.0) -> None:
    """Wait until something listens on TCP *port* on this host, without connecting to it
    (``socat -u`` serves one connection only): read ``/proc/net/tcp`` and ``tcp6``.

    BenchError when *proc* exits first or *limit* seconds pass.
    """
    deadline = time.monotonic() + limit
    needle = f":{port:04X} ".encode()
    while time.monotonic() < deadline:
        for name in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(name, "rb") as table:
                if any(needle in line and line.split()[3] == b"0A" for line in table):
                    return
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} did not start")
        time.sleep(0.01)  # deadline loop: the server binds meanwhile
    raise BenchError(f"{what} did not listen on port {port}")


def run_udp(count: int, size: int = 64, receiver: str = "socketlab") -> UdpResult:
    """Send *count* datagrams with ``socketlab udp-send --repeat`` into *receiver*."""
    if receiver == "socketlab":
        proc = subprocess.Popen(SOCKETLAB + ["udp-recv", "--port", "0", "-q"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        port = listening_port(proc, "socketlab udp-recv")
        label = "udp-send --repeat | udp-recv -q"
    else:
        port = free_port(socket.SOCK_DGRAM)
        command = {
            "socat": ["socat", "-u", f"UDP-RECV:{port},bind=127.0.0.1", "STDOUT"],
            "ncat": ["ncat", "-u", "-l", "--recv-only", "127.0.0.1", str(port)],
        }[receiver]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        _wait_udp_bound(port)
        label = f"udp-send --repeat | {receiver} receiver"
    counted: list[int] = []
    counter = None
    if receiver != "socketlab":
        counter = threading.Thread(target=lambda: counted.append(_count_bytes(proc.stdout)), daemon=True)
        counter.start()
    try:
        sender = subprocess.run(
            SOCKETLAB + ["udp-send", "--port", str(port), "--repeat", str(count), "x" * size],
            capture_output=True,
            timeout=600,
        )
    except OSError:
        stop(proc)
        raise
    except subprocess.TimeoutExpired:
        stop(proc)
        raise BenchError("udp-send did not finish within 600 s") from None
    match = re.search(rb"in ([\d.]+) s", sender.stderr)
    send_seconds = float(match.group(1)) if match else 0.0
    time.sleep(UDP_DRAIN)  # let the receiver drain its socket buffer
    proc.send_signal(signal.SIGINT)
    if receiver == "socketlab":
        out, _ = proc.communicate(timeout=10)
        totals = re.search(rb"Receiver closed: (\d+) datagrams?", out)
        received = int(totals.group(1)) if totals else 0
    else:
        proc.wait(10)
        assert counter is not None
        counter.join(5)
        received = (counted[0] if counted else 0) // size
    return UdpResult(label, count, received, send_seconds)


def _wait_udp_bound(port: int, limit: float = 5.0) -> None:
    needle = f":{port:04X} ".encode()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with open("/proc/net/udp", "rb") as table:
            if any(needle in line for line in table):
                return
        time.sleep(0.01)
    raise BenchError(f"no UDP receiver bound port {port}")


def _count_bytes(stream: object) -> int:
    total = 0
    while chunk := stream.read1(1 << 16):  # type: ignore[attr-defined]
        total += len(chunk)
    return total
