"""TLS for socketlab's servers and clients, from the standard library's ``ssl``.

- :func:`server_context` and :func:`client_context` make contexts with the
  library's secure defaults (TLS 1.2 at least), turning every setup failure --
  a missing file, a key that does not match, an encrypted key -- into one
  readable :class:`TlsError` line.
- :class:`TlsLayer` is TLS sans-IO: ``ssl.SSLObject`` between two
  ``MemoryBIO`` s. Ciphertext in, plaintext out and back; no socket, no
  thread. The chat's reader loop runs it for every TLS client, so a client
  stuck in its handshake costs the others nothing.
- :class:`TlsStream` puts a TlsLayer over a blocking socket for code with a
  thread per connection (``tcp-server``, ``tcp-client``, ``chat connect``):
  ``recv``/``sendall``/``shutdown`` like a socket, safe to read on one thread
  while another writes, and with a real half-close: ``shutdown(SHUT_WR)``
  sends TLS's close_notify, then ends the TCP side, and reading goes on.
  The socket stays the caller's own, so ``socket.shutdown()`` still wakes a
  blocked reader.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import threading

from socketlab.errors import SocketlabError

#: Seconds a TLS handshake may take before the connection is dropped.
HANDSHAKE_TIMEOUT = 10.0
#: Ciphertext read per recv() by TlsStream.
READ_SIZE = 256 * 1024

#: OpenSSL verification codes, in words a person can act on.
_VERIFY_REASONS = {
    10: "certificate expired",
    9: "certificate not yet valid",
    18: "unknown issuer (self-signed certificate)",
    19: "unknown issuer (self-signed certificate in the chain)",
    20: "unknown issuer",
    21: "unknown issuer",
    62: "host name mismatch",
    64: "IP address mismatch",
}

#: OpenSSL's reasons for a first record that no TLS peer would send (a plaintext or random client).
_NOT_TLS = ("wrong version number", "http request", "unknown protocol", "record layer failure", "packet length too long")


class TlsError(SocketlabError):
    """TLS could not be set up, or a handshake or record failed; one readable line."""


class TlsConnectionError(TlsError, OSError):
    """A record failed on an open :class:`TlsStream`; an OSError too, as a socket's failures are,
    so code written for sockets (``except OSError``) ends the connection instead of crashing."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.strerror = message


def _file_problem(path: str, what: str) -> str | None:
    if not os.path.exists(path):
        return f"{what} {path!r} does not exist"
    if not os.access(path, os.R_OK):
        return f"{what} {path!r} is not readable"
    return None


def server_context(cert: str, key: str | None = None) -> ssl.SSLContext:
    """A server context from PEM files (*key* may be inside *cert*); raises TlsError."""
    for path, what in ((cert, "certificate file"), (key, "key file")):
        if path and (problem := _file_problem(path, what)):
            raise TlsError(problem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2

    def refuse_password() -> str:
        raise TlsError(f"the key in {key or cert!r} is encrypted; give an unencrypted key (e.g. openssl pkey -in KEY -out PLAIN)")

    try:
        context.load_cert_chain(cert, key, password=refuse_password)
    except TlsError:
        raise
    except ssl.SSLError as error:
        text = str(error).lower()
        if "key values mismatch" in text or "x509_check_private_key" in text:
            raise TlsError(f"the key does not match the certificate in {cert!r}") from None
        if "bad decrypt" in text or "bad password" in text:
            raise TlsError(f"the key in {key or cert!r} is encrypted; give an unencrypted key") from None
        raise TlsError(_pem_problem(cert, key)) from None
    except OSError as error:
        raise TlsError(f"cannot read {error.filename or cert!r}: {error.strerror}") from None
    return context


def _pem_labels(path: str) -> set[str]:
    """The kinds of PEM blocks in *path* (``CERTIFICATE``, ``PRIVATE KEY``, ...); empty if unreadable."""
    try:
        with open(path, "rb") as file:
            text = file.read(1 << 20)
    except OSError:
        return set()
    return {label.decode("ascii", "replace") for label in re.findall(rb"-----BEGIN ([A-Z0-9 ]+)-----", text)}


def _pem_problem(cert: str, key: str | None) -> str:
    """Why OpenSSL's "PEM lib" refused *cert* / *key*, in words: which file lacks what."""
    if "CERTIFICATE" not in _pem_labels(cert):
        return f"no PEM certificate in {cert!r}"
    if not any(label.endswith("PRIVATE KEY") for label in _pem_labels(key or cert)):
        return f"no PEM private key in {key!r}" if key else f"no PEM private key in {cert!r}; give the key's own file too"
    return f"cannot load the certificate and key ({cert!r}, {key or cert!r}): no valid PEM certificate and matching key"


def client_context(ca: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """A client context: verify against *ca* (PEM) or the system's trust store, host name included."""
    if ca and (problem := _file_problem(ca, "CA file")):
        raise TlsError(problem)
    try:
        context = ssl.create_default_context(cafile=ca)
    except ssl.SSLError:
        raise TlsError(f"no valid PEM certificate in CA file {ca!r}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def describe(error: ssl.SSLError) -> str:
    """A failed handshake or record in a few words, e.g. ``certificate expired``."""
    if isinstance(error, ssl.SSLCertVerificationError):
        message = error.verify_message or "verification failed"
        reason = _VERIFY_REASONS.get(error.verify_code, message)
        # OpenSSL: "Hostname mismatch, certificate is not valid for 'example.org'." -- say which name
        _, found, name = message.partition("certificate is not valid for ")
        if error.verify_code in (62, 64) and found:
            reason += f" (the certificate is not valid for {name.rstrip('.')})"
        return f"certificate verification failed: {reason}"
    reason = (error.reason or str(error)).lower().replace("_", " ")
    if reason in _NOT_TLS:
        return f"not TLS ({reason})"
    return reason


class TlsLayer:
    """One TLS connection, sans-IO: ``receive(ciphertext) -> plaintext``, ``send(plaintext) -> ciphertext``.

    The handshake runs inside ``receive()`` (and ``start()`` for a client);
    ``outgoing()`` returns the records the handshake or an alert produced.
    Raises TlsError when the peer's bytes are not acceptable TLS. Not
    thread-safe: the caller serialises calls.
    """

    def __init__(self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=server_hostname)
        self.handshake_done = False
        #: The peer sent close_notify: no more plaintext will come.
        self.peer_closed = False
        self._closed = False

    def start(self) -> bytes:
        """Begin the handshake (a client's first flight); returns the records to send."""
        self._handshake()
        return self.outgoing()

    def receive(self, data: bytes) -> bytes:
        """Feed ciphertext from the peer; return the plaintext it completes (maybe b"")."""
        if data:
            self._in.write(data)
        if not self.handshake_done and not self._handshake():
            return b""
        chunks = []
        while not self.peer_closed:
            try:
                chunk = self._ssl.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify, when ours went first
                self.peer_closed = True
                break
            except ssl.SSLError as error:
                raise TlsError(describe(error)) from None
            if not chunk:  # close_notify, when the peer's came first: read() returns b"", not an error
                self.peer_closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _handshake(self) -> bool:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as error:
            raise TlsError(describe(error)) from None
        self.handshake_done = True
        return True

    def send(self, data: bytes | bytearray | memoryview) -> bytes:
        """Encrypt *data*; returns the records to send (b"" once closed)."""
        if self._closed or not data:
            return b""
        try:
            self._ssl.write(data)
        except ssl.SSLError as error:
            raise TlsError(describe(error)) from None
        return self._out.read()

    def outgoing(self) -> bytes:
        """Records waiting to be sent (handshake messages, alerts, tickets)."""
        return self._out.read()

    @property
    def has_outgoing(self) -> bool:
        return self._out.pending > 0

    def close(self) -> bytes:
        """Send close_notify (once): returns the records to send. Reading may go on."""
        if self._closed or not self.handshake_done:
            return b""
        self._closed = True
        try:
            self._ssl.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):  # it waits for the peer's close_notify: we don't
            pass
        return self._out.read()

    @property
    def version(self) -> str | None:
        return self._ssl.version()


class TlsStream:
    """A blocking socket with TLS on it, used like a socket: ``recv``, ``sendall``, ``shutdown``.

    One thread may read while another writes: ``_lock`` guards the TLS
    object, and ``_send_lock`` makes taking records out of it and sending
    them one step, so records reach the wire in the order TLS made them
    (a reply made while reading cannot overtake, or be overtaken by, a
    write). ``handshake(timeout)`` must run first; it raises TlsError (naming the reason) when the peer is not
    acceptable. Afterwards every failure is an OSError, as with a socket: a
    bad record raises :class:`TlsConnectionError`.
    """

    def __init__(self, sock: socket.socket, layer: TlsLayer) -> None:
        self.sock = sock
        self.layer = layer
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._plain = b""

    @classmethod
    def server(cls, sock: socket.socket, context: ssl.SSLContext) -> "TlsStream":
        return cls(sock, TlsLayer(context, server_side=True))

    @classmethod
    def client(cls, sock: socket.socket, context: ssl.SSLContext, host: str) -> "TlsStream":
        hostname = host if context.check_hostname else None
        return cls(sock, TlsLayer(context, server_side=False, server_hostname=hostname))

    def handshake(self, timeout: float | None = HANDSHAKE_TIMEOUT) -> None:
        """Complete the handshake; raises TlsError (or OSError, e.g. timed out)."""
        previous = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            if self.layer.handshake_done:
                return
            self.sock.sendall(self.layer.start())
            while not self.layer.handshake_done:
                data = self.sock.recv(READ_SIZE)
                if not data:
                    raise TlsError("the peer closed the connection during the TLS handshake")
                try:
                    self._plain += self.layer.receive(data)
                finally:  # the next flight, or the alert that tells the peer why we give up
                    if out := self.layer.outgoing():
                        self.sock.sendall(out)
        finally:
            self.sock.settimeout(previous)

    def recv(self, size: int) -> bytes:
        """Up to *size* bytes of plaintext; b"" when the peer has closed (close_notify or EOF).

        Raises OSError: the socket's own, or TlsConnectionError when a record is not acceptable.
        """
        while not self._plain:
            if self.layer.peer_closed:
                return b""
            data = self.sock.recv(READ_SIZE)
            failure = None
            with self._lock:
                if not data:
                    self.layer.peer_closed = True
                    return b""
                try:
                    self._plain = self.layer.receive(data)
                except TlsError as error:
                    failure = str(error)
                replying = self.layer.has_outgoing  # a reply, or the alert that tells the peer why we give up
            if replying:
                try:
                    self._send(b"")
                except OSError:  # our side may be closed already; nothing of ours is lost
                    pass
            if failure is not None:
                raise TlsConnectionError(failure)
        chunk, self._plain = self._plain[:size], self._plain[size:]
        return chunk

    def take_plaintext(self) -> bytes:
        """Plaintext that came with the end of the handshake, not yet read."""
        plain, self._plain = self._plain, b""
        return plain

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        data = self.recv(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        self._send(data)

    def _send(self, data: bytes | bytearray | memoryview, closing: bool = False) -> None:
        """Encrypt *data* (or close, with close_notify) and send every record TLS has made, in order."""
        with self._send_lock:
            with self._lock:
                try:
                    # Each of these takes every record waiting, the replies made while reading included.
                    records = self.layer.close() if closing else self.layer.send(data) if data else self.layer.outgoing()
                except TlsError as error:
                    raise TlsConnectionError(str(error)) from None
            if records:
                self.sock.sendall(records)

    def shutdown(self, how: int) -> None:
        """SHUT_WR/SHUT_RDWR: close_notify first, then the socket's own shutdown."""
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            try:
                self._send(b"", closing=True)
            except OSError:
                pass
        self.sock.shutdown(how)

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "TlsStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
