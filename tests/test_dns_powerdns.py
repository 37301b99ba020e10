"""The PowerDNS provider against a real pdns_server (gsqlite3, LUA records, ECS) that the tests start on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from itertools import count
from pathlib import Path
from typing import TypeVar

import dns.asyncquery
import dns.edns
import dns.exception
import dns.message
import dns.rcode
import dns.rrset
import pytest

from latency_router.exporters.dns.errors import ProviderError
from latency_router.exporters.dns import powerdns
from latency_router.exporters.dns.model import Answer, Change, RecordSet
from latency_router.exporters.dns.plan import PlanSettings, key_label, make_plan
from latency_router.exporters.dns.powerdns import FOREIGN_SET_ID, VERIFY_CONCURRENCY, PowerDNSProvider, lua_program
from latency_router.secrets import Secret
from pdns_support import PowerDNS, free_ports

API_KEY = "pdns-test-key-7f3a9c1e5b"
WRONG_KEY = "wrong-key-d41d8cd98f00b204"
_zones = count(1)
T = TypeVar("T")


@pytest.fixture(scope="module")
def pdns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PowerDNS]:
    server = PowerDNS(Path(tmp_path_factory.mktemp("pdns")), API_KEY)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def zone(pdns: PowerDNS) -> str:
    name = f"z{next(_zones)}.lr.test."
    pdns.create_zone(name)
    return name


@pytest.fixture
async def provider(pdns: PowerDNS, zone: str) -> AsyncIterator[PowerDNSProvider]:
    p = PowerDNSProvider(pdns.api_url, Secret(API_KEY, "env:PDNS_API_KEY"), zone, dns_server=pdns.dns_server)
    try:
        yield p
    finally:
        await p.aclose()


def weighted(name: str, *answers: tuple[str, int], rtype: str = "A", ttl: int = 30) -> RecordSet:
    return RecordSet(name, rtype, ttl, tuple(Answer(v, w, f"id-{v}") for v, w in answers))  # type: ignore[arg-type]


def scoped(name: str, group: str, networks: tuple[str, ...], *answers: tuple[str, int], rtype: str = "A") -> RecordSet:
    answer_tuple = tuple(Answer(v, w, f"{group}/{v}") for v, w in answers)
    return RecordSet(name, rtype, 30, answer_tuple, group, networks)  # type: ignore[arg-type]


async def create(provider: PowerDNSProvider, *sets: RecordSet) -> None:
    await provider.apply([Change(None, rs) for rs in sets])


async def ask_many(
    server: tuple[str, int], name: str, rtype: str, total: int, limit_s: float, client: str | None = None,
    concurrency: int = 32,
) -> tuple[Counter[str], int, float]:
    """Ask `total` queries (fewer if limit_s passes), `concurrency` at once: (answers seen, queries answered, seconds).

    Each answer is counted as its addresses joined by ',' (or the rcode's name when it is not NOERROR)."""
    counts: Counter[str] = Counter()
    issued = answered = 0
    start = time.perf_counter()
    deadline = start + limit_s
    options = [] if client is None else [dns.edns.ECSOption(client, ipaddress.ip_address(client).max_prefixlen)]

    async def worker() -> None:
        nonlocal issued, answered
        while issued < total and time.perf_counter() < deadline:
            issued += 1
            query = dns.message.make_query(name, rtype, use_edns=0, options=options)
            try:
                response = await dns.asyncquery.udp(query, server[0], port=server[1], timeout=2.0)
            except dns.exception.Timeout:
                counts["timeout"] += 1
                continue
            answered += 1
            if response.rcode() != dns.rcode.NOERROR:
                counts[dns.rcode.to_text(response.rcode())] += 1
            else:
                counts[",".join(sorted(str(rd) for rrset in response.answer for rd in rrset))] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts, answered, time.perf_counter() - start


# --- translation (no server) ---


@pytest.mark.parametrize(
    ("sets", "program"),
    [
        pytest.param(
            [weighted("w.t.", ("192.0.2.1", 10), ("192.0.2.2", 30), ("192.0.2.3", 0))],
            "pickwrandom({{10,'192.0.2.1'},{30,'192.0.2.2'}})",
            id="weighted-drops-zero",
        ),
        pytest.param(
            [weighted("w.t.", ("192.0.2.1", 0), ("192.0.2.2", 0))],
            "pickwrandom({{1,'192.0.2.1'},{1,'192.0.2.2'}})",
            id="all-zero-served-alike",
        ),
        pytest.param(
            [
                weighted("w.t.", ("192.0.2.1", 5)),
                scoped("w.t.", "wide", ("10.0.0.0/8",), ("198.51.100.2", 1)),
                scoped("w.t.", "narrow", ("10.1.0.0/16", "10.2.0.0/16"), ("198.51.100.1", 1)),
            ],
            ";if netmask({'10.1.0.0/16','10.2.0.0/16'}) then return pickwrandom({{1,'198.51.100.1'}}) end "
            "if netmask({'10.0.0.0/8'}) then return pickwrandom({{1,'198.51.100.2'}}) end "
            "return pickwrandom({{5,'192.0.2.1'}})",
            id="longest-prefix-first",
        ),
        pytest.param(
            [scoped("w.t.", "eu", ("10.1.2.3/16",), ("198.51.100.1", 1))],
            ";if netmask({'10.1.0.0/16'}) then return pickwrandom({{1,'198.51.100.1'}}) end return {}",
            id="no-default-nodata",
        ),
    ],
)
def test_lua_program(sets: list[RecordSet], program: str) -> None:
    assert lua_program(sets) == program


# --- against the server ---


async def test_weighted_answers_follow_their_weights(pdns: PowerDNS, zone: str, provider: PowerDNSProvider) -> None:
    name = f"w.{zone}"
    rs = weighted(name, ("192.0.2.1", 25), ("192.0.2.2", 75), ("192.0.2.3", 155), ("192.0.2.4", 0))
    start = time.perf_counter()
    await create(provider, rs)
    applied = time.perf_counter()
    assert await provider.verify([rs]) == []
    verified = time.perf_counter()
    [lua] = [r for r in pdns.rrsets(zone) if r["name"] == name]
    assert lua["type"] == "LUA" and "pickwrandom(" in lua["records"][0]["content"]

    counts, answered, elapsed = await ask_many(pdns.dns_server, name, "A", 10_000, limit_s=90.0)
    print(f"\npowerdns: apply {1000 * (applied - start):.1f} ms, verify {1000 * (verified - applied):.1f} ms; "
          f"{answered} queries in {elapsed:.2f} s = {answered / elapsed:.0f} queries/s (32 in flight)")
    assert answered >= 10_000, f"only {answered} queries answered in the time limit: {counts}"
    assert set(counts) <= {"192.0.2.1", "192.0.2.2", "192.0.2.3"}, counts  # weight 0 is never served
    total_weight = 25 + 75 + 155
    for value, weight in (("192.0.2.1", 25), ("192.0.2.2", 75), ("192.0.2.3", 155)):
        share = counts[value] / answered
        assert abs(share - weight / total_weight) < 0.03, (value, share, weight / total_weight, counts)


async def test_per_group_answers_by_client_subnet(pdns: PowerDNS, zone: str, provider: PowerDNSProvider) -> None:
    name = f"g.{zone}"
    sets = [
        weighted(name, ("192.0.2.1", 1), ("192.0.2.2", 1)),
        scoped(name, "eu", ("10.1.0.0/16",), ("198.51.100.1", 1)),
        scoped(name, "us", ("10.0.0.0/8", "2001:db8:1::/48"), ("198.51.100.2", 200), ("198.51.100.3", 0)),
        weighted(name, ("2001:db8::a", 1), rtype="AAAA"),
        scoped(name, "eu", ("10.1.0.0/16",), ("2001:db8::e", 1), rtype="AAAA"),
    ]
    start = time.perf_counter()
    await create(provider, *sets)
    applied = time.perf_counter()
    assert await provider.verify(sets) == []
    print(f"\npowerdns per-group (5 sets, 2 groups): apply {1000 * (applied - start):.1f} ms, "
          f"verify {1000 * (time.perf_counter() - applied):.1f} ms")

    cases = [
        ("A", "10.1.2.3", {"198.51.100.1"}),  # inside eu's /16, which is more specific than us's /8
        ("A", "10.200.0.1", {"198.51.100.2"}),
        ("A", "2001:db8:1:2::1", {"198.51.100.2"}),  # an IPv6 client of us asking for A
        ("A", "203.0.113.9", {"192.0.2.1", "192.0.2.2"}),  # no group: the weighted set
        ("A", None, {"192.0.2.1", "192.0.2.2"}),  # no ECS: the resolver (127.0.0.1) is in no group
        ("AAAA", "10.1.0.1", {"2001:db8::e"}),
        ("AAAA", "10.200.0.1", {"2001:db8::a"}),  # us has no AAAA set: the scope-None one
    ]
    for rtype, client, want in cases:
        counts, answered, _ = await ask_many(pdns.dns_server, name, rtype, 200, limit_s=20.0, client=client)
        assert answered == 200, (rtype, client, counts)
        assert set(counts) == want, (rtype, client, counts)


async def test_current_reads_back_what_was_applied(pdns: PowerDNS, zone: str, provider: PowerDNSProvider) -> None:
    name, single, other = f"c.{zone}", f"one.{zone}", f"other.{zone}"
    pdns.patch(zone, [{"name": name, "type": "LUA", "ttl": 60, "changetype": "REPLACE",
                       "records": [{"content": "TXT \"'someone else'\"", "disabled": False}]}])
    first = [
        weighted(name, ("192.0.2.1", 0), ("192.0.2.2", 255), ("192.0.2.3", 7)),
        scoped(name, "eu", ("10.1.0.0/16", "2001:db8:e::/48"), ("198.51.100.1", 3), ("198.51.100.9", 0)),
        weighted(name, ("2001:db8::1", 4), ("2001:db8::2", 0), rtype="AAAA"),
        weighted(single, ("192.0.2.77", 0)),  # one answer: a plain RRset, its weight and set id kept in the comment
        weighted(other, ("192.0.2.5", 1), ("192.0.2.6", 2)),
    ]
    keys = [rs.key for rs in first] + [(name, "A", "us")]
    await create(provider, *first)
    assert await provider.current(keys) == {rs.key: rs for rs in first}
    held = {(r["name"], r["type"]) for r in pdns.rrsets(zone)}
    assert (single, "A") in held and (name, "A") not in held and (name, "LUA") in held

    second = [
        weighted(name, ("192.0.2.2", 100), ("192.0.2.4", 50), ttl=20),
        scoped(name, "eu", ("10.1.0.0/17",), ("198.51.100.1", 3)),
        scoped(name, "us", ("10.0.0.0/8",), ("198.51.100.2", 1)),
        weighted(single, ("192.0.2.77", 9), ("192.0.2.78", 9)),  # grows: plain RRset -> LUA record
    ]
    old = {rs.key: rs for rs in first}
    await provider.apply([Change(old.get(rs.key), rs) for rs in second])
    now = {**old, **{rs.key: rs for rs in second}}
    assert await provider.current(keys) == now
    assert await provider.verify(list(now.values())) == []

    gone = [now[(name, "A", "eu")], now[(name, "AAAA", None)], now[(single, "A", None)]]
    await provider.apply([Change(rs, None) for rs in gone])
    left = {k: rs for k, rs in now.items() if rs not in gone}
    assert await provider.current(keys) == left
    lua = {r["name"]: r for r in pdns.rrsets(zone) if r["type"] == "LUA"}
    assert any(r["content"].startswith("TXT ") for r in lua[name]["records"])  # another's LUA record is kept
    assert single not in lua

    await provider.apply([Change(rs, None) for rs in left.values()])
    assert await provider.current(keys) == {}
    assert {r["name"] for r in pdns.rrsets(zone)} == {zone, name}  # only the zone apex and the other LUA TXT
    assert await provider.current([]) == {}


async def test_list_keys_gives_the_address_sets_at_the_names(pdns: PowerDNS, zone: str,
                                                             provider: PowerDNSProvider) -> None:
    name, single, hand, empty = f"lk.{zone}", f"one.{zone}", f"hand.{zone}", f"empty.{zone}"
    sets = [
        weighted(name, ("192.0.2.1", 1), ("192.0.2.2", 3)),  # a LUA A record ...
        scoped(name, "eu", ("10.1.0.0/16",), ("198.51.100.1", 1)),  # ... holding this group's set too
        weighted(name, ("2001:db8::1", 1), ("2001:db8::2", 1), rtype="AAAA"),
        weighted(single, ("192.0.2.9", 5)),  # a plain A RRset
    ]
    await create(provider, *sets)
    pdns.patch(zone, [
        {"name": name, "type": "TXT", "ttl": 60, "changetype": "REPLACE",
         "records": [{"content": '"not an address"', "disabled": False}]},
        {"name": name, "type": "MX", "ttl": 60, "changetype": "REPLACE",
         "records": [{"content": f"10 mail.{zone}", "disabled": False}]},
        {"name": hand, "type": "AAAA", "ttl": 60, "changetype": "REPLACE",  # written by hand: still an address set
         "records": [{"content": "2001:db8::99", "disabled": False}]},
        {"name": empty, "type": "TXT", "ttl": 60, "changetype": "REPLACE",
         "records": [{"content": '"only text here"', "disabled": False}]},
    ])
    # another's LUA TXT record beside the LUA A and AAAA ones
    [lua] = [r for r in pdns.rrsets(zone) if r["name"] == name and r["type"] == "LUA"]
    pdns.patch(zone, [{"name": name, "type": "LUA", "ttl": lua["ttl"], "changetype": "REPLACE",
                       "records": lua["records"] + [{"content": "TXT \"'someone else'\"", "disabled": False}],
                       "comments": lua["comments"]}])

    want = [(name, "A", None), (name, "A", "eu"), (name, "AAAA", None), (single, "A", None), (hand, "AAAA", None)]
    got = await provider.list_keys([single, name, empty, hand, f"nothing.{zone}", "x.elsewhere.test.", name])
    assert got == sorted(want, key=lambda k: (k[0], k[1], k[2] or ""))
    assert set(await provider.current(got)) == set(got)  # the keys current() reads, no more
    assert await provider.list_keys([name]) == [(name, "A", None), (name, "A", "eu"), (name, "AAAA", None)]
    assert await provider.list_keys([empty]) == []
    assert await provider.list_keys([]) == []

    await provider.apply([Change(sets[1], None), Change(sets[3], None)])
    assert await provider.list_keys([name, single]) == [(name, "A", None), (name, "AAAA", None)]

    for names, field in (([name, "Upper.lr.test."], "names[1]"), ([f"lk.{zone}".rstrip(".")], "names[0]"),
                         (name, "names")):
        with pytest.raises(ProviderError, match=rf"^powerdns: {re.escape(field)}: ") as caught:
            await provider.list_keys(names)  # type: ignore[arg-type]
        assert caught.value.retryable is False


async def test_a_broken_lua_record_reads_as_foreign(pdns: PowerDNS, zone: str, provider: PowerDNSProvider) -> None:
    name = f"b.{zone}"
    good = [
        weighted(name, ("192.0.2.1", 1), ("192.0.2.2", 3)),
        scoped(name, "eu", ("10.1.0.0/16",), ("198.51.100.1", 1)),
    ]
    await create(provider, *good)
    assert await provider.verify(good) == []

    # the API takes a program that cannot run; the name then fails over DNS, and verify reads the change through the API
    pdns.patch(zone, [{"name": name, "type": "LUA", "ttl": 30, "changetype": "REPLACE",
                       "records": [{"content": "A \"pickwrandom({{\"", "disabled": False}]}])
    counts, _, _ = await ask_many(pdns.dns_server, name, "A", 5, limit_s=10.0)
    assert set(counts) == {"SERVFAIL"}, counts
    lines = await provider.verify(good)
    assert lines == [f"{name} A: the zone holds a LUA A record latency-router did not write (or one changed by hand)",
                     f"{name} A [eu]: the zone holds no such set"]

    held = await provider.current([rs.key for rs in good])
    # it quotes no address: one placeholder answer, marked foreign, so that it counts as serving something
    assert held == {(name, "A", None): RecordSet(name, "A", 30, (Answer("0.0.0.0", 1, FOREIGN_SET_ID),))}
    await provider.apply([Change(held[good[0].key], good[0]), Change(None, good[1])])
    assert await provider.verify(good) == []


async def test_verify_reports_wrong_answers(pdns: PowerDNS, zone: str, provider: PowerDNSProvider) -> None:
    name = f"v.{zone}"
    rs = weighted(name, ("192.0.2.1", 1), ("192.0.2.2", 1))
    eu = scoped(name, "eu", ("10.1.0.0/16",), ("198.51.100.1", 1))
    await create(provider, rs)
    # desired has a group the server does not know, and an answer it never serves
    lines = await provider.verify([weighted(name, ("192.0.2.1", 1), ("192.0.2.9", 1)), eu])
    assert lines == [
        f"{name} A: the zone holds 192.0.2.1 (w1), 192.0.2.2 (w1); want 192.0.2.1 (w1), 192.0.2.9 (w1)",
        f"{name} A [eu]: the zone holds no such set",
    ]
    assert await provider.verify([weighted(name, ("192.0.2.1", 1), ("192.0.2.2", 1), ttl=60)]) == [
        f"{name} A: the zone holds TTL 30; want 60"]
    await create(provider, eu)
    assert await provider.verify([rs, scoped(name, "eu", ("10.2.0.0/16",), ("198.51.100.1", 1))]) == [
        f"{name} A [eu]: the zone holds networks 10.1.0.0/16; want 10.2.0.0/16"]
    pdns.patch(zone, [{"name": name, "type": "LUA", "ttl": 30, "changetype": "REPLACE",
                       "records": [{"content": "TXT \"'no address here'\"", "disabled": False}]}])
    assert await provider.verify([rs]) == [f"{name} A: the zone holds no such set"]


async def test_api_key_never_shows(pdns: PowerDNS, zone: str) -> None:
    p = PowerDNSProvider(pdns.api_url, Secret(WRONG_KEY, "env:WRONG"), zone, dns_server=pdns.dns_server)
    try:
        assert WRONG_KEY not in repr(p)
        calls = [lambda: p.current([(f"x.{zone}", "A", None)]),
                 lambda: p.apply([Change(None, weighted(f"x.{zone}", ("192.0.2.1", 1)))])]
        for call in calls:
            with pytest.raises(ProviderError) as caught:
                await call()
            err = caught.value
            assert "HTTP 401" in str(err) and err.provider == "powerdns" and err.retryable is False
            shown = [str(err), repr(err), repr(err.args), str(err.__cause__), str(err.__context__)]
            assert not any(WRONG_KEY in text or API_KEY in text for text in shown), shown
    finally:
        await p.aclose()

    api_port, _ = free_ports()  # nothing listens there: a connection failure, which may be retried
    p = PowerDNSProvider(f"http://127.0.0.1:{api_port}", Secret(WRONG_KEY, "env:WRONG"), zone, timeout_s=2.0)
    try:
        with pytest.raises(ProviderError) as caught:
            await p.current([(f"x.{zone}", "A", None)])
        err = caught.value
        assert err.retryable is True and WRONG_KEY not in str(err) and err.__context__ is None and err.__cause__ is None
    finally:
        await p.aclose()


async def test_no_secret_shows_when_calls_fail_even_at_debug(pdns: PowerDNS, zone: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    password = "hunter2-pdns-url-password"
    port = pdns.api_url.rsplit(":", 1)[1]
    closed, _ = free_ports()
    key = (f"x.{zone}", "A", None)
    shown: list[str] = []

    def show(exc: BaseException) -> None:
        shown.extend([str(exc), repr(exc), *traceback.format_exception(exc)])

    # a user and password in the URL go to the server as basic auth; they never show
    good = PowerDNSProvider(f"http://user:{password}@127.0.0.1:{port}", Secret(API_KEY, "env:K"), zone,
                            dns_server=pdns.dns_server)
    wrong = PowerDNSProvider(f"http://user:{password}@127.0.0.1:{port}/", Secret(WRONG_KEY, "env:K"), zone,
                             dns_server=pdns.dns_server)
    down = PowerDNSProvider(f"https://user:{password}@127.0.0.1:{closed}/api/v1", Secret(WRONG_KEY, "env:K"), zone,
                            dns_server=("127.0.0.1", closed), timeout_s=1.0)
    try:
        await create(good, weighted(f"x.{zone}", ("192.0.2.1", 1)))
        assert await good.list_keys([f"x.{zone}"]) == [key]
        for p, status in ((wrong, "HTTP 401"), (down, "ClientConnectorError")):
            for call in (lambda: p.current([key]), lambda: p.list_keys([key[0]]),
                         lambda: p.apply([Change(None, weighted(f"y.{zone}", ("192.0.2.1", 1)))])):
                with pytest.raises(ProviderError) as caught:
                    await call()
                assert status in str(caught.value), str(caught.value)
                show(caught.value)
        assert f"https://127.0.0.1:{closed}/api/v1/servers/localhost" in shown[0] + "".join(shown)
        for p in (wrong, down):  # verify() reads the zone through the API first
            with pytest.raises(ProviderError) as caught:
                await p.verify([weighted(f"x.{zone}", ("192.0.2.1", 1))])
            show(caught.value)
        assert f"127.0.0.1:{closed}" in str(caught.value)
        shown += [repr(p) for p in (good, wrong, down)] + [str(p) for p in (good, wrong, down)]
    finally:
        for p in (good, wrong, down):
            await p.aclose()
    for url in (f"ftp://user:{password}@127.0.0.1:{port}", f"http://127.0.0.1:{port}/?api-key={password}",
                f"http://user:{password}@127.0.0.1:port"):
        with pytest.raises(ValueError, match="^api_url: ") as refused:
            PowerDNSProvider(url, Secret(API_KEY, "env:K"), zone)
        show(refused.value)
    shown.append(caplog.text)
    shown += [str(r.__dict__) for r in caplog.records]
    text = "\n".join(shown)
    assert "HTTP 401" in text and "127.0.0.1" in text  # the messages are there to read
    for secret in (password, "user:", API_KEY, WRONG_KEY):
        assert secret not in text, secret


async def test_api_errors_carry_powerdns_text(pdns: PowerDNS, zone: str, provider: PowerDNSProvider) -> None:
    name = f"cn.{zone}"
    pdns.patch(zone, [{"name": name, "type": "CNAME", "ttl": 30, "changetype": "REPLACE",
                       "records": [{"content": f"target.{zone}", "disabled": False}]}])
    with pytest.raises(ProviderError) as caught:
        await create(provider, weighted(name, ("192.0.2.1", 1)))
    text = str(caught.value)
    assert "HTTP 422" in text and "Conflicts with pre-existing RRset" in text and caught.value.retryable is False

    missing = PowerDNSProvider(pdns.api_url, Secret(API_KEY, "env:K"), "absent.test.", dns_server=pdns.dns_server)
    try:
        with pytest.raises(ProviderError, match="HTTP 404.*no zone absent.test.") as caught:
            await missing.current([("a.absent.test.", "A", None)])
        assert API_KEY not in str(caught.value)
    finally:
        await missing.aclose()


@pytest.mark.parametrize(
    ("record_set", "message"),
    [
        pytest.param(RecordSet("x.elsewhere.test.", "A", 30, (Answer("192.0.2.1"),)), "outside the zone", id="zone"),
        pytest.param(RecordSet("{zone}", "A", 30, (Answer("2001:db8::1"),)), "not an A address", id="family"),
        pytest.param(RecordSet("{zone}", "A", 30, (Answer("192.0.2.1"),), "eu"), "networks: none", id="no-networks"),
        pytest.param(RecordSet("{zone}", "A", 30, ()), "answers: none", id="empty"),
        pytest.param(
            RecordSet("{zone}", "A", 30, (Answer("192.0.2.1"),), "eu", ("10.0.0.0/33",)), "not a network", id="cidr"
        ),
    ],
)
async def test_bad_sets_are_refused_before_any_write(
    pdns: PowerDNS, zone: str, provider: PowerDNSProvider, record_set: RecordSet, message: str
) -> None:
    rs = RecordSet(record_set.name.replace("{zone}", f"n.{zone}"), record_set.rtype, record_set.ttl, record_set.answers,
                   record_set.scope, record_set.networks)
    fine = weighted(f"fine.{zone}", ("192.0.2.1", 1))
    with pytest.raises(ProviderError, match=message) as caught:
        await provider.apply([Change(None, fine), Change(None, rs)])
    assert caught.value.retryable is False
    assert {r["name"] for r in pdns.rrsets(zone)} == {zone}  # not even the good one was written


def test_constructor_names_the_bad_parameter() -> None:
    key = Secret("k", "env:K")
    with pytest.raises(ValueError, match="^api_url:"):
        PowerDNSProvider("ftp://127.0.0.1", key, "z.test.")
    with pytest.raises(ValueError, match="^api_key:"):
        PowerDNSProvider("http://127.0.0.1:8081", "k", "z.test.")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^dns_server:"):
        PowerDNSProvider("http://127.0.0.1:8081", key, "z.test.", dns_server=("127.0.0.1", 0))
    with pytest.raises(ValueError, match="^timeout_s:"):
        PowerDNSProvider("http://127.0.0.1:8081", key, "z.test.", timeout_s=0)


# --- review 5: literals built, not pasted; unreachable sets; foreign LUA records; verify's cost ---

# the reviewer's payloads (/tmp/review5/lua_inject.py): an answer and a group network with an IPv6 zone id that closes
# the LUA string and goes on as code
V6_PAYLOAD = "2001:db8::1%z'}}) and nil or pickwrandom({{1,'2001:db8::bad"
NET6_PAYLOAD = "fe80::%a' and '0.0.0.0'..string.char(47)..'0' or '/64"


def unchecked(cls: type[T], **fields: object) -> T:
    """An Answer or RecordSet built past the model's checks: what a caller that validated nothing could hand over."""
    made = object.__new__(cls)
    for field, item in fields.items():
        object.__setattr__(made, field, item)
    return made


@pytest.mark.parametrize(
    ("answers", "networks", "rtype", "refused"),
    [
        pytest.param((V6_PAYLOAD,), (), "AAAA", "IPv6 zone id", id="zone-id-answer-plain"),
        pytest.param(("2001:db8::2", V6_PAYLOAD), (), "AAAA", "IPv6 zone id", id="zone-id-answer-weighted"),
        pytest.param(("2001:db8::2",), ("2001:db8:6::/48", NET6_PAYLOAD), "AAAA", "IPv6 zone id",
                     id="zone-id-network"),
        pytest.param(("192.0.2.1'}}) or pickwrandom({{1,'192.0.2.66",), (), "A", "is not an IP address", id="quote"),
        pytest.param(("192.0.2.1",), ("10.0.0.0/8' or '0.0.0.0/0",), "A", "is not a network", id="quote-network"),
        pytest.param(("192.0.2.1",), (("10.0.0.0/8",),), "A", "is not a network", id="network-not-text"),
        pytest.param((b"192.0.2.1",), (), "A", "is not an IP address", id="bytes"),
    ],
)
async def test_lua_literals_are_built_not_pasted(pdns: PowerDNS, zone: str, provider: PowerDNSProvider,
                                                 answers: tuple[object, ...], networks: tuple[object, ...],
                                                 rtype: str, refused: str) -> None:
    name = f"inj.{zone}"
    before = [weighted(name, ("192.0.2.1", 1), ("192.0.2.2", 1)),
              weighted(name, ("2001:db8::a", 1), ("2001:db8::b", 1), rtype="AAAA"),
              scoped(name, "g6", ("2001:db8:6::/48",), ("198.51.100.1", 1))]
    await create(provider, *before)
    held, ask = pdns.rrsets(zone), [("A", None), ("AAAA", None), ("A", "2001:db8:6::1"), ("AAAA", "2001:db8:6::1")]
    answered = [set((await ask_many(pdns.dns_server, name, t, 40, 10.0, client=c))[0]) for t, c in ask]

    scope = "g6" if networks else None
    bad = unchecked(RecordSet, name=name, rtype=rtype, ttl=30, scope=scope, networks=networks,
                    answers=tuple(unchecked(Answer, value=v, weight=1, set_id=f"id{i}") for i, v in enumerate(answers)))
    old = {rs.key: rs for rs in before}.get(bad.key)
    with pytest.raises(ProviderError, match=re.escape(refused)) as caught:
        await provider.apply([Change(None, weighted(f"fine.{zone}", ("192.0.2.9", 1))), Change(old, bad)])
    assert caught.value.retryable is False
    text = str(caught.value)
    assert any(repr(v)[:40] in text for v in (*answers, *networks)), text  # it names the value
    with pytest.raises(ValueError, match=re.escape(refused)):  # the program is never built around such a value
        lua_program([bad])
    assert pdns.rrsets(zone) == held  # no write at all
    assert [set((await ask_many(pdns.dns_server, name, t, 40, 10.0, client=c))[0]) for t, c in ask] == answered
    assert await provider.verify(before) == []


async def test_sets_out_of_every_test_clients_reach_are_logged_not_reported(
    pdns: PowerDNS, zone: str, provider: PowerDNSProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="latency_router.exporters.dns.powerdns")
    catch_all, shared = f"all.{zone}", f"shared.{zone}"
    cases = {
        catch_all: [weighted(catch_all, ("192.0.2.1", 1)),  # every client is in some group: nobody gets this one
                    scoped(catch_all, "eu", ("10.0.0.0/8",), ("192.0.2.2", 1)),
                    scoped(catch_all, "world", ("0.0.0.0/0", "::/0"), ("192.0.2.3", 1))],
        shared: [weighted(shared, ("192.0.2.1", 1)),
                 scoped(shared, "a", ("10.0.0.0/8",), ("192.0.2.2", 1)),
                 scoped(shared, "b", ("10.0.0.0/8",), ("192.0.2.3", 1))],  # a takes 10.0.0.0/8 first (by name)
    }
    unreachable = {catch_all: 0, shared: 2}  # which set no test client reaches
    for name, sets in cases.items():
        await create(provider, *sets)
        for _ in range(2):
            assert await provider.verify(sets) == []
        label = key_label(sets[unreachable[name]].key)
        said = [r for r in caplog.records if r.getMessage().startswith(f"dns exporter powerdns: {label}: ")]
        assert [r.levelno for r in said] == [logging.INFO, logging.DEBUG], [r.getMessage() for r in said]
        assert "not checked over DNS" in said[0].getMessage()
        # the reachable sets are still checked over DNS and every set through the API: a wrong one is a difference
        for i in (1, unreachable[name]):
            wrong = list(sets)
            wrong[i] = RecordSet(name, "A", 30, (Answer("192.0.2.9", 1, "w"),), sets[i].scope, sets[i].networks)
            served = sets[i].answers[0].value
            assert await provider.verify(wrong) == [
                f"{key_label(sets[i].key)}: the zone holds {served} (w1); want 192.0.2.9 (w1)"]
    counts, _, _ = await ask_many(pdns.dns_server, catch_all, "A", 20, 10.0, client="10.1.2.3")
    assert set(counts) == {"192.0.2.2"}  # what verify asked: eu's client gets eu's set


async def test_verify_over_dns_finds_a_server_that_ignores_client_subnets(tmp_path: Path) -> None:
    (tmp_path / "pdns-no-ecs").mkdir()
    server = PowerDNS(tmp_path / "pdns-no-ecs", API_KEY, {"edns-subnet-processing": "no"})
    server.start()
    zone = "noecs.lr.test."
    p = PowerDNSProvider(server.api_url, Secret(API_KEY, "env:K"), zone, dns_server=server.dns_server)
    try:
        server.create_zone(zone)
        name = f"g.{zone}"
        sets = [weighted(name, ("192.0.2.1", 1)),  # out of reach: the catch-all group takes every client
                scoped(name, "eu", ("10.1.0.0/16",), ("198.51.100.1", 1)),
                scoped(name, "world", ("0.0.0.0/0", "::/0"), ("198.51.100.3", 1))]
        await create(p, *sets)
        # the API holds what was written; over DNS every query is the resolver's own (127.0.0.1, so world)
        lines = await p.verify(sets)
    finally:
        await p.aclose()
        server.stop()
    assert lines == [f"{name} A [eu] (client 10.1.0.0): got 198.51.100.3; want one of 198.51.100.1 (w1) "
                     f"(is edns-subnet-processing=yes set on the server?)"]


class FakeDNS(asyncio.DatagramProtocol):
    """A DNS server on 127.0.0.1 answering every query as `mode` says (servfail, nodata, two, silent), counting them."""

    def __init__(self, mode: str) -> None:
        self.mode, self.queries = mode, 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queries += 1
        if self.mode == "silent" or self.transport is None:
            return
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        if self.mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif self.mode == "two":
            response.answer.append(dns.rrset.from_text(query.question[0].name, 30, "IN", "A", "192.0.2.1", "192.0.2.2"))
        self.transport.sendto(response.to_wire(), addr)


@contextlib.asynccontextmanager
async def fake_dns(mode: str) -> AsyncIterator[tuple[FakeDNS, tuple[str, int]]]:
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: FakeDNS(mode), local_addr=("127.0.0.1", 0))
    try:
        yield protocol, transport.get_extra_info("sockname")[:2]
    finally:
        transport.close()


@pytest.mark.parametrize(
    ("mode", "want"),
    [
        pytest.param("servfail", "SERVFAIL (a LUA record that fails? enable-lua-records set?)", id="servfail"),
        pytest.param("nodata", "got no address (NODATA); want one of", id="nodata"),
        pytest.param("two", " per query", id="two-addresses")  # an answer of two addresses, in any order,
    ],
)
async def test_verify_reports_what_the_dns_server_answers(pdns: PowerDNS, zone: str, mode: str, want: str) -> None:
    name = f"d.{zone}"
    sets = [weighted(name, ("192.0.2.1", 1), ("192.0.2.2", 3)),
            scoped(name, "eu", ("10.1.0.0/16",), ("198.51.100.1", 1))]
    async with fake_dns(mode) as (server, address):
        p = PowerDNSProvider(pdns.api_url, Secret(API_KEY, "env:K"), zone, dns_server=address)
        try:
            await create(p, *sets)  # the API is the real one, the DNS answers are the fake's
            lines = await p.verify(sets)
        finally:
            await p.aclose()
    assert len(lines) == 2 and all(want in line for line in lines), lines
    assert lines[0].startswith(f"{name} A (client 240.0.0.1): ")
    assert lines[1].startswith(f"{name} A [eu] (client 10.1.0.0): ")
    assert server.queries <= 2 + 1, server.queries  # two for the weighted set's client, one for eu's (one answer)


async def test_verify_stops_asking_a_dns_server_that_does_not_answer(pdns: PowerDNS, zone: str) -> None:
    sets = [weighted(f"s{i}.{zone}", ("192.0.2.1", 1), ("192.0.2.2", 1)) for i in range(2 * VERIFY_CONCURRENCY)]
    async with fake_dns("silent") as (server, address):
        p = PowerDNSProvider(pdns.api_url, Secret(API_KEY, "env:K"), zone, dns_server=address, timeout_s=0.5)
        try:
            await create(p, *sets)
            lines = await p.verify(sets)
        finally:
            await p.aclose()
    assert len(lines) == len(sets) and all(f"no answer from the DNS server {address[0]}:{address[1]}" in line
                                           for line in lines), lines[:3]
    assert 1 <= server.queries <= VERIFY_CONCURRENCY, server.queries  # after the first timeout nothing more is sent


def dns_queries(pdns: PowerDNS) -> int:
    """The queries the server has answered so far (UDP and TCP), from its statistics."""
    stats = pdns.api("GET", "/api/v1/servers/localhost/statistics")
    return sum(int(s["value"]) for s in stats if s["name"] in ("udp-queries", "tcp-queries"))


async def test_verify_asks_a_few_queries_per_set(pdns: PowerDNS, zone: str, provider: PowerDNSProvider,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"cost.{zone}"
    rare = (("192.0.2.1", 254), ("192.0.2.2", 1))  # one answer in 255: sampling its share takes thousands of queries
    sets = [weighted(name, *rare)] + [scoped(name, f"g{i}", (f"10.{i}.0.0/16",), *rare) for i in range(50)]
    await create(provider, *sets)
    asked = dns_queries(pdns)
    start = time.perf_counter()
    assert await provider.verify(sets) == []
    elapsed = time.perf_counter() - start
    asked = dns_queries(pdns) - asked
    print(f"\npowerdns verify of {len(sets)} sets (rarest weight 1/255): {asked} DNS queries, {1000 * elapsed:.0f} ms")
    assert len(sets) <= asked <= 2 * len(sets), asked  # every set asked; two queries from each set's test client

    # the weights are checked through the API
    wrong = sets[:8] + [scoped(name, "g7", ("10.7.0.0/16",), ("192.0.2.1", 1), ("192.0.2.2", 1))] + sets[9:]
    assert await provider.verify(wrong) == [
        f"{name} A [g7]: the zone holds 192.0.2.1 (w254), 192.0.2.2 (w1); want 192.0.2.1 (w1), 192.0.2.2 (w1)"]

    monkeypatch.setattr(powerdns, "VERIFY_MAX_QUERIES", 10)
    asked = dns_queries(pdns)
    assert await provider.verify(sets) == []
    assert dns_queries(pdns) - asked == 10


async def test_a_foreign_lua_record_counts_as_answers(pdns: PowerDNS, zone: str, provider: PowerDNSProvider) -> None:
    program = "AAAA \"pickrandom({'2001:db8::1','2001:db8::2'})\""
    theirs = (Answer("2001:db8::1", 1, FOREIGN_SET_ID), Answer("2001:db8::2", 1, FOREIGN_SET_ID))
    want_a = weighted(f"x.{zone}", ("192.0.2.1", 255), ("192.0.2.9", 255))
    for manage_deletes in (True, False):
        name = f"foreign-{manage_deletes}.{zone}".lower()
        pdns.patch(zone, [{"name": name, "type": "LUA", "ttl": 30, "changetype": "REPLACE",
                           "records": [{"content": program, "disabled": False},
                                       {"content": "TXT \"'theirs too'\"", "disabled": False}]}])
        key = (name, "AAAA", None)
        assert await provider.list_keys([name]) == [key]
        current = dict(await provider.current([key, (name, "A", None)]))
        assert current == {key: RecordSet(name, "AAAA", 30, theirs)}
        a = RecordSet(name, "A", 30, want_a.answers)
        plan = make_plan(provider.name, current, [a], PlanSettings(manage_deletes=manage_deletes))
        assert [c.key for c in plan.changes] == [a.key]
        if manage_deletes:  # it serves AAAA answers: deleting it is refused like any other set's
            assert plan.refused == (f"{name} AAAA: refused: deleting it would leave {name} with no AAAA answer",)
        await provider.apply(plan.changes)
        # the write did what the plan said: A created, their AAAA record (and TXT) kept as they were
        assert await provider.current([key, a.key]) == {key: RecordSet(name, "AAAA", 30, theirs), a.key: a}
        counts, answered, _ = await ask_many(pdns.dns_server, name, "AAAA", 40, 10.0)
        assert answered == 40 and set(counts) <= {"2001:db8::1", "2001:db8::2"}, counts
        lua = [r for r in pdns.rrsets(zone) if r["name"] == name and r["type"] == "LUA"][0]
        assert program in [r["content"] for r in lua["records"]] and len(lua["records"]) == 3
        assert await provider.verify([a, RecordSet(name, "AAAA", 30, theirs)]) == []  # theirs is not ours to check

    # a group's set of that type cannot be written beside their record: refused, nothing written
    held = pdns.rrsets(zone)
    eu = scoped(name, "eu", ("10.1.0.0/16",), ("2001:db8::e", 1), rtype="AAAA")
    with pytest.raises(ProviderError, match=rf"{re.escape(name)} AAAA: holds a LUA AAAA record latency-router did not "
                                            rf"write") as caught:
        await provider.apply([Change(None, eu)])
    assert caught.value.retryable is False and pdns.rrsets(zone) == held
    # the plan may replace it: a change of its key (moving at most half of the share here: within the default limit)
    mine = weighted(name, ("2001:db8::1", 1), rtype="AAAA")
    plan = make_plan(provider.name, {key: RecordSet(name, "AAAA", 30, theirs)}, [mine, eu])
    assert [c.key for c in plan.changes] == [eu.key, key] and not plan.refused
    await provider.apply(plan.changes)
    assert await provider.current([key, eu.key]) == {key: mine, eu.key: eu}
    assert await provider.verify([mine, eu]) == []
    lua = [r for r in pdns.rrsets(zone) if r["name"] == name and r["type"] == "LUA"][0]
    assert program not in [r["content"] for r in lua["records"]]
    assert "TXT \"'theirs too'\"" in [r["content"] for r in lua["records"]]
