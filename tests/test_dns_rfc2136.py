"""The RFC 2136 provider against a real BIND 9 started by the test: signed updates change the answers, unsigned and
badly signed ones are refused, per-group answers differ by view key, and no TSIG secret ever shows."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.tsig
import dns.update
import pytest

from bind_support import ALGORITHM, BindServer, free_port, keyring, make_secret, running_bind
from latency_router.exporters.dns.errors import ProviderError
from latency_router.exporters.dns.model import Answer, Change, RecordSet
from latency_router.exporters.dns.plan import PlanSettings, make_plan
from latency_router.exporters.dns.runner import ExporterRunner, RunnerSettings
from latency_router.exporters.dns.rfc2136 import Rfc2136Provider
from latency_router.secrets import Secret

GROUPS = ("eu", "us")


@pytest.fixture
def bind(tmp_path: Path) -> Iterator[BindServer]:
    with running_bind(tmp_path, GROUPS) as server:
        yield server


def provider(bind: BindServer, **kwargs) -> Rfc2136Provider:
    """A provider writing to the test server with its main key and one view key per group."""
    kwargs.setdefault("views", bind.view_keys())
    kwargs.setdefault("timeout_s", 3.0)
    return Rfc2136Provider(bind.address, bind.zone, "main", bind.keys["main"], **kwargs)


def rset(bind: BindServer, label: str, weights: dict[str, int], *, scope: str | None = None, ttl: int = 60,
         rtype: str = "A") -> RecordSet:
    answers = tuple(Answer(value, weight, f"id-{value}") for value, weight in weights.items())
    return RecordSet(f"{label}.{bind.zone}", rtype, ttl, answers, scope)  # type: ignore[arg-type]


def all_text(exc: BaseException) -> str:
    """Everything an exception can show: str, repr and the whole formatted chain."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


def raw_update(bind: BindServer, label: str, value: str, *, key: str | None = None,
               secret: Secret | None = None) -> dns.message.Message:
    """A replace of label's A RRset sent by hand, signed with key (and secret, default the server's) or unsigned."""
    ring = None if key is None else keyring(key, secret or bind.keys[key])
    update = dns.update.UpdateMessage(bind.zone, keyring=ring, keyname=None if key is None else dns.name.from_text(key),
                                      keyalgorithm=ALGORITHM)
    update.replace(label, 60, "A", value)
    return dns.query.tcp(update, "127.0.0.1", timeout=3, port=bind.port)


async def test_signed_updates_change_the_answers_over_dns(bind: BindServer) -> None:
    p = provider(bind)
    first = rset(bind, "www", {"192.0.2.1": 10, "192.0.2.2": 20})
    await p.apply([Change(None, first)])
    assert bind.answers(first.name) == {"192.0.2.1", "192.0.2.2"}

    second = rset(bind, "www", {"192.0.2.3": 5}, ttl=30)
    await p.apply([Change(p.representable(first), second)])
    assert bind.answers(first.name) == {"192.0.2.3"}
    assert bind.query(first.name).answer[0].ttl == 30

    await p.apply([Change(p.representable(second), None)])
    assert bind.answers(first.name) == set()
    assert await p.current([first.key]) == {}
    # the default view's zone changed through its journal, in the test's directory only
    assert bind.zone_file("default").with_name(bind.zone_file("default").name + ".jnl").exists()


async def test_aaaa_record_sets(bind: BindServer) -> None:
    p = provider(bind)
    want = rset(bind, "v6", {"2001:db8::1": 3, "2001:DB8:0:0::2": 1}, rtype="AAAA")
    await p.apply([Change(None, want)])
    assert bind.answers(want.name, "AAAA") == {"2001:db8::1", "2001:db8::2"}
    assert await p.current([want.key]) == {want.key: p.representable(want)}


async def test_an_unsigned_update_is_refused_and_the_answers_stay(bind: BindServer) -> None:
    p = provider(bind)
    await p.apply([Change(None, rset(bind, "www", {"192.0.2.1": 1}))])
    response = raw_update(bind, "www", "203.0.113.66")
    assert response.rcode() == dns.rcode.REFUSED
    assert bind.answers(f"www.{bind.zone}") == {"192.0.2.1"}


@pytest.mark.parametrize(
    ("key", "secret_of", "expected"),
    [
        pytest.param("main", "eu", "BADSIG", id="main-key-wrong-secret"),
        pytest.param("eu", "us", "BADSIG", id="view-key-wrong-secret"),
        pytest.param("nosuchkey", "main", "BADKEY", id="unknown-key-name"),
        pytest.param("reader", "reader", "REFUSED", id="known-key-not-allowed-to-update"),
    ],
)
async def test_a_badly_signed_update_is_refused_and_the_answers_stay(bind: BindServer, key: str, secret_of: str,
                                                                     expected: str) -> None:
    good = provider(bind)
    before = rset(bind, "www", {"192.0.2.1": 1})
    await good.apply([Change(None, before)])
    bad = Rfc2136Provider(bind.address, bind.zone, key, bind.keys[secret_of], timeout_s=3.0, name="bind-test")
    with pytest.raises(ProviderError) as caught:
        await bad.apply([Change(bad.representable(before), rset(bind, "www", {"203.0.113.66": 1}))])
    assert f"bind-test: update of 1 record set(s) in the <default view, key {key}.>: {expected}" in str(caught.value)
    assert caught.value.retryable is False
    assert bind.keys[secret_of].reveal() not in all_text(caught.value)
    assert bind.answers(before.name) == {"192.0.2.1"}
    assert bind.answers(before.name, key="main") == {"192.0.2.1"}
    # a hand-made update signed with the wrong secret gets the same refusal from the server
    if expected == "BADSIG":
        with pytest.raises(dns.tsig.PeerBadSignature):
            raw_update(bind, "www", "203.0.113.67", key=key, secret=bind.keys[secret_of])
        assert bind.answers(before.name) == {"192.0.2.1"}


async def test_per_group_answers_differ_by_view_key(bind: BindServer) -> None:
    p = provider(bind)
    sets = [
        rset(bind, "api", {"192.0.2.10": 100}),
        rset(bind, "api", {"198.51.100.20": 100}, scope="eu"),
        rset(bind, "api", {"203.0.113.30": 100, "203.0.113.31": 50}, scope="us"),
    ]
    started = time.perf_counter()
    await p.apply([Change(None, s) for s in sets])
    elapsed_s = time.perf_counter() - started
    name = f"api.{bind.zone}"
    assert bind.answers(name) == {"192.0.2.10"}  # unsigned: the default view
    assert bind.answers(name, key="main") == {"192.0.2.10"}
    assert bind.answers(name, key="eu") == {"198.51.100.20"}
    assert bind.answers(name, key="us") == {"203.0.113.30", "203.0.113.31"}
    for view in ("eu", "us", "default"):  # each view's zone took its own update, journaled in the test's directory
        assert bind.zone_file(view).with_name(bind.zone_file(view).name + ".jnl").exists(), view
    print(f"apply of 3 record sets in 3 views: {elapsed_s * 1000:.1f} ms")


async def test_current_reads_back_what_was_applied(bind: BindServer) -> None:
    p = provider(bind)
    sets = [
        rset(bind, "a", {"192.0.2.1": 200, "192.0.2.2": 0}, ttl=45),
        rset(bind, "a", {"192.0.2.3": 7}, scope="eu"),
        rset(bind, "b", {"192.0.2.4": 1, "192.0.2.5": 1}, scope="us"),
    ]
    await p.apply([Change(None, s) for s in sets])
    absent = (f"nothing.{bind.zone}", "A", None)
    other_view = (f"b.{bind.zone}", "A", "eu")  # b exists in the us view only
    got = await p.current([s.key for s in sets] + [absent, other_view])
    assert got == {s.key: p.representable(s) for s in sets}
    assert got[sets[0].key].answers == (Answer("192.0.2.1", 255),) and got[sets[0].key].ttl == 45
    assert await p.verify(sets) == []


async def test_list_keys_gives_the_address_sets_of_every_view(bind: BindServer) -> None:
    p = provider(bind)
    sets = [
        rset(bind, "lk", {"192.0.2.1": 1, "192.0.2.2": 2}),
        rset(bind, "lk", {"198.51.100.1": 1}, scope="eu"),
        rset(bind, "lk", {"2001:db8::1": 1}, rtype="AAAA", scope="us"),
        rset(bind, "other", {"2001:db8::2": 1}, rtype="AAAA"),
    ]
    await p.apply([Change(None, s) for s in sets])
    # other types at the same name, written by hand in the default and eu views; a name with only text
    for key in ("main", "eu"):
        update = dns.update.UpdateMessage(bind.zone, keyring=keyring(key, bind.keys[key]),
                                          keyname=dns.name.from_text(key), keyalgorithm=ALGORITHM)
        update.add("lk", 60, "TXT", '"not an address"')
        update.add("lk", 60, "MX", f"10 ns.{bind.zone}")  # ns has an address: BIND refuses an MX to none
        update.add("text", 60, "TXT", '"only text"')
        assert dns.query.tcp(update, "127.0.0.1", timeout=3, port=bind.port).rcode() == dns.rcode.NOERROR
    lk, other, text = f"lk.{bind.zone}", f"other.{bind.zone}", f"text.{bind.zone}"
    assert bind.answers(lk, "TXT", key="eu") and bind.answers(lk, "MX") and bind.answers(text, "TXT")
    got = await p.list_keys([other, lk, text, f"nothing.{bind.zone}", lk])
    assert got == [(lk, "A", None), (lk, "A", "eu"), (lk, "AAAA", "us"), (other, "AAAA", None)]
    assert set(await p.current(got)) == set(got)  # the keys current() reads, no more
    assert await p.list_keys([text]) == []
    assert await p.list_keys([]) == []
    # a provider that knows fewer views lists fewer
    no_views = provider(bind, views={})
    assert await no_views.list_keys([lk]) == [(lk, "A", None)]

    await p.apply([Change(p.representable(sets[1]), None)])
    assert await p.list_keys([lk]) == [(lk, "A", None), (lk, "AAAA", "us")]
    for names, message in (([lk, "www.example.org."], "'www.example.org.' is not a name in zone"),
                           ([lk.upper()], "names[0]: expected a lower-case domain name ending in '.'"),
                           ([lk.rstrip(".")], "names[0]: expected a lower-case domain name ending in '.'"),
                           (lk, "names: expected a list of names")):
        with pytest.raises(ProviderError, match=re.escape(message)) as caught:
            await p.list_keys(names)  # type: ignore[arg-type]
        assert caught.value.retryable is False


async def test_verify_names_a_set_changed_behind_its_back(bind: BindServer) -> None:
    p = provider(bind)
    want = [rset(bind, "www", {"192.0.2.1": 1}), rset(bind, "www", {"192.0.2.2": 1}, scope="eu")]
    await p.apply([Change(None, s) for s in want])
    assert raw_update(bind, "www", "192.0.2.99", key="eu").rcode() == dns.rcode.NOERROR
    assert await p.verify(want) == [
        f"www.{bind.zone} A (group eu): serves [192.0.2.99] ttl 60, want [192.0.2.2] ttl 60"]
    assert await p.verify([rset(bind, "gone", {"192.0.2.1": 1})]) == [
        f"gone.{bind.zone} A (every client): serves nothing, want [192.0.2.1] ttl 60"]


async def test_a_write_over_a_newer_state_fails_and_a_repeated_one_succeeds(bind: BindServer) -> None:
    p = provider(bind)
    old = rset(bind, "www", {"192.0.2.1": 1})
    await p.apply([Change(None, old)])
    new = rset(bind, "www", {"192.0.2.2": 1})
    change = Change(p.representable(old), new)
    await p.apply([change])
    await p.apply([change])  # its reply was lost, say: the state is already the new one, so it succeeds
    assert bind.answers(new.name) == {"192.0.2.2"}
    assert raw_update(bind, "www", "192.0.2.77", key="main").rcode() == dns.rcode.NOERROR  # another writer
    with pytest.raises(ProviderError, match="NXRRSET: a record set changed since it was read") as caught:
        await p.apply([Change(p.representable(old), rset(bind, "www", {"192.0.2.3": 1}))])
    assert caught.value.retryable is True
    assert bind.answers(new.name) == {"192.0.2.77"}  # the newer state was not overwritten


async def test_top_answers_by_weight_are_served(bind: BindServer) -> None:
    p = provider(bind, max_answers=2)
    want = rset(bind, "top", {"192.0.2.1": 10, "192.0.2.2": 200, "192.0.2.3": 0, "192.0.2.4": 50, "192.0.2.5": 200})
    await p.apply([Change(None, want)])
    assert bind.answers(want.name) == {"192.0.2.2", "192.0.2.5"}
    assert await p.verify([want]) == []
    wider = provider(bind, max_answers=3)
    assert await wider.verify([want]) == [
        f"top.{bind.zone} A (every client): serves [192.0.2.2, 192.0.2.5] ttl 60, "
        "want [192.0.2.2, 192.0.2.4, 192.0.2.5] ttl 60"]


@pytest.mark.parametrize(
    ("weights", "max_answers", "served"),
    [
        pytest.param({"192.0.2.1": 1, "192.0.2.2": 0}, None, ["192.0.2.1"], id="zero-weight-left-out"),
        pytest.param({"192.0.2.1": 0, "192.0.2.2": 0}, None, ["192.0.2.1", "192.0.2.2"], id="all-zero-all-served"),
        pytest.param({"192.0.2.9": 5, "192.0.2.1": 9, "192.0.2.5": 7}, 2, ["192.0.2.1", "192.0.2.5"], id="top-two"),
        pytest.param({"192.0.2.10": 5, "192.0.2.9": 5, "192.0.2.2": 5}, 2, ["192.0.2.2", "192.0.2.9"],
                     id="ties-by-address-not-text"),
        pytest.param({"192.0.2.1": 0, "192.0.2.2": 0, "192.0.2.3": 0}, 1, ["192.0.2.1"], id="all-zero-capped"),
        pytest.param({"2001:DB8::0:1": 1, "2001:db8::a": 2}, None, ["2001:db8::1", "2001:db8::a"],
                     id="ipv6-normalised"),
    ],
)
def test_representable_keeps_the_top_answers_with_equal_weights(weights, max_answers, served) -> None:
    p = Rfc2136Provider(("127.0.0.1", 53), "example.test", "main", make_secret("main"), max_answers=max_answers)
    rtype = "AAAA" if ":" in next(iter(weights)) else "A"
    desired = RecordSet("www.example.test.", rtype, 30, tuple(Answer(v, w, f"id{i}") for i, (v, w) in
                                                                enumerate(weights.items())), None, ("192.0.2.0/24",))
    got = p.representable(desired)
    assert got == RecordSet("www.example.test.", rtype, 30, tuple(Answer(v, 255) for v in served), None)
    assert p.representable(got) == got


def test_an_answer_served_or_not_is_a_whole_move_for_the_churn_threshold() -> None:
    # plain DNS holds no weights: the top answers changing must be written, whatever the threshold
    p = Rfc2136Provider(("127.0.0.1", 53), "example.test", "main", make_secret("main"), max_answers=2)

    def answers(*weights: int) -> RecordSet:
        return RecordSet("www.example.test.", "A", 30, tuple(Answer(f"192.0.2.{i}", w) for i, w in enumerate(weights, 1)))

    held = p.representable(answers(100, 80, 75))  # serves .1 and .2
    for threshold in (10, 255):  # .3 overtakes .2 by a point: the served set changes
        plan = make_plan("r", {held.key: held}, [answers(100, 75, 80)],
                         PlanSettings(min_weight_change=threshold, max_weight_shift=1.0), representable=p.representable)
        assert [c.new.answers for c in plan.changes if c.new] == [(Answer("192.0.2.1", 255), Answer("192.0.2.3", 255))]
        assert not plan.skipped
    assert make_plan("r", {held.key: held}, [answers(120, 70, 65)], representable=p.representable).empty


@pytest.mark.parametrize(
    ("record_set", "message"),
    [
        pytest.param(RecordSet("www.example.test.", "A", 30, (Answer("192.0.2.1"),), "asia"),
                     "r2136: no view key for group 'asia' (views: eu)", id="group-without-view"),
        pytest.param(RecordSet("www.example.org.", "A", 30, (Answer("192.0.2.1"),)),
                     "r2136: 'www.example.org.' is not a name in zone example.test.", id="outside-zone"),
        pytest.param(RecordSet("www.example.test.", "A", 30, (Answer("2001:db8::1"),)),
                     "r2136: www.example.test. A (every client): 2001:db8::1 is not an A address", id="wrong-family"),
        pytest.param(RecordSet("www.example.test.", "A", 2**31, (Answer("192.0.2.1"),)),
                     "r2136: www.example.test. A (every client): ttl 2147483648 is not a whole number of seconds "
                     "0-2147483647 (RFC 2181)", id="ttl-too-big"),
        pytest.param(RecordSet("www.example.test.", "A", -1, (Answer("192.0.2.1"),), "eu"),
                     "r2136: www.example.test. A (group eu): ttl -1 is not a whole number of seconds 0-2147483647 "
                     "(RFC 2181)", id="ttl-negative"),
        pytest.param(RecordSet("www.example.test.", "A", 30.5, (Answer("192.0.2.1"),)),  # type: ignore[arg-type]
                     "r2136: www.example.test. A (every client): ttl 30.5 is not a whole number of seconds "
                     "0-2147483647 (RFC 2181)", id="ttl-fraction"),
    ],
)
async def test_record_sets_it_cannot_hold_are_refused_before_any_message(record_set, message) -> None:
    # the server address is a closed port: any message sent would time out instead
    p = Rfc2136Provider(("127.0.0.1", free_port()), "example.test", "main", make_secret("main"), name="r2136",
                        views={"eu": ("eu", make_secret("eu"))}, timeout_s=0.5)
    calls = [lambda: p.apply([Change(None, record_set)]), lambda: p.verify([record_set])]
    if "address" not in message and "ttl" not in message:  # a key has neither: current() checks its name and group
        calls.append(lambda: p.current([record_set.key]))
    for call in calls:
        with pytest.raises(ProviderError) as caught:
            await call()
        assert str(caught.value) == message
        assert caught.value.retryable is False


async def test_an_oversized_ttl_fails_the_exporter_once_instead_of_being_retried() -> None:
    # dnspython would raise BadTTL while building the message: an unexpected error, retried for ever
    p = Rfc2136Provider(("127.0.0.1", 9), "example.test", "main", make_secret("main"), name="r2136")
    sent: list[object] = []

    async def empty_zone(keys):  # a reachable server with an empty zone
        return {key: None for key in keys}

    async def update(view, changes):
        sent.append(changes)

    p._read_all, p._update = empty_zone, update  # type: ignore[method-assign]
    runner = ExporterRunner(p, RunnerSettings(min_interval_s=0, recheck_s=0, retry_base_s=0.01, retry_max_s=0.01))
    runner.desire([RecordSet("www.example.test.", "A", 2**31, (Answer("192.0.2.1"),))])
    task = asyncio.create_task(runner.run())
    try:
        for _ in range(100):  # bounded: 1 s at most
            if runner.status()["failures_total"]:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # time for retries, were it retried
    finally:
        runner.stop()
        await asyncio.wait_for(task, 2)
    status = runner.status()
    assert status["state"] == "failed" and status["failures_total"] == 1, status
    assert "www.example.test. A (every client): ttl 2147483648" in status["last_error"]
    assert sent == []


async def test_a_server_that_is_down_is_a_retryable_error(tmp_path: Path) -> None:
    secret = make_secret("main")
    p = Rfc2136Provider(("127.0.0.1", free_port()), "example.test", "main", secret, timeout_s=0.3)
    change = Change(None, RecordSet("www.example.test.", "A", 30, (Answer("192.0.2.1"),)))
    with pytest.raises(ProviderError, match=r"cannot reach 127\.0\.0\.1:\d+|no reply from") as caught:
        await p.apply([change])
    assert caught.value.retryable is True
    with pytest.raises(ProviderError, match=r"no reply from 127\.0\.0\.1:\d+ within 0.3 s|cannot reach"):
        await p.current([change.key])
    assert secret.reveal() not in all_text(caught.value)


async def test_the_tsig_secret_never_shows(bind: BindServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = [s.reveal() for s in bind.keys.values()]
    p = provider(bind)
    want = rset(bind, "www", {"192.0.2.1": 1}, scope="eu")
    await p.apply([Change(None, want)])
    shown = [repr(p), str(p), repr(await p.current([want.key])), repr(p.representable(want)),
             repr(await p.list_keys([want.name]))]
    wrong = Rfc2136Provider(bind.address, bind.zone, "main", bind.keys["us"], views={"eu": ("eu", bind.keys["main"])})
    # a server that is down: a closed port, with the right secrets
    down = Rfc2136Provider(("127.0.0.1", free_port()), bind.zone, "main", bind.keys["main"], views=bind.view_keys(),
                           timeout_s=0.3)
    shown += [repr(wrong), str(wrong), repr(down)]
    for bad, expected in ((wrong, "BADSIG"), (down, "no reply from|cannot reach")):
        for call in (lambda: bad.apply([Change(None, rset(bind, "x", {"192.0.2.1": 1}))]),
                     lambda: bad.current([want.key]), lambda: bad.verify([want]), lambda: bad.list_keys([want.name])):
            with pytest.raises(ProviderError, match=expected) as caught:
                await call()
            shown.append(all_text(caught.value))
    shown.append(caplog.text)
    shown += [str(r.__dict__) for r in caplog.records]
    text = "\n".join(shown)
    assert "main." in text and "BADSIG" in text  # the key names are there to see
    for secret in secrets:
        assert secret not in text
    await p.aclose()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"server": ("localhost", 53)}, "server: ('localhost', 53) is not an (IP address, port) pair",
                     id="server-not-an-address"),
        pytest.param({"server": ("127.0.0.1", 0)}, "server: port 0 is not within 1-65535", id="server-port"),
        pytest.param({"zone": "bad..zone"}, "zone: 'bad..zone' is not a domain name", id="zone"),
        pytest.param({"algorithm": "hmac-sha3"}, "algorithm: 'hmac-sha3' is not one of", id="algorithm"),
        pytest.param({"key_secret": Secret("not base64!", "env:TSIG")},
                     "key_secret: the TSIG secret in env:TSIG is not base64", id="secret-not-base64"),
        pytest.param({"key_secret": "c2VjcmV0"}, "key_secret: pass a latency_router.secrets.Secret, not str",
                     id="secret-as-str"),
        pytest.param({"views": {"eu": ("eu", Secret("###", "file:/k"))}},
                     "views['eu']: the TSIG secret in file:/k is not base64", id="view-secret"),
        pytest.param({"views": {"eu": "eu"}}, "views['eu']: write (key_name, secret)", id="view-shape"),
        pytest.param({"max_answers": 0}, "max_answers: 0 is not a whole number of at least 1", id="max-answers"),
        pytest.param({"timeout_s": 0}, "timeout_s: 0 is not a positive number of seconds", id="timeout"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, message) -> None:
    args = {"server": ("127.0.0.1", 53), "zone": "example.test", "key_name": "main", "key_secret": make_secret("m")}
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError)) as caught:
        Rfc2136Provider(**args)
    assert str(caught.value).startswith(message)
    assert "not base64!" not in str(caught.value) and "###" not in str(caught.value)


def test_bind_keeps_its_files_in_the_test_directory(bind: BindServer, tmp_path: Path) -> None:
    assert raw_update(bind, "www", "192.0.2.1", key="main").rcode() == dns.rcode.NOERROR
    assert raw_update(bind, "www", "192.0.2.2", key="eu").rcode() == dns.rcode.NOERROR
    stem = bind.zone.rstrip(".")
    journals = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jnl"))
    assert journals == [f"default/{stem}.zone.jnl", f"eu/{stem}.zone.jnl"]
    assert (tmp_path / "named.pid").exists()
    # the zone's name is fresh per server: nothing named after it may exist outside the test's directory
    for place in (Path.cwd(), Path("/var/cache/bind"), Path("/etc/bind"), Path("/var/lib/bind")):
        if place.is_dir():
            assert not [p for p in place.iterdir() if stem in p.name], place
