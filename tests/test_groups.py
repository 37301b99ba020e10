"""Client-to-group lookup: longest prefix wins, default on no match, IPv4/IPv6/mapped, first group wins a shared CIDR."""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latency_router.config import parse_config
from latency_router.decider.groups import GroupIndex
from support import MINIMAL_CONFIG

MINIMAL = MINIMAL_CONFIG

NESTED = [
    ("wide", ["10.0.0.0/8"]),
    ("mid", ["10.1.0.0/16"]),
    ("narrow", ["10.1.2.0/24"]),
    ("host", ["10.1.2.7/32"]),
    ("v6-wide", ["2001:db8::/32"]),
    ("v6-narrow", ["2001:db8:1::/48"]),
    ("v6-host", ["2001:db8:1::7/128"]),
]
# lengths 8, 16 and 24: the search starts at 16, where only another group's /16 exists, so 10.1 needs a marker there
MARKED = [("wide", ["10.0.0.0/8"]), ("other", ["172.16.0.0/16"]), ("narrow", ["10.1.2.0/24"])]


def index_of(groups: list[tuple[str, list[str]]], default: str = "default") -> GroupIndex:
    return GroupIndex([(name, [ip_network(c) for c in cidrs]) for name, cidrs in groups], default)


@pytest.mark.parametrize(
    "groups, address, expected",
    [
        (NESTED, "10.1.2.3", "narrow"),
        (NESTED, "10.1.3.3", "mid"),
        (NESTED, "10.200.0.1", "wide"),
        (NESTED, "10.1.2.7", "host"),
        (NESTED, "10.1.2.6", "narrow"),
        (NESTED, "11.0.0.1", "default"),
        (NESTED, "2001:db8:1::8", "v6-narrow"),
        (NESTED, "2001:db8:1::7", "v6-host"),
        (NESTED, "2001:0db8:0001:0000:0000:0000:0000:0007", "v6-host"),
        (NESTED, "2001:db8:2::1", "v6-wide"),
        (NESTED, "2001:db9::1", "default"),
        (NESTED, "::", "default"),
        (NESTED, "::ffff:10.1.2.3", "narrow"),
        (NESTED, "::ffff:a01:203", "narrow"),
        (NESTED, "::ffff:10.1.2.7", "host"),
        (NESTED, "::ffff:11.0.0.1", "default"),
        (NESTED, "::10.1.2.3", "default"),
        ([("v4-all", ["0.0.0.0/0"]), ("eu", ["192.0.2.0/24"])], "198.51.100.1", "v4-all"),
        ([("v4-all", ["0.0.0.0/0"]), ("eu", ["192.0.2.0/24"])], "192.0.2.1", "eu"),
        ([("v4-all", ["0.0.0.0/0"])], "0.0.0.0", "v4-all"),
        ([("v4-all", ["0.0.0.0/0"])], "255.255.255.255", "v4-all"),
        ([("v4-all", ["0.0.0.0/0"])], "2001:db8::1", "default"),
        ([("v6-all", ["::/0"])], "2001:db8::1", "v6-all"),
        ([("v6-all", ["::/0"])], "192.0.2.1", "default"),
        ([("v6-all", ["::/0"])], "::ffff:192.0.2.1", "default"),
        ([("mapped", ["::ffff:192.0.2.0/120"])], "192.0.2.9", "mapped"),
        ([("mapped", ["::ffff:192.0.2.0/120"])], "::ffff:192.0.2.9", "mapped"),
        ([("mapped-all", ["::ffff:0:0/96"]), ("eu", ["192.0.2.0/24"])], "198.51.100.1", "mapped-all"),
        ([("first", ["192.0.2.0/24"]), ("second", ["192.0.2.0/24"])], "192.0.2.1", "first"),
        ([("second", ["192.0.2.0/24"]), ("first", ["192.0.2.0/24"])], "192.0.2.1", "second"),
        ([("first", ["2001:db8::/48"]), ("second", ["2001:db8::/48"])], "2001:db8::1", "first"),
        ([("first", ["::ffff:192.0.2.0/120"]), ("second", ["192.0.2.0/24"])], "192.0.2.1", "first"),
        ([("first", ["192.0.2.0/24"]), ("second", ["192.0.2.0/25"])], "192.0.2.1", "second"),
        ([("empty", []), ("eu", ["192.0.2.0/24"])], "192.0.2.1", "eu"),
        ([], "192.0.2.1", "default"),
        ([], "2001:db8::1", "default"),
        (MARKED, "10.1.2.3", "narrow"),
        (MARKED, "10.1.3.3", "wide"),
        (MARKED, "172.16.9.9", "other"),
    ],
    ids=[
        "most-specific-24",
        "most-specific-16",
        "most-specific-8",
        "host-route-32",
        "host-route-neighbour",
        "no-match-default",
        "v6-most-specific-48",
        "v6-host-route-128",
        "v6-exploded-text",
        "v6-most-specific-32",
        "v6-no-match-default",
        "v6-unspecified-default",
        "v4-mapped",
        "v4-mapped-hex-text",
        "v4-mapped-host-route",
        "v4-mapped-no-match-default",
        "v4-compatible-is-plain-v6",
        "v4-catch-all",
        "catch-all-loses-to-specific",
        "v4-catch-all-lowest",
        "v4-catch-all-highest",
        "v4-catch-all-not-v6",
        "v6-catch-all",
        "v6-catch-all-not-v4",
        "v4-mapped-is-v4-not-v6-catch-all",
        "mapped-cidr-matches-v4",
        "mapped-cidr-matches-mapped",
        "mapped-96-is-v4-catch-all",
        "duplicate-cidr-first-wins",
        "duplicate-cidr-first-wins-reversed",
        "duplicate-v6-cidr-first-wins",
        "duplicate-across-spellings-first-wins",
        "longer-later-group-wins",
        "group-without-cidrs",
        "no-groups-v4",
        "no-groups-v6",
        "search-follows-a-marker",
        "marker-carries-the-best-match",
        "marker-level-real-prefix",
    ],
)
def test_lookup(groups, address, expected):
    index = index_of(groups)
    assert index.lookup(address) == expected
    assert index.lookup(ipaddress.ip_address(address)) == expected
    parsed = ipaddress.ip_address(address)
    assert index.lookup_int(parsed.version, int(parsed)) == expected


def test_default_is_the_name_given():
    assert index_of(NESTED, default="rest").lookup("11.0.0.1") == "rest"


@pytest.mark.parametrize(
    "address",
    [
        "",
        "1.2.3",
        "256.1.1.1",
        "01.2.3.4",
        "1.2.3.4/32",
        " 1.2.3.4",
        "1.2.3.4\n",
        "1.2.3.4\x00",
        "example.com",
        "2001:db8::g",
        ":::",
        "1:2:3:4:5:6:7:8:9",
        "::ffff:1.2.3",
        "fe80::1%eth0",
        "１.2.3.4",
    ],
    ids=[
        "empty",
        "three-octets",
        "octet-too-big",
        "leading-zero",
        "prefix-length",
        "leading-space",
        "trailing-newline",
        "embedded-nul",
        "host-name",
        "bad-hex",
        "triple-colon",
        "nine-groups",
        "bad-mapped",
        "zone-id",
        "fullwidth-digit",
    ],
)
def test_a_bad_address_is_a_value_error_naming_it(address):
    with pytest.raises(ValueError) as info:
        index_of(NESTED).lookup(address)
    assert repr(address) in str(info.value)


def test_a_zone_id_is_named_as_the_reason():
    with pytest.raises(ValueError, match=r"invalid IP address 'fe80::1%eth0': zone ids"):
        index_of(NESTED).lookup("fe80::1%eth0")
    with pytest.raises(ValueError, match=r"'fe80::1%eth0': zone ids"):
        index_of(NESTED).lookup(IPv6Address("fe80::1%eth0"))


def test_a_long_bad_address_is_clipped_in_the_message():
    with pytest.raises(ValueError) as info:
        index_of(NESTED).lookup("x" * 10_000)
    assert "'" + "x" * 100 + "'..." in str(info.value) and len(str(info.value)) < 200


@pytest.mark.parametrize("address", [None, 167838211, b"10.1.2.3", 10.5], ids=["none", "int", "bytes", "float"])
def test_a_non_address_type_is_a_type_error(address):
    with pytest.raises(TypeError, match="expected an IP address"):
        index_of(NESTED).lookup(address)


@pytest.mark.parametrize(
    "version, number, message",
    [(5, 1, "IP version must be 4 or 6"), (4, 1 << 32, "is no IPv4 address"), (4, -1, "is no IPv4 address"), (6, 1 << 128, "is no IPv6 address")],
    ids=["version-5", "v4-too-big", "negative", "v6-too-big"],
)
def test_lookup_int_refuses_what_is_no_address(version, number, message):
    with pytest.raises(ValueError, match=message):
        index_of(NESTED).lookup_int(version, number)


def test_a_non_network_is_a_type_error_naming_the_group():
    with pytest.raises(TypeError, match="group 'eu': expected an IPv4Network or IPv6Network, got '192.0.2.0/24'"):
        GroupIndex([("eu", ["192.0.2.0/24"])], "default")  # type: ignore[list-item]


def test_a_str_subclass_is_looked_up_as_its_text():
    class Text(str):
        pass

    assert index_of(NESTED).lookup(Text("10.1.2.3")) == "narrow"


@pytest.mark.parametrize("bits", [32, 128], ids=["v4", "v6"])
@pytest.mark.parametrize("every", [1, 3, 7], ids=["every-length", "every-3rd-length", "every-7th-length"])
def test_every_prefix_length_on_one_address_gives_the_longest_present(bits, every):
    base = (0xC0000201 << (bits - 32)) | 0x5A5A if bits == 128 else 0xC0000201
    network = IPv4Network if bits == 32 else IPv6Network
    address = IPv4Address if bits == 32 else IPv6Address
    present = list(range(0, bits + 1, every))
    index = GroupIndex([(f"len{p}", [network((base >> (bits - p) << (bits - p), p))]) for p in present], "default")
    assert index.lookup(str(address(base))) == f"len{present[-1]}"
    for position in range(bits):  # flipping bit `position` (0 = most significant) leaves prefixes up to that length
        flipped = str(address(base ^ (1 << (bits - 1 - position))))
        assert index.lookup(flipped) == f"len{max(p for p in present if p <= position)}", flipped


# --- property: lookup agrees with a brute-force scan ------------------------------------------------------------


def canonical(network: IPv4Network | IPv6Network) -> IPv4Network | IPv6Network:
    """An IPv6 network written inside ::ffff:0:0/96 as the IPv4 network it spells."""
    mapped = network.network_address.ipv4_mapped if network.version == 6 else None
    if mapped is not None and network.prefixlen >= 96:
        return IPv4Network((int(mapped), network.prefixlen - 96))
    return network


def brute_force(groups: list[tuple[str, list[IPv4Network | IPv6Network]]], default: str, text: str) -> str:
    """Scan every network; the longest prefix holding the address wins, ties go to the first group."""
    address = ipaddress.ip_address(text)
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    best: tuple[int, str] | None = None
    for name, networks in groups:
        for network in map(canonical, networks):
            if network.version == address.version and address in network:
                if best is None or network.prefixlen > best[0]:
                    best = (network.prefixlen, name)
    return default if best is None else best[1]


@st.composite
def scenarios(draw):
    """Groups with networks nested around a few base addresses, and addresses near and far from those bases."""
    bases = {
        4: draw(st.lists(st.integers(0, (1 << 32) - 1), min_size=1, max_size=3)),
        6: draw(st.lists(st.integers(0, (1 << 128) - 1), min_size=1, max_size=3)),
    }
    bases[6].append((0xFFFF << 32) | bases[4][0])  # the first IPv4 base, mapped into IPv6

    def near(version: int) -> st.SearchStrategy[int]:
        bits = 32 if version == 4 else 128
        return st.builds(
            lambda base, keep, noise: base ^ (noise >> keep),
            st.sampled_from(bases[version]),
            st.integers(0, bits),
            st.integers(0, (1 << bits) - 1),
        )

    def network(version: int) -> st.SearchStrategy[IPv4Network | IPv6Network]:
        bits = 32 if version == 4 else 128
        cls = IPv4Network if version == 4 else IPv6Network
        return st.builds(lambda n, p: cls((n >> (bits - p) << (bits - p), p)), near(version), st.integers(0, bits))

    networks = st.lists(st.one_of(network(4), network(6)), max_size=4)
    names = st.sampled_from(["a", "b", "c", "d", "e", "f"])  # repeats allowed: the index must not care
    groups = draw(st.lists(st.tuples(names, networks), max_size=8))
    text = st.one_of(
        near(4).map(lambda n: str(IPv4Address(n))),
        near(6).map(lambda n: str(IPv6Address(n))),
        near(6).map(lambda n: IPv6Address(n).exploded),
        near(4).map(lambda n: f"::ffff:{IPv4Address(n)}"),
        st.ip_addresses().map(str),
    )
    return groups, draw(st.lists(text, min_size=1, max_size=10))


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_lookup_agrees_with_a_brute_force_scan(scenario):
    groups, addresses = scenario
    index = GroupIndex(groups, "default")
    for text in addresses:
        expected = brute_force(groups, "default", text)
        parsed = ipaddress.ip_address(text)
        assert index.lookup(text) == expected, text
        assert index.lookup(parsed) == expected, text
        assert index.lookup_int(parsed.version, int(parsed)) == expected, text


# --- from_config -----------------------------------------------------------------------------------------------


def test_from_config_keeps_config_order_and_the_default_group():
    config = parse_config(
        'default_group = "rest"\n'
        + MINIMAL
        + '\n[[groups]]\nname = "eu"\ncidrs = ["192.0.2.0/24", "2001:db8::/32"]\n'
        + '\n[[groups]]\nname = "eu-shadow"\ncidrs = ["192.0.2.0/24"]\n'
        + '\n[[groups]]\nname = "fra"\ncidrs = ["192.0.2.128/25", "2001:db8:f::/48"]\n'
    )
    index = GroupIndex.from_config(config)
    assert index.default == "rest"
    assert [index.lookup(a) for a in ("192.0.2.1", "192.0.2.200", "2001:db8::1", "2001:db8:f::1", "198.51.100.1")] == [
        "eu",
        "fra",
        "eu",
        "fra",
        "rest",
    ]
