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
    for bad in ("nohost", "host:", "host:x"):
        with pytest.raises(AddressError, match="expected HOST:PORT"):
            parse_address(bad)


def test_resolve_unknown_host_names_the_address() -> None:
    """An unknown host is one readable line naming host and port."""
    with pytest.raises(AddressError) as info:
        resolve("nosuch.invalid", 3000, socket.SOCK_STREAM, passive=False)
    assert str(info.value).startswith("cannot connect to nosuch.invalid:3000: unknown host")


def test_out_of_range_ports_name_the_range() -> None:
    """A port past 65535 (or 0 where a server must be named) is told with the range, not 'expected HOST:PORT'."""
    from socketlab.addresses import parse_port

    with pytest.raises(AddressError, match=r"^invalid address '127\.0\.0\.1:99999': the port must be 1-65535$"):
        parse_address("127.0.0.1:99999")
    with pytest.raises(AddressError, match=r"^invalid address 'h:99999': the port must be 0-65535$"):
        parse_address("h:99999", allow_zero=True)
    with pytest.raises(AddressError, match=r"the port must be 1-65535$"):
        parse_address("h:0")
    assert parse_address("h:0", allow_zero=True) == ("h", 0)
    with pytest.raises(AddressError, match=r"^invalid port '70000': ports are 0-65535$"):
        parse_port("70000", allow_zero=True)


def test_parse_source_forms() -> None:
    """--source: an address, with or without a port, IPv6 bare or bracketed, or a port alone."""
    from socketlab.addresses import parse_source

    assert parse_source("127.0.0.2") == ("127.0.0.2", 0)
    assert parse_source("127.0.0.2:4000") == ("127.0.0.2", 4000)
    assert parse_source("::1") == ("::1", 0)
    assert parse_source("[::1]:4000") == ("::1", 4000)
    assert parse_source("[::1]") == ("::1", 0)
    assert parse_source(":4000") == ("", 4000)
    for bad in ("h:70000", "[::1]x", "h:port"):
        with pytest.raises(AddressError, match="invalid address"):
            parse_source(bad)


def test_unix_addresses_format_as_their_path() -> None:
    """A UNIX socket's address is its path; an unnamed client is 'unix'."""
    assert format_address("/tmp/s.sock") == "/tmp/s.sock"
    assert format_address("") == "unix"
