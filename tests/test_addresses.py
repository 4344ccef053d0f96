"""Address parsing, formatting and the errors that name the address."""

import socket

import pytest

from socketlab.addresses import format_address, parse_address, resolve
from socketlab.errors import AddressError


def test_format_address_brackets_ipv6() -> None:
    """IPv6 hosts are bracketed so the port stays unambiguous."""
    assert format_address(("127.0.0.1", 80)) == "127.0.0.1:80"
    assert format_address(("::1", 80, 0, 0)) == "[::1]:80"


def test_parse_address_accepts_ipv4_ipv6_and_rejects_garbage() -> None:
    """HOST:PORT and [IPv6]:PORT parse; a missing or bad port is an AddressError."""
    assert parse_address("localhost:3000") == ("localhost", 3000)
    assert parse_address("[::1]:4000") == ("::1", 4000)
    for bad in ("nohost", "host:", "host:99999", "host:x"):
        with pytest.raises(AddressError, match="expected HOST:PORT"):
            parse_address(bad)


def test_resolve_unknown_host_names_the_address() -> None:
    """An unknown host is one readable line naming host and port."""
    with pytest.raises(AddressError) as info:
        resolve("nosuch.invalid", 3000, socket.SOCK_STREAM, passive=False)
    assert str(info.value).startswith("cannot connect to nosuch.invalid:3000: unknown host")
