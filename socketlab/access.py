"""Who may connect, how many at once, and how much is logged: sans-IO policy for servers.

- :class:`AccessRules` -- ``--allow`` / ``--deny`` address and CIDR rules, checked
  per accepted connection and per datagram. It keeps a server that listens on a
  public address from serving networks it was not meant for. It is not
  authentication: an address is not an identity (NAT puts many people behind
  one), UDP source addresses are trivially forged, and the check runs after the
  kernel completed the TCP handshake, so it is no defence against SYN floods --
  that is a firewall's job.
- :class:`PerAddressLimit` -- at most N concurrent connections per address, so one
  host cannot take every ``--max-clients`` slot. It does not stop many addresses:
  a botnet, or one IPv6 host, which usually has a whole /64 to pick from.
- :class:`RateLimitedLog` -- a flood of refusals cannot fill the disk with log
  lines; suppressed lines are counted and reported. The refusals still cost CPU.
- :class:`TokenBucket` -- the one token bucket: under RateLimitedLog, flood control and the WebSocket ping limit.

A peer is matched in the family it really uses: an IPv4-mapped address
(``::ffff:10.0.0.1``, as a dual-stack ``::`` listener reports IPv4 peers) is the
IPv4 address, and rules written inside ``::ffff:0:0/96`` become IPv4 rules; other
IPv6 rules, even ``::/0``, never match an IPv4 peer. Scope ids (``fe80::1%eth0``)
are ignored in peers and refused in rules (a rule holds on every interface).
A block with host bits set (``10.0.0.1/8``) is refused: it is usually a typo.
So is an ``--allow`` file with no rules, which would silently refuse everyone.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence

# inet_pton converts text to bytes without opening a socket; ipaddress takes 1.5-4 us a peer, it 0.2 us.
from socket import AF_INET, AF_INET6, inet_pton

from socketlab.errors import SocketlabError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Per family, ((shift, {network >> shift}), ...): a peer matches when (address >> shift) is in a set.
_Table = tuple[tuple[int, frozenset[int]], ...]
#: Refused-connection log lines: the first DEFAULT_LOG_BURST at once, then DEFAULT_LOG_PER_SECOND a second.
DEFAULT_LOG_BURST = 10
DEFAULT_LOG_PER_SECOND = 1.0


class AccessRuleError(SocketlabError):
    """An ``--allow`` / ``--deny`` rule or rule file is invalid or unreadable."""


def _peer(host: str) -> tuple[bool, int] | None:
    """``(is_ipv6, address as int)`` of a peer host string, mapped IPv4 unmapped; None if not an IP."""
    try:
        if ":" not in host:
            return False, int.from_bytes(inet_pton(AF_INET, host), "big")
        value = int.from_bytes(inet_pton(AF_INET6, host.partition("%")[0]), "big")
    except (OSError, ValueError):
        return None
    return (False, value & 0xFFFFFFFF) if value >> 32 == 0xFFFF else (True, value)


def _unmap(network: Network) -> Network:
    """The IPv4 block an IPv6 block inside ``::ffff:0:0/96`` stands for; any other block unchanged."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _table(networks: Iterable[Network]) -> _Table:
    by_shift: dict[int, set[int]] = {}
    for network in networks:
        shift = network.max_prefixlen - network.prefixlen
        by_shift.setdefault(shift, set()).add(int(network.network_address) >> shift)
    return tuple((shift, frozenset(keys)) for shift, keys in sorted(by_shift.items()))


def _matches(table: _Table, value: int) -> bool:
    for shift, keys in table:
        if value >> shift in keys:
            return True
    return False


def _rule(spec: str, context: str) -> Network:
    """Parse an address or CIDR block; else raise AccessRuleError ``<context>: <reason>``."""
    try:
        if "%" not in spec:
            return _unmap(ipaddress.ip_network(spec))
        reason = "scope ids are not supported"
    except ValueError:
        try:
            reason = f"host bits set (did you mean {ipaddress.ip_network(spec, strict=False)}?)"
        except ValueError:
            reason = "not an address or CIDR block"
    raise AccessRuleError(f"{context}: {reason}")


def _read_rules(option: str, path: str) -> list[Network]:
    """The rules in file *path*, one a line; blank lines and ``#`` comments skipped."""
    try:
        with open(path, encoding="utf-8-sig") as file:
            lines = file.read().split("\n")
    except OSError as error:
        raise AccessRuleError(f"cannot read {option} file {path!r}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise AccessRuleError(f"cannot read {option} file {path!r}: not UTF-8 text") from None
    networks = []
    for number, line in enumerate(lines, 1):
        spec = line.partition("#")[0].strip()
        context = f"{path} line {number}: invalid {option} rule {spec!r}"
        if spec.startswith("@"):
            raise AccessRuleError(f"{context}: a rule file cannot include another")
        if spec:
            networks.append(_rule(spec, context))
    if not networks and option == "--allow":
        raise AccessRuleError(f"--allow file {path!r} has no rules (it would refuse everyone)")
    return networks


def _parse_specs(option: str, specs: Sequence[str]) -> list[Network]:
    if isinstance(specs, str):
        raise TypeError(f"{option[2:]} must be a sequence of rules, not one string")
    networks: list[Network] = []
    for spec in map(str.strip, specs):
        if spec.startswith("@"):
            networks += _read_rules(option, spec[1:])
        else:
            networks.append(_rule(spec, f"invalid {option} rule {spec!r}"))
    return networks


class AccessRules:
    """Which peer addresses a server serves; immutable, cheap to check.

    No rules: everyone. Any allow rule: only peers matching one. A deny rule
    wins over every allow rule. Rules are grouped by prefix length, so
    :meth:`permits` costs one set lookup per distinct length (about 0.5 us for a
    few rules, at most 33 lookups for IPv4 and 129 for IPv6 however many rules);
    with no rules it returns at once, and ``restricts`` lets callers skip it.
    """

    __slots__ = ("_allow", "_deny", "_tables", "_restricts")

    def __init__(self, allow: Iterable[Network] = (), deny: Iterable[Network] = ()) -> None:
        self._allow = tuple(dict.fromkeys(map(_unmap, allow)))
        self._deny = tuple(dict.fromkeys(map(_unmap, deny)))
        self._restricts = bool(self._allow or self._deny)
        #: Indexed by is_ipv6: (deny table, allow table) of that family.
        self._tables = tuple(
            (_table(n for n in self._deny if n.version == version), _table(n for n in self._allow if n.version == version))
            for version in (4, 6)
        )

    @classmethod
    def parse(cls, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> AccessRules:
        """Build the rules from specs: an address, a CIDR block, or ``@FILE`` of one spec a line.

        Raises AccessRuleError (one line naming the option, the rule or file,
        and for a file the line number) for an invalid rule, an unreadable file,
        a file naming another ``@FILE``, or an ``--allow`` file with no rules.
        """
        return cls(_parse_specs("--allow", allow), _parse_specs("--deny", deny))

    @property
    def allow(self) -> tuple[Network, ...]:
        """The allow blocks, mapped IPv6 blocks as IPv4, duplicates dropped, in order given."""
        return self._allow

    @property
    def deny(self) -> tuple[Network, ...]:
        """The deny blocks, as normalised as :attr:`allow`."""
        return self._deny

    @property
    def restricts(self) -> bool:
        """False when there are no rules: every peer is permitted, callers may skip the check."""
        return self._restricts

    def permits(self, host: str) -> bool:
        """Whether peer *host* (as ``accept()`` / ``recvfrom()`` report it) may be served.

        A host that is not an IP address (an AF_UNIX path, a name) is refused
        whenever there are rules.
        """
        if not self._restricts:
            return True
        peer = _peer(host)
        if peer is None:
            return False
        deny, allow = self._tables[peer[0]]
        if deny and _matches(deny, peer[1]):
            return False
        return not self._allow or _matches(allow, peer[1])

    def __repr__(self) -> str:
        return f"AccessRules(allow={[str(n) for n in self._allow]}, deny={[str(n) for n in self._deny]})"


class PerAddressLimit:
    """Counts concurrent connections per peer address; thread-safe.

    Addresses are normalised (mapped IPv6 to IPv4, scope ids dropped); a host
    that is not an IP is counted by its text. Only addresses with connections
    are stored. *limit* 0 or None: unlimited, nothing is counted.
    """

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise ValueError("limit must be 0 (unlimited) or more")
        self._limit = limit or None
        self._counts: dict[object, int] = {}
        self._lock = threading.Lock()

    @property
    def limit(self) -> int | None:
        """Connections allowed per address; None: unlimited."""
        return self._limit

    def acquire(self, host: str) -> bool:
        """Count one more connection from *host*; False (nothing counted) if it has ``limit`` already."""
        if self._limit is None:
            return True
        key = _peer(host) or host
        with self._lock:
            count = self._counts.get(key, 0)
            if count >= self._limit:
                return False
            self._counts[key] = count + 1
            return True

    def release(self, host: str) -> None:
        """Count one connection from *host* fewer; raises ValueError if it holds none."""
        if self._limit is None:
            return
        key = _peer(host) or host
        with self._lock:
            count = self._counts.pop(key, 0)
            if count == 0:
                raise ValueError(f"release({host!r}) without acquire()")
            if count > 1:
                self._counts[key] = count - 1

    def count(self, host: str) -> int:
        """Connections counted for *host* now."""
        return self._counts.get(_peer(host) or host, 0)

    def __len__(self) -> int:
        """Addresses with at least one connection."""
        return len(self._counts)


class TokenBucket:
    """*burst* tokens at most, refilled at *rate* a second; starts full. *rate* 0: unlimited.

    Not thread-safe (hold a lock around it). Time is whatever clock the caller
    passes as *now*; a *now* earlier than the last one adds nothing. An
    *amount* above *burst* never fits: counting bytes, make *burst* at least the
    largest single take (a whole line).
    """

    __slots__ = ("rate", "burst", "_tokens", "_stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate < 0 or (rate > 0 and burst <= 0):
            raise ValueError("rate must be 0 (unlimited) or more, and burst more than 0")
        self.rate, self.burst, self._tokens, self._stamp = rate, burst, burst, now

    def _level(self, now: float) -> float:
        return min(self.burst, self._tokens + max(0.0, now - self._stamp) * self.rate)

    def take(self, amount: float, now: float) -> bool:
        """Take *amount* tokens if there are that many at *now*; return whether it did."""
        if amount < 0:
            raise ValueError("amount must not be negative")
        if not self.rate:
            return True
        level = self._level(now)
        self._tokens, self._stamp = level, max(now, self._stamp)
        if level < amount:
            return False
        self._tokens = level - amount
        return True

    def take_whole(self, most: int, now: float) -> int:
        """Take as many whole tokens as there are at *now*, *most* at most; return how many."""
        if not self.rate:
            return most
        level = self._level(now)
        count = min(most, max(0, int(level)))
        self._tokens, self._stamp = level - count, max(now, self._stamp)
        return count

    def spend(self, amount: float, now: float) -> None:
        """Take *amount* whatever there is: the level may go below zero, a debt that ``wait_time(0, now)`` waits off."""
        level = self._level(now)
        self._tokens, self._stamp = level - amount, max(now, self._stamp)

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds from *now* until *amount* is available (0.0 if it is; inf above *burst*).

        Exact: ``take(amount, now + wait_time(amount, now))`` succeeds if nothing
        is taken in between. Changes nothing.
        """
        if amount < 0:
            raise ValueError("amount must not be negative")
        level = self._level(now)
        if not self.rate or level >= amount:
            return 0.0
        if amount > self.burst:
            return math.inf
        ready = max(now, self._stamp) + (amount - level) / self.rate
        while self._level(ready) < amount:  # float rounding: a step or two, here and below
            ready = math.nextafter(ready, math.inf)
        wait = ready - now
        while now + wait < ready:
            wait = math.nextafter(wait, math.inf)
        return wait


class RateLimitedLog:
    """Logs through *logger* at most *burst* lines at once, then *per_second* a second.

    Suppressed lines are counted; the next line logged is preceded by
    ``... and N more <what> not logged`` at the highest level suppressed,
    as is :meth:`flush` (call it on shutdown). Lines below the logger's level
    cost nothing and are not counted. *per_second* 0: no limit. Thread-safe.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        per_second: float = DEFAULT_LOG_PER_SECOND,
        burst: float = DEFAULT_LOG_BURST,
        what: str = "messages",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.what, self._clock = logger, what, clock
        self._bucket = TokenBucket(per_second, burst, clock())
        self._lock = threading.Lock()
        self._suppressed = 0
        self._suppressed_level = logging.NOTSET

    @property
    def suppressed(self) -> int:
        """Lines suppressed since the last summary."""
        return self._suppressed

    def log(self, level: int, msg: str, *args: object, now: float | None = None) -> bool:
        """Log ``msg % args`` at *level* unless over the limit; return whether it was logged."""
        if not self.logger.isEnabledFor(level):
            return False
        with self._lock:
            if not self._bucket.take(1, self._clock() if now is None else now):
                self._suppressed += 1
                self._suppressed_level = max(self._suppressed_level, level)
                return False
            summary = self._pop_summary()
        self._log_summary(summary)
        self.logger.log(level, msg, *args, stacklevel=2)
        return True

    def flush(self) -> None:
        """Log the summary of the lines suppressed since the last one, if any (call it on shutdown)."""
        with self._lock:
            summary = self._pop_summary()
        self._log_summary(summary)

    def _pop_summary(self) -> tuple[int, int]:
        summary = self._suppressed_level, self._suppressed
        self._suppressed, self._suppressed_level = 0, logging.NOTSET
        return summary

    def _log_summary(self, summary: tuple[int, int]) -> None:
        level, count = summary
        if count:
            self.logger.log(level, "... and %d more %s not logged", count, self.what, stacklevel=3)
