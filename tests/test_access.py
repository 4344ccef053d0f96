"""Access policy, sans-IO: allow/deny rules, per-address limits, rate-limited logging, token buckets."""

from __future__ import annotations

import copy
import ipaddress
import logging
import math
import random
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from socketlab.access import (
    DEFAULT_LOG_BURST,
    DEFAULT_LOG_PER_SECOND,
    AccessRuleError,
    AccessRules,
    PerAddressLimit,
    RateLimitedLog,
    TokenBucket,
)
from socketlab.errors import SocketlabError

#: Bounds every join() of a test thread.
TIMEOUT = 10.0

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network


# --- AccessRules: matching ---------------------------------------------------------------------


@pytest.mark.parametrize("rules", [AccessRules(), AccessRules.parse(), AccessRules.parse([], [])])
def test_no_rules_permit_everyone_without_parsing(rules: AccessRules) -> None:
    """No rules: restricts is False and every host is permitted, even one that is not an address."""
    assert not rules.restricts
    assert rules.allow == () and rules.deny == ()
    for host in ("127.0.0.1", "::1", "::ffff:10.0.0.1", "fe80::1%eth0", "", "localhost", "/tmp/socket"):
        assert rules.permits(host)


def test_one_allowed_ipv4_address_admits_only_it() -> None:
    """allow 127.0.0.2: that address (also IPv4-mapped) gets in, its neighbours and IPv6 do not."""
    rules = AccessRules.parse(allow=["127.0.0.2"])
    assert rules.restricts
    assert rules.permits("127.0.0.2")
    assert rules.permits("::ffff:127.0.0.2")
    for host in ("127.0.0.1", "127.0.0.3", "127.0.2.0", "::1", "::ffff:127.0.0.3", "::7f00:2"):
        assert not rules.permits(host), host


def test_one_allowed_ipv6_address_admits_only_it() -> None:
    """allow ::1: ::1 in any spelling gets in; ::2, 127.0.0.1 and ::ffff:0.0.0.1 do not."""
    rules = AccessRules.parse(allow=["::1"])
    assert rules.permits("::1")
    assert rules.permits("0:0:0:0:0:0:0:1")
    for host in ("::2", "::", "127.0.0.1", "0.0.0.1", "::ffff:0.0.0.1"):
        assert not rules.permits(host), host


@pytest.mark.parametrize(
    ("host", "inside"),
    [
        ("10.0.0.0", True),
        ("10.0.0.1", True),
        ("10.128.7.9", True),
        ("10.255.255.255", True),
        ("9.255.255.255", False),
        ("11.0.0.0", False),
        ("110.0.0.1", False),
        ("0.0.0.10", False),
        ("::ffff:10.1.2.3", True),
        ("::ffff:11.1.2.3", False),
    ],
)
def test_ipv4_block_boundaries(host: str, inside: bool) -> None:
    """allow 10.0.0.0/8 holds exactly 10.0.0.0 to 10.255.255.255."""
    assert AccessRules.parse(allow=["10.0.0.0/8"]).permits(host) is inside


@pytest.mark.parametrize(
    ("host", "inside"),
    [
        ("fe80::", True),
        ("fe80::1", True),
        ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", True),
        ("fea0::9", True),
        ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", False),
        ("fec0::", False),
        ("::1", False),
        ("fe80", False),
    ],
)
def test_ipv6_block_boundaries(host: str, inside: bool) -> None:
    """allow fe80::/10 holds exactly fe80:: to febf:ffff:...:ffff."""
    assert AccessRules.parse(allow=["fe80::/10"]).permits(host) is inside


def test_whole_family_blocks_do_not_cross_families() -> None:
    """0.0.0.0/0 is every IPv4 peer (mapped ones too) and no IPv6 peer; ::/0 the reverse."""
    v4 = AccessRules.parse(allow=["0.0.0.0/0"])
    v6 = AccessRules.parse(allow=["::/0"])
    for host in ("0.0.0.0", "1.2.3.4", "255.255.255.255", "::ffff:1.2.3.4"):
        assert v4.permits(host) and not v6.permits(host), host
    for host in ("::", "::1", "2001:db8::1", "fe80::1%eth0", "::fffe:102:304"):
        assert v6.permits(host) and not v4.permits(host), host


def test_deny_wins_over_allow() -> None:
    """A peer matching both an allow and a deny rule is refused; the rest of the allowed block gets in."""
    rules = AccessRules.parse(allow=["10.0.0.0/8", "10.1.2.3"], deny=["10.1.2.3", "10.2.0.0/16"])
    assert not rules.permits("10.1.2.3")
    assert not rules.permits("::ffff:10.1.2.3")
    assert not rules.permits("10.2.255.1")
    assert rules.permits("10.1.2.4")
    assert rules.permits("10.3.0.0")
    assert not rules.permits("192.168.0.1")


def test_deny_only_refuses_just_the_denied() -> None:
    """Only deny rules: everyone else, of either family, gets in."""
    rules = AccessRules.parse(deny=["192.0.2.0/24", "2001:db8::/32"])
    assert rules.restricts
    for host in ("192.0.2.0", "192.0.2.255", "::ffff:192.0.2.7", "2001:db8::1", "2001:db8:ffff::1"):
        assert not rules.permits(host), host
    for host in ("192.0.3.0", "127.0.0.1", "::1", "2001:db9::1", "::ffff:192.0.3.7"):
        assert rules.permits(host), host


def test_allow_rules_of_one_family_refuse_the_other() -> None:
    """With only IPv6 allow rules, every IPv4 peer is refused, and the other way round."""
    assert not AccessRules.parse(allow=["::1"]).permits("127.0.0.1")
    assert not AccessRules.parse(allow=["127.0.0.1"]).permits("::1")
    both = AccessRules.parse(allow=["::1", "127.0.0.1"])
    assert both.permits("::1") and both.permits("127.0.0.1") and both.permits("::ffff:127.0.0.1")


def test_mapped_rules_become_ipv4_rules() -> None:
    """Rules inside ::ffff:0:0/96 are stored and matched as IPv4; both constructors normalise."""
    rules = AccessRules.parse(allow=["::ffff:127.0.0.2", "::ffff:10.0.0.0/104", "::ffff:0:0/96"])
    assert rules.allow == (V4("127.0.0.2/32"), V4("10.0.0.0/8"), V4("0.0.0.0/0"))
    assert AccessRules(allow=[V6("::ffff:10.0.0.0/104")]).allow == (V4("10.0.0.0/8"),)
    only_mapped_ten = AccessRules.parse(allow=["::ffff:10.0.0.0/104"])
    assert only_mapped_ten.permits("10.9.8.7") and only_mapped_ten.permits("::ffff:10.9.8.7")
    assert not only_mapped_ten.permits("11.0.0.1")


def test_blocks_overlapping_but_not_inside_the_mapped_range_stay_ipv6() -> None:
    """::/64 and ::ffff:0:0/95 contain the mapped range but stay IPv6 rules, matching no IPv4 peer."""
    rules = AccessRules.parse(allow=["::/64", "::fffe:0:0/95"])
    assert rules.allow == (V6("::/64"), V6("::fffe:0:0/95"))
    assert rules.permits("::1") and rules.permits("::fffe:a00:1")
    assert not rules.permits("::ffff:10.0.0.1") and not rules.permits("10.0.0.1")


def test_near_mapped_peers_are_ipv6() -> None:
    """Only ::ffff:a.b.c.d is an IPv4 peer: ::fffe:..., IPv4-compatible ::a.b.c.d and NAT64 are IPv6."""
    rules = AccessRules.parse(allow=["10.0.0.0/8"])
    for host in ("::fffe:a00:1", "::a00:1", "64:ff9b::a00:1", "1::ffff:a00:1", "::1:ffff:a00:1"):
        assert not rules.permits(host), host


def test_scope_ids_in_peers_are_ignored() -> None:
    """fe80::1%eth0 (or %2) is matched as fe80::1 by allow and by deny rules."""
    allow = AccessRules.parse(allow=["fe80::/10"])
    assert allow.permits("fe80::1%eth0") and allow.permits("fe80::1%2") and allow.permits("fe80::1%")
    deny = AccessRules.parse(deny=["fe80::1"])
    assert not deny.permits("fe80::1%eth0") and not deny.permits("fe80::1%2")
    assert deny.permits("fe80::2%eth0")


@pytest.mark.parametrize(
    "host",
    [
        "",
        "localhost",
        "/tmp/socket",
        "1.2.3.4 ",
        " 1.2.3.4",
        "1.2.3",
        "999.1.1.1",
        "1.2.3.4\x00",
        "010.0.0.1",
        "::g",
        "1.2.3.4%eth0",
        "[::1]",
        "10.0.0.0/8",
    ],
)
def test_non_addresses_are_refused_whenever_there_are_rules(host: str) -> None:
    """A host that is not an IP address never gets in past rules, not even deny-only rules."""
    assert not AccessRules.parse(allow=["0.0.0.0/0", "::/0"]).permits(host)
    assert not AccessRules.parse(deny=["192.0.2.1"]).permits(host)


def test_rules_are_normalised_deduplicated_and_ordered() -> None:
    """Whitespace is trimmed, netmask and hostmask forms accepted, duplicates dropped, order kept."""
    rules = AccessRules.parse(
        allow=[" 10.0.0.0/255.0.0.0 ", "10.0.0.0/0.255.255.255", "10.0.0.0/8", "2001:DB8::/32", "\t::1\n"],
        deny=["10.1.0.0/16", "10.1.0.0/16"],
    )
    assert rules.allow == (V4("10.0.0.0/8"), V6("2001:db8::/32"), V6("::1/128"))
    assert rules.deny == (V4("10.1.0.0/16"),)
    assert repr(rules) == "AccessRules(allow=['10.0.0.0/8', '2001:db8::/32', '::1/128'], deny=['10.1.0.0/16'])"


def test_rules_cannot_be_changed() -> None:
    """allow, deny and restricts are read-only and no attribute can be added."""
    rules = AccessRules.parse(allow=["10.0.0.0/8"])
    for name in ("allow", "deny", "restricts", "extra"):
        with pytest.raises(AttributeError):
            setattr(rules, name, ())


def random_network(rng: random.Random) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A random IPv4 or IPv6 block; short prefixes and host routes both likely."""
    bits = rng.choice((32, 128))
    prefix = rng.choice((0, 1, 7, 8, 16, 23, 24, 31, bits, bits, rng.randint(0, bits)))
    value = rng.getrandbits(bits)
    if bits == 32:
        return V4((value, prefix), strict=False)
    return V6((value, prefix), strict=False)


def random_peer(rng: random.Random, networks: list) -> str:
    """A peer host string: inside one of *networks*, or random; IPv4 sometimes IPv4-mapped."""
    if networks and rng.random() < 0.6:
        network = rng.choice(networks)
        address = (
            network[rng.randrange(network.num_addresses)]
            if network.num_addresses < 2**64
            else network.network_address + rng.getrandbits(network.max_prefixlen - network.prefixlen)
        )
    else:
        address = ipaddress.ip_address(rng.getrandbits(32)) if rng.random() < 0.5 else ipaddress.ip_address(rng.getrandbits(128))
    if address.version == 4 and rng.random() < 0.3:
        return f"::ffff:{address}"
    return str(address)


def reference_permits(allow: list, deny: list, host: str) -> bool:
    """The policy, spelt out with ipaddress containment: slow, obviously right."""
    address = ipaddress.ip_address(host)
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped

    def inside(networks: list) -> bool:
        return any(address.version == network.version and address in network for network in networks)

    return not inside(deny) and (not allow or inside(allow))


def test_permits_agrees_with_ipaddress_containment_on_random_rules() -> None:
    """Against random rule sets and peers, permits() decides what ipaddress containment decides."""
    rng = random.Random(20240607)
    for _ in range(300):
        allow = [random_network(rng) for _ in range(rng.randint(0, 6))]
        deny = [random_network(rng) for _ in range(rng.randint(0, 3))]
        rules = AccessRules.parse([str(n) for n in allow], [str(n) for n in deny])
        for _ in range(40):
            host = random_peer(rng, allow + deny)
            assert rules.permits(host) is reference_permits(allow, deny, host), (allow, deny, host)


# --- AccessRules: @FILE ---------------------------------------------------------------------------


def test_rule_file_skips_comments_and_blank_lines(tmp_path, monkeypatch) -> None:
    """One rule a line; full-line and trailing # comments, blank lines, indentation, CRLF and a BOM ignored."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "office.txt").write_bytes(
        b"\xef\xbb\xbf# office networks\r\n"
        b"\r\n"
        b"10.0.0.0/8   # the LAN\r\n"
        b"   2001:db8::/32\t# v6\r\n"
        b"#192.168.0.0/16 not this one\n"
        b"   # indented comment\n"
        b"\n"
        b"127.0.0.2"
    )
    rules = AccessRules.parse(allow=["@office.txt", "192.0.2.1"])
    assert rules.allow == (V4("10.0.0.0/8"), V6("2001:db8::/32"), V4("127.0.0.2/32"), V4("192.0.2.1/32"))
    assert rules.permits("10.1.1.1") and rules.permits("127.0.0.2") and rules.permits("192.0.2.1")
    assert not rules.permits("192.168.0.1")


def test_deny_file_and_empty_deny_file(tmp_path) -> None:
    """A deny file denies its rules; an empty or comment-only deny file is no rules at all."""
    blocked = tmp_path / "blocked.txt"
    blocked.write_text("192.0.2.0/24\n::ffff:198.51.100.7\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody blocked yet\n\n")
    rules = AccessRules.parse(deny=[f"@{blocked}", f"@{empty}"])
    assert rules.deny == (V4("192.0.2.0/24"), V4("198.51.100.7/32"))
    assert not rules.permits("192.0.2.9") and not rules.permits("::ffff:198.51.100.7")
    assert rules.permits("198.51.100.8")
    assert not AccessRules.parse(deny=[f"@{empty}"]).restricts


def test_file_name_may_contain_hash_and_spaces(tmp_path, monkeypatch) -> None:
    """Only lines inside a file have comments: the @FILE argument itself is a plain path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my #1 rules.txt").write_text("::1\n")
    assert AccessRules.parse(allow=["@my #1 rules.txt"]).allow == (V6("::1/128"),)


def test_access_rule_error_is_a_socketlab_error() -> None:
    """The command line prints AccessRuleError as one line like every SocketlabError."""
    assert issubclass(AccessRuleError, SocketlabError)


@pytest.mark.parametrize(
    ("allow", "deny", "message"),
    [
        (["10.0.0.300"], [], "invalid --allow rule '10.0.0.300': not an address or CIDR block"),
        ([], ["10.0.0.300"], "invalid --deny rule '10.0.0.300': not an address or CIDR block"),
        (["foo"], [], "invalid --allow rule 'foo': not an address or CIDR block"),
        ([""], [], "invalid --allow rule '': not an address or CIDR block"),
        (["   "], [], "invalid --allow rule '': not an address or CIDR block"),
        (["010.0.0.1"], [], "invalid --allow rule '010.0.0.1': not an address or CIDR block"),
        (["10.0.0.0/33"], [], "invalid --allow rule '10.0.0.0/33': not an address or CIDR block"),
        (["10.0.0.0/-1"], [], "invalid --allow rule '10.0.0.0/-1': not an address or CIDR block"),
        (["::1/129"], [], "invalid --allow rule '::1/129': not an address or CIDR block"),
        (["10.0.0.0/8 10.1.0.0/16"], [], "invalid --allow rule '10.0.0.0/8 10.1.0.0/16': not an address or CIDR block"),
        (["10.0.0.1/8"], [], "invalid --allow rule '10.0.0.1/8': host bits set (did you mean 10.0.0.0/8?)"),
        ([], ["192.168.1.1/24"], "invalid --deny rule '192.168.1.1/24': host bits set (did you mean 192.168.1.0/24?)"),
        (["fe80::1/10"], [], "invalid --allow rule 'fe80::1/10': host bits set (did you mean fe80::/10?)"),
        (["fe80::1%eth0"], [], "invalid --allow rule 'fe80::1%eth0': scope ids are not supported"),
        ([], ["fe80::/10%eth0"], "invalid --deny rule 'fe80::/10%eth0': scope ids are not supported"),
        (["10.0.0.1", "bad"], ["also bad"], "invalid --allow rule 'bad': not an address or CIDR block"),
        (["10.0.0.1"], ["::1", "bad"], "invalid --deny rule 'bad': not an address or CIDR block"),
    ],
)
def test_invalid_rules_raise_one_exact_line(allow: list, deny: list, message: str) -> None:
    """Each kind of bad rule gives its own one-line message naming the option and the rule."""
    with pytest.raises(AccessRuleError) as info:
        AccessRules.parse(allow, deny)
    assert str(info.value) == message


def parse_error(allow: list | None = None, deny: list | None = None) -> str:
    """The message AccessRules.parse raises for these specs."""
    with pytest.raises(AccessRuleError) as info:
        AccessRules.parse(allow or [], deny or [])
    return str(info.value)


def test_file_errors_raise_one_exact_line(tmp_path, monkeypatch) -> None:
    """Missing, unreadable and non-UTF-8 files, bad lines, nested files and empty allow files: exact lines."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir").mkdir()
    (tmp_path / "latin1.txt").write_bytes(b"# caf\xe9\n10.0.0.1\n")
    (tmp_path / "x.txt").write_text("10.0.0.1\n\nfoo  # a typo\n")
    (tmp_path / "bits.txt").write_text("# line 1\n192.168.1.1/24\n")
    (tmp_path / "nested.txt").write_text("::1\n@x.txt\n")
    (tmp_path / "scoped.txt").write_text("fe80::1%eth0\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "comments.txt").write_text("# to do\n\n   \n")
    assert parse_error(deny=["@x.txt_missing"]) == "cannot read --deny file 'x.txt_missing': No such file or directory"
    assert parse_error(allow=["@"]) == "cannot read --allow file '': No such file or directory"
    assert parse_error(deny=["@dir"]) == "cannot read --deny file 'dir': Is a directory"
    assert parse_error(allow=["@latin1.txt"]) == "cannot read --allow file 'latin1.txt': not UTF-8 text"
    assert parse_error(deny=["@x.txt"]) == "x.txt line 3: invalid --deny rule 'foo': not an address or CIDR block"
    assert parse_error(allow=["@bits.txt"]) == (
        "bits.txt line 2: invalid --allow rule '192.168.1.1/24': host bits set (did you mean 192.168.1.0/24?)"
    )
    assert parse_error(allow=["@nested.txt"]) == (
        "nested.txt line 2: invalid --allow rule '@x.txt': a rule file cannot include another"
    )
    assert (
        parse_error(deny=["@scoped.txt"]) == "scoped.txt line 1: invalid --deny rule 'fe80::1%eth0': scope ids are not supported"
    )
    assert parse_error(allow=["@empty.txt"]) == "--allow file 'empty.txt' has no rules (it would refuse everyone)"
    assert parse_error(allow=["10.0.0.1", "@comments.txt"]) == (
        "--allow file 'comments.txt' has no rules (it would refuse everyone)"
    )


def test_a_single_string_is_not_a_list_of_rules() -> None:
    """parse(allow="10.0.0.1") is a caller's mistake, caught instead of read as ten one-character rules."""
    with pytest.raises(TypeError, match="allow must be a sequence of rules, not one string"):
        AccessRules.parse(allow="10.0.0.1")
    with pytest.raises(TypeError, match="deny must be a sequence of rules, not one string"):
        AccessRules.parse(deny="10.0.0.1")


def run_threads(target: Callable[[], None], count: int = 8) -> None:
    """Run *count* threads of *target*, released together; re-raise the first error one of them met."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait(TIMEOUT)
            target()
        except BaseException as error:  # handed to the main thread
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Make the interpreter switch threads every microsecond, so that a missing lock shows."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


# --- PerAddressLimit -------------------------------------------------------------------------------


def test_per_address_limit_counts_each_address_separately() -> None:
    """The limit-th connection from one address is admitted, the next refused; other addresses unaffected."""
    limit = PerAddressLimit(2)
    assert limit.acquire("10.0.0.1") and limit.acquire("10.0.0.1")
    assert not limit.acquire("10.0.0.1")
    assert limit.count("10.0.0.1") == 2
    assert limit.acquire("10.0.0.2")
    assert len(limit) == 2
    limit.release("10.0.0.1")
    assert limit.count("10.0.0.1") == 1
    assert limit.acquire("10.0.0.1")
    assert not limit.acquire("10.0.0.1")


def test_per_address_limit_forgets_addresses_at_zero() -> None:
    """Releasing the last connection of an address removes its entry: memory follows live connections."""
    limit = PerAddressLimit(3)
    for host in ("10.0.0.1", "10.0.0.1", "::1", "fe80::1%eth0"):
        assert limit.acquire(host)
    for host in ("10.0.0.1", "::1", "fe80::1%eth0", "10.0.0.1"):
        limit.release(host)
    assert len(limit) == 0
    assert limit.count("10.0.0.1") == 0


def test_per_address_limit_normalises_addresses() -> None:
    """::ffff:10.0.0.1 is 10.0.0.1, fe80::1%eth0 is fe80::1, and 0:0::1 is ::1."""
    limit = PerAddressLimit(2)
    assert limit.acquire("10.0.0.1") and limit.acquire("::ffff:10.0.0.1")
    assert not limit.acquire("10.0.0.1") and not limit.acquire("::ffff:10.0.0.1")
    assert limit.acquire("fe80::1%eth0") and limit.acquire("fe80::1")
    assert not limit.acquire("fe80::1%eth1")
    assert limit.acquire("::1") and limit.acquire("0:0::1")
    assert not limit.acquire("::1")
    assert len(limit) == 3
    limit.release("::ffff:10.0.0.1")
    assert limit.count("10.0.0.1") == 1


def test_per_address_limit_counts_other_hosts_by_text() -> None:
    """A host that is not an IP address (an AF_UNIX path) is counted under its own text."""
    limit = PerAddressLimit(1)
    assert limit.acquire("") and not limit.acquire("")
    assert limit.acquire("/tmp/socket") and not limit.acquire("/tmp/socket")
    limit.release("")
    limit.release("/tmp/socket")
    assert len(limit) == 0


def test_release_without_acquire_is_an_error() -> None:
    """release() of an address holding nothing raises ValueError and stores nothing."""
    limit = PerAddressLimit(1)
    with pytest.raises(ValueError, match=r"release\('10.0.0.1'\) without acquire\(\)"):
        limit.release("10.0.0.1")
    assert limit.acquire("10.0.0.1")
    limit.release("10.0.0.1")
    with pytest.raises(ValueError):
        limit.release("::ffff:10.0.0.1")
    assert len(limit) == 0


@pytest.mark.parametrize("unlimited", [None, 0])
def test_no_per_address_limit_counts_nothing(unlimited: int | None) -> None:
    """limit None or 0: every acquire succeeds, nothing is stored, release never complains."""
    limit = PerAddressLimit(unlimited)
    assert limit.limit is None
    assert all(limit.acquire("10.0.0.1") for _ in range(1000))
    assert len(limit) == 0 and limit.count("10.0.0.1") == 0
    limit.release("10.0.0.9")


def test_negative_per_address_limit_is_refused() -> None:
    """A negative limit is a ValueError, not a silent 'unlimited'."""
    with pytest.raises(ValueError, match="limit must be 0"):
        PerAddressLimit(-1)


def test_per_address_limit_loses_no_update_under_threads(busy_switching) -> None:
    """Threads acquiring and releasing one address (two spellings) as fast as they can leave no entry."""
    for _ in range(3):
        limit = PerAddressLimit(1000)

        def churn(limit: PerAddressLimit = limit) -> None:
            for _ in range(3000):
                assert limit.acquire("10.0.0.1") and limit.acquire("::ffff:10.0.0.1")
                limit.release("::ffff:10.0.0.1")
                limit.release("10.0.0.1")

        run_threads(churn)
        assert len(limit) == 0


def test_per_address_limit_holds_under_threads(busy_switching) -> None:
    """Threads hammering acquire/release on a few addresses never hold more than the limit of one."""
    limit = PerAddressLimit(2)
    hosts = ["10.0.0.1", "::ffff:10.0.0.1", "10.0.0.2", "fe80::1%eth0", "fe80::1", "::1"]
    same = {"::ffff:10.0.0.1": "10.0.0.1", "fe80::1%eth0": "fe80::1"}
    held: dict[str, int] = {}  # what the threads hold: never more than the limiter counts
    most_held: dict[str, int] = {}
    check = threading.Lock()
    seeds = iter(range(8))

    def hold_and_let_go(host: str, change: int) -> None:
        with check:
            key = same.get(host, host)
            held[key] = held.get(key, 0) + change
            most_held[key] = max(most_held.get(key, 0), held[key])

    def hammer() -> None:
        rng = random.Random(next(seeds))
        mine: list[str] = []
        for step in range(3000):
            if mine and (rng.random() < 0.5 or step >= 2990):
                host = mine.pop(rng.randrange(len(mine)))
                hold_and_let_go(host, -1)
                limit.release(host)
            elif limit.acquire(host := rng.choice(hosts)):
                mine.append(host)
                hold_and_let_go(host, +1)
        for host in mine:
            hold_and_let_go(host, -1)
            limit.release(host)

    run_threads(hammer)
    assert len(limit) == 0
    assert set(most_held) == {"10.0.0.1", "10.0.0.2", "fe80::1", "::1"}
    assert max(most_held.values()) <= 2
    assert set(held.values()) == {0}


# --- TokenBucket ----------------------------------------------------------------------------------


def test_bucket_starts_full_and_refills_at_its_rate() -> None:
    """rate 2, burst 4: four at once, then one every half second, exactly."""
    bucket = TokenBucket(2, 4, now=10.0)
    assert bucket.take(4, 10.0)
    assert not bucket.take(1, 10.0)
    assert bucket.wait_time(1, 10.0) == 0.5
    assert not bucket.take(1, 10.25)
    assert bucket.wait_time(1, 10.25) == 0.25
    assert bucket.take(1, 10.5)
    assert not bucket.take(0.5, 10.5)
    assert bucket.take(0.5, 10.75)
    assert bucket.wait_time(2, 10.75) == 1.0
    assert bucket.take(2, 11.75)
    assert bucket.wait_time(0, 11.75) == 0.0 and bucket.take(0, 11.75)


def test_a_refused_take_consumes_nothing() -> None:
    """take() of more than is there fails and leaves what is there for a smaller take."""
    bucket = TokenBucket(1, 3, now=0.0)
    assert bucket.take(2, 0.0)
    assert not bucket.take(1.5, 0.0)
    assert not bucket.take(3, 0.25)
    assert bucket.take(1.25, 0.25)
    assert not bucket.take(0.25, 0.25)


def test_bucket_never_holds_more_than_burst() -> None:
    """After a long idle time there are burst tokens, not more."""
    bucket = TokenBucket(5, 10, now=0.0)
    assert bucket.take(10, 0.0)
    assert bucket.wait_time(10, 1000.0) == 0.0
    assert bucket.take(10, 1000.0)
    assert not bucket.take(0.25, 1000.0)
    wait = bucket.wait_time(0.25, 1000.0)
    assert wait == pytest.approx(0.05, abs=1e-12)
    # 1000.0 + 0.05 falls a rounding short of the refill; wait_time() rounds up to the time that suffices.
    assert not bucket.take(0.25, 1000.0 + 0.05)
    assert bucket.take(0.25, 1000.0 + wait)


def test_bucket_amount_above_burst_never_fits() -> None:
    """An amount larger than burst is never available: take() fails, wait_time() is inf."""
    bucket = TokenBucket(100, 8, now=0.0)
    assert bucket.wait_time(9, 0.0) == math.inf
    assert not bucket.take(9, 1e9)
    assert bucket.take(8, 1e9)


def test_wait_time_changes_nothing() -> None:
    """wait_time() is a question: asking it any number of times leaves take() unchanged."""
    bucket = TokenBucket(4, 4, now=0.0)
    assert bucket.take(4, 0.0)
    for _ in range(3):
        assert bucket.wait_time(2, 0.25) == 0.25
    assert not bucket.take(2, 0.25)
    assert bucket.take(2, 0.5)


def test_bucket_ignores_time_going_backwards() -> None:
    """A now earlier than the last adds nothing, raises nothing, and does not restart the refill."""
    bucket = TokenBucket(1, 1, now=10.0)
    assert bucket.take(1, 10.0)
    assert not bucket.take(1, 9.0)
    assert bucket.wait_time(1, 9.0) == 2.0  # one second back to 10.0, then one to refill
    assert not bucket.take(1, 10.5)
    assert bucket.take(1, 11.0)


def test_rate_zero_is_unlimited() -> None:
    """rate 0: every take succeeds at once, whatever the amount or burst."""
    bucket = TokenBucket(0, 0, now=0.0)
    assert all(bucket.take(1e12, 0.0) for _ in range(100))
    assert bucket.wait_time(1e12, 0.0) == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(-1, 10), (1, 0), (1, -1)])
def test_bucket_rejects_meaningless_settings(rate: float, burst: float) -> None:
    """A negative rate, or a limited rate with no burst, is a ValueError."""
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, now=0.0)


def test_bucket_rejects_negative_amounts() -> None:
    """Taking or waiting for a negative amount is a ValueError."""
    bucket = TokenBucket(1, 1, now=0.0)
    with pytest.raises(ValueError):
        bucket.take(-1, 0.0)
    with pytest.raises(ValueError):
        bucket.wait_time(-1, 0.0)


def test_bucket_long_run_rate_is_exact() -> None:
    """Asking every millisecond for 10.1 s at rate 5, burst 10: exactly 10 + 50 granted."""
    bucket = TokenBucket(5, 10, now=0.0)
    granted = sum(bucket.take(1, step / 1000) for step in range(10_101))
    assert granted == 60


def test_waiting_exactly_wait_time_always_suffices() -> None:
    """For random rates, amounts, clock values (also before the last take), take(a, now + wait_time(a, now))
    succeeds, and wait_time is the deficit over the rate (plus any time back to the last take), rounded up."""
    rng = random.Random(5)
    for _ in range(5000):
        rate = rng.choice((1, 3, 10, 1e6, rng.uniform(0.01, 1e6)))
        burst = rng.choice((1.0, 2 * rate, rng.uniform(1, 10 * rate)))
        now = rng.choice((0.0, 1e6, 123456.789, rng.uniform(0, 1e9)))
        bucket = TokenBucket(rate, burst, now=now)
        for _ in range(rng.randint(1, 4)):
            now += rng.choice((0.0, rng.uniform(0, 0.1), 1 / rate))
            bucket.take(rng.uniform(0, burst), now)
        now += rng.choice((0.0, 0.0, rng.uniform(0, burst / rate), -rng.uniform(0, 2000)))
        amount = rng.uniform(0, burst)
        level = min(burst, bucket._tokens + max(0.0, now - bucket._stamp) * rate)
        wait = bucket.wait_time(amount, now)
        expected = 0.0 if level >= amount else max(0.0, bucket._stamp - now) + (amount - level) / rate
        assert wait == pytest.approx(expected, rel=1e-9, abs=1e-6)
        assert copy.copy(bucket).take(amount, now + wait), (rate, burst, now, amount, wait)


def test_waiting_exactly_wait_time_suffices_where_now_plus_wait_rounds_down() -> None:
    """A case found by search: now + (ready - now) rounds below ready; wait_time() still suffices."""
    bucket = TokenBucket(3.0, 20636.518568879277, now=929.1525418938089)
    assert bucket.take(20636.518568879277, 929.1525418938089)
    now, amount = 2422.14165587622, 19139.977772872047
    wait = bucket.wait_time(amount, now)
    assert wait == pytest.approx((amount - (now - 929.1525418938089) * 3.0) / 3.0, rel=1e-12)
    assert bucket.take(amount, now + wait)


# --- RateLimitedLog -------------------------------------------------------------------------------


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Capture(logging.Handler):
    """Keeps every record it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        return [f"{record.levelname} {record.getMessage()}" for record in self.records]


@pytest.fixture
def logged(request) -> Iterator[tuple[logging.Logger, Capture]]:
    """A logger of its own for the test (INFO and up, not propagated) and the capture of its records."""
    logger = logging.getLogger(f"socketlab.tests.access.{request.node.name}")
    capture = Capture()
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, capture
    logger.removeHandler(capture)


def test_rate_limited_log_burst_then_rate_then_summary(logged) -> None:
    """burst 3, 2 a second: three lines at once, the rest counted, then one summary line before the next."""
    logger, capture = logged
    clock = FakeClock(100.0)
    log = RateLimitedLog(logger, per_second=2, burst=3, what="refused connections", clock=clock)
    results = [log.log(level, "refused %s", f"10.0.0.{n}") for n, level in enumerate([logging.INFO] * 3 + [logging.WARNING], 1)]
    assert results == [True, True, True, False]
    clock.now = 100.25
    assert not log.log(logging.INFO, "refused %s", "10.0.0.5")
    assert not log.log(logging.INFO, "refused %s", "10.0.0.6")
    assert log.suppressed == 3
    clock.now = 100.5
    assert log.log(logging.INFO, "refused %s", "10.0.0.7")
    assert log.suppressed == 0
    assert not log.log(logging.INFO, "refused %s", "10.0.0.8")
    clock.now = 101.0
    assert log.log(logging.INFO, "refused %s", "10.0.0.9")
    assert capture.lines() == [
        "INFO refused 10.0.0.1",
        "INFO refused 10.0.0.2",
        "INFO refused 10.0.0.3",
        "WARNING ... and 3 more refused connections not logged",
        "INFO refused 10.0.0.7",
        "INFO ... and 1 more refused connections not logged",
        "INFO refused 10.0.0.9",
    ]


def test_rate_limited_log_takes_now_instead_of_the_clock(logged) -> None:
    """log(..., now=t) uses t; the clock is not consulted."""
    logger, capture = logged
    clock = FakeClock(0.0)
    log = RateLimitedLog(logger, per_second=1, burst=1, clock=clock)
    assert log.log(logging.INFO, "a", now=0.0)
    assert not log.log(logging.INFO, "b", now=0.5)
    assert log.log(logging.INFO, "c", now=1.0)
    assert capture.lines() == ["INFO a", "INFO ... and 1 more messages not logged", "INFO c"]


def test_rate_limited_log_defaults(logged) -> None:
    """Default: DEFAULT_LOG_BURST lines at once, then DEFAULT_LOG_PER_SECOND a second, noun 'messages'."""
    logger, capture = logged
    assert (DEFAULT_LOG_BURST, DEFAULT_LOG_PER_SECOND) == (10, 1.0)
    clock = FakeClock(5.0)
    log = RateLimitedLog(logger, clock=clock)
    assert sum(log.log(logging.INFO, "x") for _ in range(100)) == 10
    clock.now = 5.999
    assert not log.log(logging.INFO, "x")
    clock.now = 6.0
    assert log.log(logging.INFO, "x")
    assert capture.lines()[-2:] == ["INFO ... and 91 more messages not logged", "INFO x"]


def test_flush_reports_what_is_left_and_only_once(logged) -> None:
    """flush() logs the pending summary whatever the budget, then nothing until more is suppressed."""
    logger, capture = logged
    log = RateLimitedLog(logger, per_second=1, burst=1, what="datagrams from denied senders", clock=FakeClock())
    log.flush()
    assert capture.lines() == []
    assert log.log(logging.INFO, "first")
    for _ in range(4):
        log.log(logging.WARNING, "more")
    log.flush()
    log.flush()
    assert capture.lines() == ["INFO first", "WARNING ... and 4 more datagrams from denied senders not logged"]
    assert log.suppressed == 0


def test_lines_below_the_logger_level_cost_nothing(logged) -> None:
    """A DEBUG line on an INFO logger is not logged, not counted and takes no token."""
    logger, capture = logged
    log = RateLimitedLog(logger, per_second=1, burst=2, clock=FakeClock())
    assert not any(log.log(logging.DEBUG, "noise") for _ in range(50))
    assert log.suppressed == 0
    assert log.log(logging.INFO, "one") and log.log(logging.INFO, "two")
    assert capture.lines() == ["INFO one", "INFO two"]


def test_rate_zero_logs_everything(logged) -> None:
    """per_second 0 turns the limit off."""
    logger, capture = logged
    log = RateLimitedLog(logger, per_second=0, burst=0, clock=FakeClock())
    assert all(log.log(logging.INFO, "line %d", n) for n in range(500))
    assert len(capture.records) == 500 and log.suppressed == 0


def test_records_point_at_the_caller(logged) -> None:
    """Records (the line, its summary, a flush) name the function that called log(), not access.py."""
    logger, capture = logged
    log = RateLimitedLog(logger, per_second=1, burst=1, clock=FakeClock(0.0))
    log.log(logging.INFO, "a", now=0.0)
    log.log(logging.INFO, "b", now=0.0)
    log.log(logging.INFO, "c", now=1.0)
    log.log(logging.INFO, "d", now=1.0)
    log.flush()
    assert capture.lines() == [
        "INFO a",
        "INFO ... and 1 more messages not logged",
        "INFO c",
        "INFO ... and 1 more messages not logged",
    ]
    for record in capture.records:
        assert (record.funcName, record.filename) == ("test_records_point_at_the_caller", "test_access.py")


def test_rate_limited_log_under_threads_counts_every_line(logged, busy_switching) -> None:
    """Threads logging at one instant: exactly burst lines pass and every other line is in the summary."""
    logger, capture = logged
    for _ in range(5):
        capture.records.clear()
        log = RateLimitedLog(logger, per_second=1, burst=500, what="lines", clock=FakeClock(0.0))

        def flood(log: RateLimitedLog = log) -> None:
            for _ in range(2000):
                log.log(logging.INFO, "line")

        run_threads(flood)
        log.flush()
        assert capture.lines() == ["INFO line"] * 500 + ["INFO ... and 15500 more lines not logged"]
