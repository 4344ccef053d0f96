"""Certificates for the TLS tests, made with trustme in a temporary directory (no key is ever committed)."""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization


@dataclass(frozen=True)
class Certs:
    """PEM files for one test CA and the server certificates it issued (and some broken ones)."""

    ca: str  #: the CA's certificate: what clients trust (--tls-ca)
    cert: str  #: for 127.0.0.1 and localhost, chain only
    key: str  #: its key, unencrypted
    combined: str  #: key and chain in one file
    other_key: str  #: a key of another certificate: does not match *cert*
    encrypted_key: str  #: *key*, encrypted with a password
    expired: str  #: key and chain of a certificate for 127.0.0.1 that expired in 2001
    wrong_name: str  #: key and chain of a certificate for example.org only
    not_pem: str  #: a text file with no PEM in it
    corrupt: str  #: *combined* with its base64 damaged: PEM blocks that do not parse

    def server_context(self, path: str | None = None) -> ssl.SSLContext:
        """A server context for *path* (key and chain; default: the good certificate)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(path or self.combined)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts the test CA and checks host names."""
        return ssl.create_default_context(cafile=self.ca)


def make_certs(directory: Path) -> Certs:
    """Write a CA, its certificates and the broken files into *directory*."""
    ca = trustme.CA()
    good = ca.issue_cert("127.0.0.1", "localhost")
    other = ca.issue_cert("127.0.0.1")
    expired = ca.issue_cert(
        "127.0.0.1",
        not_before=datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc),
        not_after=datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc),
    )
    wrong_name = ca.issue_cert("example.org")
    key = serialization.load_pem_private_key(good.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    files = {
        "ca": ca.cert_pem.bytes(),
        "cert": b"".join(blob.bytes() for blob in good.cert_chain_pems),
        "key": good.private_key_pem.bytes(),
        "combined": good.private_key_and_cert_chain_pem.bytes(),
        "other_key": other.private_key_pem.bytes(),
        "encrypted_key": encrypted,
        "expired": expired.private_key_and_cert_chain_pem.bytes(),
        "wrong_name": wrong_name.private_key_and_cert_chain_pem.bytes(),
        "not_pem": b"this is not a certificate\n",
        "corrupt": good.private_key_and_cert_chain_pem.bytes().replace(b"\nMI", b"\n!!"),
    }
    paths = {}
    for name, content in files.items():
        path = directory / f"{name}.pem"
        path.write_bytes(content)
        paths[name] = str(path)
    return Certs(**paths)
