"""Client-to-group lookup: the longest prefix among the groups' CIDRs that holds a client address, IPv4 and IPv6.

Rules: the most specific CIDR wins; a CIDR listed by two groups belongs to the first of them in config order;
an address no CIDR holds gets the default group. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4
client it carries: it is matched against the IPv4 CIDRs (and IPv6 CIDRs written inside ::ffff:0:0/96, which
count as the IPv4 CIDRs they spell), never against other IPv6 CIDRs, so it gets the group its IPv4 form gets.
Zone ids (fe80::1%eth0) are refused: a zone names an interface of the sender, not a client population.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from socket import AF_INET, AF_INET6, inet_pton
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from latency_router.config import Config

_V4_BITS = 32
_V6_BITS = 128
_V4_MAX = (1 << _V4_BITS) - 1
_V6_MAX = (1 << _V6_BITS) - 1
_MAPPED_HIGH = 0xFFFF  # an IPv6 address shifted right by 32 bits is this when it lies in ::ffff:0:0/96
_MAPPED_PREFIX_LEN = _V6_BITS - _V4_BITS
_SHOWN_CHARS = 100  # an error names at most this much of the offending text
_from_bytes = int.from_bytes


class _Level(NamedTuple):
    """One prefix length in the binary search over lengths: its table and the levels to try next."""

    shift: int  # address >> shift is the key of a network of this length
    table: dict[int, str]  # key -> group name: the real prefixes, plus markers holding their best real match
    shorter: _Level | None  # where to go when nothing at this length holds the address
    longer: _Level | None  # where to go when something does


def _walk(level: _Level | None, number: int, best: str) -> str:
    """The group of the longest prefix holding `number`, or `best` when none does."""
    while level is not None:
        shift, table, shorter, longer = level
        group = table.get(number >> shift)
        if group is None:
            level = shorter
        else:
            best = group
            level = longer
    return best


def _build(prefixes: dict[int, dict[int, str]], bits: int, default: str) -> _Level | None:
    """The search tree over the prefix lengths present, with the markers that make binary search exact.

    This is binary search on prefix lengths (Waldvogel et al., SIGCOMM 1997): about log2(lengths) dict probes
    per lookup instead of one per length present, which matters for IPv6 where up to 129 lengths can occur.
    """
    lengths = sorted(prefixes)
    real_longest_first = [(bits - length, length, prefixes[length]) for length in reversed(lengths)]
    tables = {length: dict(prefixes[length]) for length in lengths}

    def best_real(number: int, max_length: int) -> str:
        for shift, length, table in real_longest_first:
            if length <= max_length:
                group = table.get(number >> shift)
                if group is not None:
                    return group
        return default

    # a prefix leaves a marker at every shorter length the search visits on its way to the prefix's own length,
    # so the search goes longer there; the marker carries the best real match so far for when it finds nothing
    for index, length in enumerate(lengths):
        for key in prefixes[length]:
            number = key << (bits - length)
            low, high = 0, len(lengths) - 1
            while (middle := (low + high) // 2) != index:  # ends: each step narrows [low, high] towards index
                if middle > index:
                    high = middle - 1
                    continue
                marker_length = lengths[middle]
                marker = number >> (bits - marker_length)
                if marker not in tables[marker_length]:
                    tables[marker_length][marker] = best_real(number, marker_length)
                low = middle + 1

    def level(low: int, high: int) -> _Level | None:
        if low > high:
            return None
        middle = (low + high) // 2
        length = lengths[middle]
        return _Level(bits - length, tables[length], level(low, middle - 1), level(middle + 1, high))

    return level(0, len(lengths) - 1)


def _bad_address(text: str) -> str:
    shown = repr(text[:_SHOWN_CHARS]) + ("..." if len(text) > _SHOWN_CHARS else "")
    if "%" in text:
        return f"invalid IP address {shown}: zone ids (%...) are not accepted"
    return f"invalid IP address {shown}"


class GroupIndex:
    """Longest-prefix match from client addresses to group names."""

    __slots__ = ("default", "_root4", "_root6")

    def __init__(self, groups: Iterable[tuple[str, Iterable[IPv4Network | IPv6Network]]], default: str) -> None:
        v4: dict[int, dict[int, str]] = {}  # prefix length -> network key -> group
        v6: dict[int, dict[int, str]] = {}
        for name, networks in groups:
            for network in networks:
                if not isinstance(network, (IPv4Network, IPv6Network)):
                    raise TypeError(f"group {name!r}: expected an IPv4Network or IPv6Network, got {network!r}")
                number = int(network.network_address)
                length = network.prefixlen
                if isinstance(network, IPv4Network):
                    prefixes, bits = v4, _V4_BITS
                elif length >= _MAPPED_PREFIX_LEN and number >> _V4_BITS == _MAPPED_HIGH:
                    prefixes, bits, number, length = v4, _V4_BITS, number & _V4_MAX, length - _MAPPED_PREFIX_LEN
                else:
                    prefixes, bits = v6, _V6_BITS
                # setdefault: the first group in config order keeps a CIDR that a later group lists again
                prefixes.setdefault(length, {}).setdefault(number >> (bits - length), name)
        self.default = default
        self._root4 = _build(v4, _V4_BITS, default)
        self._root6 = _build(v6, _V6_BITS, default)

    @classmethod
    def from_config(cls, config: Config) -> GroupIndex:
        """The index of a config's groups in config order, with its default group."""
        return cls(((group.name, group.cidrs) for group in config.groups), config.default_group)

    def lookup(self, address: str | IPv4Address | IPv6Address) -> str:
        """The group of a client address (text or ipaddress object); ValueError naming the text when it is no address."""
        if type(address) is not str:
            return self._lookup_other(address)
        try:
            if ":" in address:
                number = _from_bytes(inet_pton(AF_INET6, address), "big")
            else:
                return _walk(self._root4, _from_bytes(inet_pton(AF_INET, address), "big"), self.default)
        except (OSError, ValueError):  # OSError: not an address; ValueError: an embedded NUL
            raise ValueError(_bad_address(address)) from None
        if number >> _V4_BITS == _MAPPED_HIGH:
            return _walk(self._root4, number & _V4_MAX, self.default)
        return _walk(self._root6, number, self.default)

    def lookup_int(self, version: int, packed_int: int) -> str:
        """The group of an address given as its IP version (4 or 6) and its integer value."""
        if version == 4 and 0 <= packed_int <= _V4_MAX:
            return _walk(self._root4, packed_int, self.default)
        if version == 6 and 0 <= packed_int <= _V6_MAX:
            if packed_int >> _V4_BITS == _MAPPED_HIGH:
                return _walk(self._root4, packed_int & _V4_MAX, self.default)
            return _walk(self._root6, packed_int, self.default)
        if version not in (4, 6):
            raise ValueError(f"IP version must be 4 or 6, got {version!r}")
        raise ValueError(f"{packed_int!r} is no IPv{version} address")

    def _lookup_other(self, address: object) -> str:
        if isinstance(address, str):  # a str subclass
            return self.lookup(str(address))
        if isinstance(address, IPv4Address):
            return _walk(self._root4, int(address), self.default)
        if isinstance(address, IPv6Address):
            if address.scope_id is not None:
                raise ValueError(_bad_address(str(address)))
            return self.lookup_int(6, int(address))
        raise TypeError(f"expected an IP address as text or an ipaddress object, got {type(address).__name__}")
