"""The Route 53 provider against moto's server mode, started by the test on 127.0.0.1: record sets read back as
planned, everything Route 53 would reject is refused before any request, big plans are split into batches, throttling
is retryable, and no AWS key ever shows.

moto has no CIDR collections (404) and drops CidrRoutingConfig from the record sets it stores, so per-group (IP-based)
routing is tested here as translation only, plus the clear error moto's 404 gives; its DNS answers are not checked.
"""

from __future__ import annotations

import itertools
import logging
import socket
import re
import traceback
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from latency_router.exporters.dns.errors import ProviderError
from latency_router.exporters.dns.model import Answer, Change, RecordSet
from latency_router.exporters.dns.plan import make_plan
from latency_router.exporters.dns.route53 import (
    Route53Provider,
    TokenBucket,
    desired_records,
    diff_records,
    parse_group,
    record_set_problems,
    split_batches,
)
from latency_router.secrets import Secret
from moto_support import moto_server

ACCESS = "AKIATESTKEYDONOTSHOW"
SECRET = "s3cr3t/Route53+Key+DoNotShow"
_zones = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's server on a free port of 127.0.0.1, up for this module's tests."""
    with moto_server() as url:
        yield url


@pytest.fixture(autouse=True)
def no_aws_config(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Keep the machine's AWS settings out of the tests."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)


def admin(url: str) -> Any:
    """A plain boto3 client: the test's own view of the zone, beside the provider."""
    return boto3.client("route53", endpoint_url=url, region_name="us-east-1", aws_access_key_id="admin",
                        aws_secret_access_key="admin")


def new_zone(url: str) -> tuple[str, str]:
    """A fresh hosted zone: (id, name)."""
    name = f"z{next(_zones)}.example.com."
    out = admin(url).create_hosted_zone(Name=name, CallerReference=name)
    return out["HostedZone"]["Id"].rsplit("/", 1)[-1], name


def provider(url: str, zone_id: str, **kwargs: Any) -> Route53Provider:
    kwargs.setdefault("access_key", Secret(ACCESS, "env:AWS_KEY"))
    kwargs.setdefault("secret_key", Secret(SECRET, "env:AWS_SECRET"))
    kwargs.setdefault("rate_per_s", 1000.0)  # pacing has its own test; moto has no rate limit
    kwargs.setdefault("timeout_s", 5.0)
    return Route53Provider(zone_id, endpoint_url=url, **kwargs)


class Calls:
    """Every API call the provider's client starts (before validation or sending), with its parameters."""

    def __init__(self, p: Route53Provider) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        p._client.meta.events.register("provide-client-params.route53", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.seen.append((model.name, params))

    def names(self) -> list[str]:
        return [name for name, _ in self.seen]


def rset(zone: str, label: str, weights: dict[str, int], *, ttl: int = 60, rtype: str = "A",
         scope: str | None = None, networks: tuple[str, ...] = ()) -> RecordSet:
    answers = tuple(Answer(value, weight, f"{label}/{value}") for value, weight in weights.items())
    return RecordSet(f"{label}.{zone}", rtype, ttl, answers, scope, networks)  # type: ignore[arg-type]


def raw_records(url: str, zone_id: str, name: str) -> list[dict[str, Any]]:
    out = admin(url).list_resource_record_sets(HostedZoneId=zone_id, MaxItems="300")["ResourceRecordSets"]
    return [rr for rr in out if rr["Name"] == name and rr["Type"] in ("A", "AAAA")]


def bad_answer(value: str, weight: Any, set_id: str = "") -> Answer:
    """An Answer that skips the model's own checks, as one from a buggy caller would."""
    answer = object.__new__(Answer)
    for field, v in (("value", value), ("weight", weight), ("set_id", set_id)):
        object.__setattr__(answer, field, v)
    return answer


def with_networks(record_set: RecordSet, networks: tuple[str, ...]) -> RecordSet:
    """The record set with networks the model's own check would refuse, as a buggy caller's could be."""
    object.__setattr__(record_set, "networks", networks)
    return record_set


def long_name(zone: str, length: int) -> str:
    """A valid name in the zone of `length` characters with its trailing dot (labels of at most 63)."""
    filler = length - len(zone) - 1
    labels = []
    while filler > 0:
        take = min(63, filler - 1 if filler in (64, 65) else filler)  # never leave a label of 0 after a dot
        labels.append("a" * take)
        filler -= take + 1
    name = ".".join(labels) + "." + zone
    assert len(name) == length, (len(name), length)
    return name


def all_text(exc: BaseException) -> str:
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


# record sets read back as planned


async def test_weighted_sets_read_back_as_planned(moto_url: str) -> None:
    zone_id, zone = new_zone(moto_url)
    p = provider(moto_url, zone_id)
    a = rset(zone, "api", {"192.0.2.1": 200, "192.0.2.2": 55, "192.0.2.3": 0})
    aaaa = rset(zone, "api", {"2001:db8::1": 255}, rtype="AAAA")
    await p.apply([Change(None, a), Change(None, aaaa)])
    assert await p.current([a.key, aaaa.key]) == {a.key: p.representable(a), aaaa.key: p.representable(aaaa)}
    records = raw_records(moto_url, zone_id, a.name)
    assert sorted((r["Type"], r["SetIdentifier"], r["Weight"], r["TTL"], r["ResourceRecords"][0]["Value"])
                  for r in records) == [
        ("A", "api/192.0.2.1", 200, 60, "192.0.2.1"),
        ("A", "api/192.0.2.2", 55, 60, "192.0.2.2"),
        ("A", "api/192.0.2.3", 0, 60, "192.0.2.3"),
        ("AAAA", "api/2001:db8::1", 255, 60, "2001:db8::1"),
    ]
    assert await p.verify([a, aaaa]) == []

    # update: weights move, one answer goes, one comes, the TTL changes
    b = rset(zone, "api", {"192.0.2.1": 10, "192.0.2.2": 245, "192.0.2.4": 3}, ttl=30)
    await p.apply([Change(p.representable(a), b)])
    assert await p.current([b.key]) == {b.key: p.representable(b)}
    assert {r["SetIdentifier"]: r["Weight"] for r in raw_records(moto_url, zone_id, a.name) if r["Type"] == "A"} == {
        "api/192.0.2.1": 10, "api/192.0.2.2": 245, "api/192.0.2.4": 3}
    assert await p.verify([b, aaaa]) == []

    # delete
    await p.apply([Change(p.representable(b), None)])
    assert await p.current([b.key, aaaa.key]) == {aaaa.key: p.representable(aaaa)}
    assert [r["Type"] for r in raw_records(moto_url, zone_id, a.name)] == ["AAAA"]
    await p.aclose()


async def test_the_shared_plan_writes_once_then_finds_nothing_to_do(moto_url: str) -> None:
    zone_id, zone = new_zone(moto_url)
    p = provider(moto_url, zone_id)
    desired = [rset(zone, "plan", {"192.0.2.1": 100, "192.0.2.2": 0}),
               RecordSet(f"plan.{zone}", "AAAA", 60, (Answer("2001:db8:0:0::1", 7),))]  # no set id, long form
    keys = [rs.key for rs in desired]
    first = make_plan(p.name, await p.current(keys), desired, representable=p.representable)
    assert [c.action for c in first.changes] == ["create", "create"]
    await p.apply(first.changes)
    again = make_plan(p.name, await p.current(keys), desired, representable=p.representable)
    assert again.empty and not again.skipped and not again.refused
    assert await p.verify(desired) == []


async def test_an_empty_set_id_becomes_the_address(moto_url: str) -> None:
    zone_id, zone = new_zone(moto_url)
    p = provider(moto_url, zone_id)
    want = RecordSet(f"www.{zone}", "AAAA", 60, (Answer("2001:DB8:0::7", 5), Answer("2001:db8::8", 6)))
    await p.apply([Change(None, want)])
    got = await p.current([want.key])
    assert got[want.key].answers == (Answer("2001:db8::7", 5, "2001:db8::7"), Answer("2001:db8::8", 6, "2001:db8::8"))
    assert got[want.key] == p.representable(want)
    assert sorted(r["SetIdentifier"] for r in raw_records(moto_url, zone_id, want.name)) == ["2001:db8::7",
                                                                                              "2001:db8::8"]


async def test_a_non_weighted_record_is_replaced_in_the_same_batch(moto_url: str) -> None:
    """Route 53 refuses weighted and non-weighted record sets of one name and type side by side: the simple one that
    is there is deleted in the very ChangeBatch that creates the weighted ones."""
    zone_id, zone = new_zone(moto_url)
    name = f"old.{zone}"
    admin(moto_url).change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": [{
        "Action": "CREATE", "ResourceRecordSet": {"Name": name, "Type": "A", "TTL": 300,
                                                  "ResourceRecords": [{"Value": "198.51.100.9"}]}}]})
    p = provider(moto_url, zone_id)
    before = await p.current([(name, "A", None)])
    assert before[(name, "A", None)].answers == (Answer("198.51.100.9", 1, "198.51.100.9"),)
    calls = Calls(p)
    want = rset(zone, "old", {"192.0.2.1": 1, "192.0.2.2": 2})
    await p.apply([Change(before[(name, "A", None)], want)])
    batches = [params["ChangeBatch"]["Changes"] for op, params in calls.seen if op == "ChangeResourceRecordSets"]
    assert len(batches) == 1
    assert [(c["Action"], c["ResourceRecordSet"].get("SetIdentifier")) for c in batches[0]] == [
        ("DELETE", None), ("CREATE", "old/192.0.2.1"), ("CREATE", "old/192.0.2.2")]
    assert batches[0][0]["ResourceRecordSet"]["TTL"] == 300  # the delete carries the record set exactly as it is
    assert all("Weight" in r for r in raw_records(moto_url, zone_id, name))
    assert await p.current([want.key]) == {want.key: p.representable(want)}


async def test_a_delete_carries_what_the_zone_holds_not_a_stale_plan(moto_url: str) -> None:
    zone_id, zone = new_zone(moto_url)
    p = provider(moto_url, zone_id)
    first = rset(zone, "del", {"192.0.2.1": 100})
    await p.apply([Change(None, first)])
    changed = dict(raw_records(moto_url, zone_id, first.name)[0], TTL=900)  # someone else edits it meanwhile
    admin(moto_url).change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": [
        {"Action": "UPSERT", "ResourceRecordSet": changed}]})
    calls = Calls(p)
    await p.apply([Change(p.representable(first), None)])  # the plan still thinks TTL 60
    (batch,) = [params["ChangeBatch"]["Changes"] for op, params in calls.seen if op == "ChangeResourceRecordSets"]
    assert [(c["Action"], c["ResourceRecordSet"]["TTL"]) for c in batch] == [("DELETE", 900)]
    assert raw_records(moto_url, zone_id, first.name) == []


async def test_verify_names_each_set_that_differs(moto_url: str) -> None:
    zone_id, zone = new_zone(moto_url)
    p = provider(moto_url, zone_id)
    good = rset(zone, "v1", {"192.0.2.1": 10})
    drifted = rset(zone, "v2", {"192.0.2.2": 10, "192.0.2.3": 20})
    await p.apply([Change(None, good), Change(None, drifted)])
    record = next(r for r in raw_records(moto_url, zone_id, drifted.name) if r["SetIdentifier"] == "v2/192.0.2.3")
    admin(moto_url).change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": [
        {"Action": "UPSERT", "ResourceRecordSet": dict(record, Weight=99)}]})
    missing = rset(zone, "v3", {"192.0.2.4": 1})
    lines = await p.verify([good, drifted, missing])
    assert len(lines) == 2
    assert lines[0].startswith(f"v2.{zone} A: serves ") and "192.0.2.3 w99" in lines[0] and "192.0.2.3 w20" in lines[0]
    assert lines[1].startswith(f"v3.{zone} A: serves nothing")


async def test_list_keys_gives_the_address_sets_at_the_names(moto_url: str) -> None:
    zone_id, zone = new_zone(moto_url)
    p = provider(moto_url, zone_id)
    name, other, text = f"lk.{zone}", f"other.{zone}", f"text.{zone}"
    sets = [rset(zone, "lk", {"192.0.2.1": 10, "192.0.2.2": 20}), rset(zone, "lk", {"2001:db8::1": 1}, rtype="AAAA"),
            rset(zone, "other", {"192.0.2.3": 1})]
    await p.apply([Change(None, rs) for rs in sets])
    plain = {"TTL": 60}
    admin(moto_url).change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": [
        {"Action": "CREATE", "ResourceRecordSet": {"Name": name, "Type": "TXT", **plain,
                                                   "ResourceRecords": [{"Value": '"not an address"'}]}},
        {"Action": "CREATE", "ResourceRecordSet": {"Name": name, "Type": "MX", **plain,
                                                   "ResourceRecords": [{"Value": f"10 mail.{zone}"}]}},
        {"Action": "CREATE", "ResourceRecordSet": {"Name": text, "Type": "TXT", **plain,
                                                   "ResourceRecords": [{"Value": '"only text"'}]}},
        {"Action": "CREATE", "ResourceRecordSet": {"Name": f"below.{name}", "Type": "A", **plain,  # under, not at
                                                   "ResourceRecords": [{"Value": "192.0.2.9"}]}},
    ]})
    calls = Calls(p)
    got = await p.list_keys([other, name, text, f"nothing.{zone}", name])
    assert got == [(name, "A", None), (name, "AAAA", None), (other, "A", None)]
    assert calls.names() == ["ListResourceRecordSets"] * 4  # one per name (the zone's name was read by apply)
    assert set(await p.current(got)) == set(got)  # the keys current() reads, no more
    assert await p.list_keys([text]) == []
    assert await p.list_keys([]) == []

    await p.apply([Change(p.representable(sets[1]), None)])
    assert await p.list_keys([name]) == [(name, "A", None)]
    calls.seen.clear()
    for names, message in (([name, "api.example.org."], "name: api.example.org. is not in hosted zone"),
                           ([name, name.upper()], "names[1]: "), (name, "names: expected a list")):
        with pytest.raises(ProviderError, match=re.escape(message)) as caught:
            await p.list_keys(names)  # type: ignore[arg-type]
        assert caught.value.retryable is False
    assert "ListResourceRecordSets" not in calls.names()  # refused before any listing


async def test_list_keys_maps_cidr_record_sets_to_their_group_and_paces_each_page() -> None:
    """moto keeps no CidrRoutingConfig, so Route 53's answers are stubbed: a per-group name over two pages."""
    p = Route53Provider("ZSTUB", access_key=Secret(ACCESS, "env:K"), secret_key=Secret(SECRET, "env:S"))
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    p._bucket = TokenBucket(5.0, clock=lambda: 0.0, sleep=sleep)
    name = "geo.example.com."

    def alias(location: str, set_id: str, rtype: str = "A") -> dict[str, Any]:
        return {"Name": name, "Type": rtype, "SetIdentifier": set_id,
                "CidrRoutingConfig": {"CollectionId": "c0ffee00-0000-0000-0000-000000000000", "LocationName": location},
                "AliasTarget": {"HostedZoneId": "ZSTUB", "DNSName": f"_lr-x.{name}", "EvaluateTargetHealth": False}}

    page = {"IsTruncated": True, "MaxItems": "300"}
    with Stubber(p._client) as stub:
        stub.add_response("get_hosted_zone", {"HostedZone": {"Id": "/hostedzone/ZSTUB", "Name": "example.com.",
                                                             "CallerReference": "stub"}})
        stub.add_response("list_resource_record_sets", {
            **page, "ResourceRecordSets": [alias("*", "cidr"), alias("eu", "cidr/eu")],
            "NextRecordName": name, "NextRecordType": "A", "NextRecordIdentifier": "cidr/us"},
            {"HostedZoneId": "ZSTUB", "StartRecordName": name, "MaxItems": "300"})
        stub.add_response("list_resource_record_sets", {
            **page, "ResourceRecordSets": [
                alias("us", "cidr/us"),
                {"Name": name, "Type": "AAAA", "SetIdentifier": "w", "Weight": 1, "TTL": 60,
                 "ResourceRecords": [{"Value": "2001:db8::1"}]},
                {"Name": name, "Type": "TXT", "TTL": 60, "ResourceRecords": [{"Value": '"text"'}]},
                {"Name": f"x.{name}", "Type": "A", "TTL": 60, "ResourceRecords": [{"Value": "192.0.2.1"}]}],
            "NextRecordName": f"y.{name}", "NextRecordType": "A"},
            {"HostedZoneId": "ZSTUB", "StartRecordName": name, "StartRecordType": "A",
             "StartRecordIdentifier": "cidr/us", "MaxItems": "300"})
        got = await p.list_keys([name])
        stub.assert_no_pending_responses()
    assert got == [(name, "A", None), (name, "A", "eu"), (name, "A", "us"), (name, "AAAA", None)]
    assert slept == pytest.approx([0.2, 0.4])  # every request took its turn at 5 a second


# refused before any call


BAD_SETS = [
    pytest.param(lambda z: RecordSet(f"a.{z}", "A", 60, (Answer("192.0.2.1", 1, "x"), bad_answer("192.0.2.2", 256))),
                 "answers[1].weight: 256", id="weight-256"),
    pytest.param(lambda z: RecordSet(f"a.{z}", "A", 60, (bad_answer("192.0.2.2", -1),)),
                 "answers[0].weight: -1", id="weight-negative"),
    pytest.param(lambda z: RecordSet(f"a.{z}", "A", 60, (Answer("192.0.2.2", 1.5),)),  # type: ignore[arg-type]
                 "answers[0].weight: 1.5", id="weight-fraction"),
    pytest.param(lambda z: RecordSet(f"a.{z}", "A", 60, (Answer("192.0.2.2", True),)),
                 "answers[0].weight: True", id="weight-bool"),
    pytest.param(lambda z: RecordSet(f"a.{z}", "A", 60, (Answer("192.0.2.1", 1, "id"), Answer("192.0.2.2", 2, "id"))),
                 "answers[1].set_id: 'id' is also answers[0]'s", id="duplicate-set-id"),
    pytest.param(lambda z: RecordSet(f"a.{z}", "A", 60, (Answer("192.0.2.1", 1), Answer("192.0.2.1", 2))),
                 "answers[1].set_id: '192.0.2.1' is also answers[0]'s", id="duplicate-derived-set-id"),
    pytest.param(lambda z: RecordSet(f"a.{z}", "A", 60, (Answer("192.0.2.1", 1, "x" * 129),)),
                 "answers[0].set_id", id="set-id-too-long"),
    pytest.param(lambda z: RecordSet(f"a.{z}", "A", -1, (Answer("192.0.2.1"),)), "ttl: -1", id="ttl-negative"),
    pytest.param(lambda z: RecordSet(f"a.{z}", "A", 2**31, (Answer("192.0.2.1"),)), "ttl: 2147483648",
                 id="ttl-too-big"),
    pytest.param(lambda z: RecordSet(f"a.{z}", "A", 60, (Answer("2001:db8::1"),)),
                 "answers[0].value: 2001:db8::1 is not an A address", id="wrong-family"),
    pytest.param(lambda z: RecordSet(f"A.{z}", "A", 60, (Answer("192.0.2.1"),)), ".name:", id="upper-case-name"),
    pytest.param(lambda z: RecordSet(f"a.{z}", "A", 60, tuple(Answer(f"10.0.0.{i}", 1) for i in range(101))),
                 "101 answers", id="over-100-weighted"),
    pytest.param(lambda z: RecordSet(f"a.{z}", "A", 60, (Answer("192.0.2.1"),), "eu"),
                 "networks: a per-group set needs", id="scoped-without-networks"),
    pytest.param(lambda z: RecordSet(f"a.{z}", "A", 60, (Answer("192.0.2.1"),), "eu", ("192.0.2.7/32",)),
                 "networks[0]: 192.0.2.7/32 has prefix /32", id="network-too-long"),
    pytest.param(lambda z: RecordSet(f"a.{z}", "A", 60, (Answer("192.0.2.1"),), "a group", ("192.0.2.0/24",)),
                 "scope: 'a group' cannot name a CIDR location", id="bad-location-name"),
    pytest.param(lambda z: RecordSet(f"a.{z}", "AAAA", 60, (bad_answer("fe80::1%eth0", 1, "x"),)),
                 "answers[0].value: 'fe80::1%eth0' has a zone id", id="answer-zone-id"),
    pytest.param(lambda z: with_networks(RecordSet(f"a.{z}", "A", 60, (Answer("192.0.2.1"),), "eu", ("10.0.0.0/8",)),
                                         ("10.0.0.0/8", "fe80::%x/64")),
                 "networks[1]: 'fe80::%x/64' has a zone id", id="network-zone-id"),
    # a valid 245-character name: its group's helper name _lr-g-<16 characters>.<name> has 267 characters
    pytest.param(lambda z: RecordSet(long_name(z, 245), "A", 60, (Answer("192.0.2.1"),), "europe-west-dub1",
                                     ("10.0.0.0/8",)),
                 "it needs the helper name _lr-g-europe-west-dub1.<name> of 267 characters", id="helper-name-too-long"),
]


@pytest.mark.parametrize(("make", "names"), BAD_SETS)
async def test_invalid_input_is_refused_before_any_call(moto_url: str, make, names: str) -> None:
    zone_id, zone = new_zone(moto_url)
    p = provider(moto_url, zone_id)
    calls = Calls(p)
    bad = make(zone)
    with pytest.raises(ProviderError) as caught:
        await p.apply([Change(None, bad)])
    assert caught.value.retryable is False
    assert names in str(caught.value)
    assert calls.seen == []  # not even the zone was read
    with pytest.raises(ProviderError):
        p.representable(bad)  # the plan's view refuses it too
    assert raw_records(moto_url, zone_id, bad.name) == []


@pytest.mark.parametrize("group", ["g", "europe-west-dub1"])
def test_helper_names_are_held_to_253_characters(group: str) -> None:
    zone = "example.com."
    longest = long_name(zone, 254 - len(f"_lr-g-{group}."))  # the helper: exactly 253 characters and the dot
    fits = RecordSet(longest, "A", 60, (Answer("192.0.2.1"),), group, ("10.0.0.0/8",))
    assert record_set_problems(fits, "rs") == []
    over = RecordSet(long_name(zone, len(longest) + 1), "A", 60, (Answer("192.0.2.1"),), group, ("10.0.0.0/8",))
    (problem,) = record_set_problems(over, "rs")
    assert problem.startswith(f"rs.name: with group '{group}' it needs the helper name _lr-g-{group}.<name> of 254 ")
    everyone = RecordSet(over.name, "A", 60, (Answer("192.0.2.1"),))  # weighted only: no helper name
    assert record_set_problems(everyone, "rs") == []


async def test_two_changes_of_one_record_set_are_refused_before_any_call(moto_url: str) -> None:
    zone_id, zone = new_zone(moto_url)
    p = provider(moto_url, zone_id)
    calls = Calls(p)
    one = rset(zone, "twice", {"192.0.2.1": 1})
    with pytest.raises(ProviderError, match=r"changes\[1\] \(twice\..* A\): also changed by changes\[0\]"):
        await p.apply([Change(None, one), Change(None, one)])
    assert calls.seen == []


async def test_a_name_outside_the_zone_is_refused_before_any_write(moto_url: str) -> None:
    zone_id, zone = new_zone(moto_url)
    outside = RecordSet("api.example.org.", "A", 60, (Answer("192.0.2.1"),))
    p = provider(moto_url, zone_id)
    calls = Calls(p)
    with pytest.raises(ProviderError, match=f"name: api.example.org. is not in hosted zone {zone}") as caught:
        await p.apply([Change(None, outside)])
    assert caught.value.retryable is False
    assert calls.names() == ["GetHostedZone"]  # the zone's name is the one thing it had to learn
    calls.seen.clear()
    with pytest.raises(ProviderError, match="is not in hosted zone"):
        await p.apply([Change(None, outside)])
    assert calls.seen == []  # once known, not one request


# batches


async def test_2500_changes_go_in_3_batches(moto_url: str) -> None:
    zone_id, zone = new_zone(moto_url)
    p = provider(moto_url, zone_id)
    calls = Calls(p)
    sets = [rset(zone, f"n{n}", {f"10.{n}.0.{i}": i + 1 for i in range(100)}) for n in range(25)]
    await p.apply([Change(None, rs) for rs in sets])
    batches = [params["ChangeBatch"]["Changes"] for op, params in calls.seen if op == "ChangeResourceRecordSets"]
    assert [len(b) for b in batches] == [1000, 1000, 500]
    for batch in batches:  # each name's changes whole in one batch
        names = [c["ResourceRecordSet"]["Name"] for c in batch]
        assert all(names.count(n) == 100 for n in set(names))
    got = await p.current([rs.key for rs in sets])
    assert got == {rs.key: p.representable(rs) for rs in sets}


def _create(name: str, values: int, action: str = "CREATE", width: int = 1) -> list[dict[str, Any]]:
    return [{"Action": action, "ResourceRecordSet": {"Name": name, "Type": "A", "SetIdentifier": str(i),
                                                     "ResourceRecords": [{"Value": "1" * width}]}}
            for i in range(values)]


@pytest.mark.parametrize(
    ("groups", "max_changes", "sizes"),
    [
        pytest.param([_create("a.", 600), _create("b.", 600)], 1000, [600, 600], id="groups-stay-whole"),
        pytest.param([_create("a.", 400), _create("b.", 400), _create("c.", 400)], 1000, [800, 400], id="packs"),
        pytest.param([_create("a.", 300, "UPSERT"), _create("b.", 300, "UPSERT")], 1000, [300, 300],
                     id="upsert-counts-twice"),
        pytest.param([_create("a.", 100, width=200), _create("b.", 100, width=200)], 1000, [100, 100],
                     id="32000-characters"),
        pytest.param([_create("a.", 3), _create("b.", 3), _create("c.", 3)], 6, [6, 3], id="max-changes-per-batch"),
    ],
)
def test_split_batches_keeps_route53_limits(groups, max_changes: int, sizes: list[int]) -> None:
    assert [len(b) for b in split_batches(groups, max_changes)] == sizes


def test_a_group_too_big_for_any_batch_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"^big\. A: 501 changes \(1002 records"):
        split_batches([_create("big.", 501, "UPSERT")])


async def test_a_set_too_big_for_one_batch_is_refused_before_any_call(moto_url: str) -> None:
    zone_id, zone = new_zone(moto_url)
    p = provider(moto_url, zone_id)
    calls = Calls(p)
    sets = [rset(zone, "huge", {f"10.{g}.0.{i}": 1 for i in range(100)}, scope=f"g{g}",
                 networks=(f"10.{g}.0.0/16",)) for g in range(6)]
    with pytest.raises(ProviderError, match="may not fit one ChangeBatch") as caught:
        await p.apply([Change(None, rs) for rs in sets])
    assert caught.value.retryable is False
    assert calls.seen == []


# errors: retryable or not, and never a secret


def _stubbed(p: Route53Provider, operation: str, code: str, status: int, message: str = "Rate exceeded") -> Stubber:
    stub = Stubber(p._client)
    stub.add_response("get_hosted_zone", {"HostedZone": {"Id": "/hostedzone/ZSTUB", "Name": "example.com.",
                                                         "CallerReference": "stub"}, "DelegationSet": {
        "NameServers": ["ns.example.net"]}})
    if operation == "change_resource_record_sets":
        stub.add_response("list_resource_record_sets", {"ResourceRecordSets": [], "IsTruncated": False,
                                                        "MaxItems": "300"})
    stub.add_client_error(operation, service_error_code=code, service_message=message, http_status_code=status)
    return stub


@pytest.mark.parametrize(
    ("operation", "code", "status", "retryable"),
    [
        pytest.param("list_resource_record_sets", "Throttling", 400, True, id="throttling-read"),
        pytest.param("change_resource_record_sets", "Throttling", 400, True, id="throttling-write"),
        pytest.param("change_resource_record_sets", "PriorRequestNotComplete", 400, True, id="prior-request"),
        pytest.param("change_resource_record_sets", "ServiceUnavailable", 503, True, id="unavailable"),
        pytest.param("change_resource_record_sets", "InvalidChangeBatch", 400, False, id="invalid-batch"),
        pytest.param("change_resource_record_sets", "AccessDenied", 403, False, id="access-denied"),
    ],
)
async def test_error_codes_map_to_retryable_or_not(operation: str, code: str, status: int, retryable: bool) -> None:
    p = Route53Provider("ZSTUB", access_key=Secret(ACCESS, "env:K"), secret_key=Secret(SECRET, "env:S"),
                        rate_per_s=1000.0)
    want = RecordSet("api.example.com.", "A", 60, (Answer("192.0.2.1", 1, "x"),))
    with _stubbed(p, operation, code, status) as stub:
        with pytest.raises(ProviderError) as caught:
            if operation == "list_resource_record_sets":
                await p.current([want.key])
            else:
                await p.apply([Change(None, want)])
        stub.assert_no_pending_responses()
    assert caught.value.retryable is retryable
    assert code in str(caught.value) and caught.value.provider == "route53"


async def test_aws_keys_never_show(moto_url: str) -> None:
    zone_id, zone = new_zone(moto_url)
    keys = {"access_key": Secret(ACCESS, "env:AWS_KEY"), "secret_key": Secret(SECRET, "env:AWS_SECRET")}
    errors: list[ProviderError] = []
    good = provider(moto_url, zone_id, **keys)
    wrong_zone = provider(moto_url, "ZNOSUCHZONE", **keys)
    down = provider(f"http://127.0.0.1:{free_port()}", zone_id, timeout_s=1.0, **keys)
    echoing = Route53Provider("ZSTUB", rate_per_s=1000.0, **keys)
    want = rset(zone, "k", {"192.0.2.1": 1})
    for p, call in [
        (good, lambda p: p.apply([Change(None, RecordSet(want.name, "A", 60, (bad_answer("192.0.2.1", 300),)))])),
        (wrong_zone, lambda p: p.current([want.key])),  # NoSuchHostedZone
        (down, lambda p: p.current([want.key])),  # connection refused
    ]:
        with pytest.raises(ProviderError) as caught:
            await call(p)
        errors.append(caught.value)
    # a server that echoes the credentials in its message (as SignatureDoesNotMatch can) is scrubbed too
    with _stubbed(echoing, "list_resource_record_sets", "SignatureDoesNotMatch", 403,
                  f"Credential={ACCESS}/20240101 secret {SECRET}"):
        with pytest.raises(ProviderError) as caught:
            await echoing.current([("api.example.com.", "A", None)])
        errors.append(caught.value)
    assert [e.retryable for e in errors] == [False, False, True, False]
    assert "NoSuchHostedZone" in str(errors[1]) and "<redacted>" in str(errors[3])
    await good.apply([Change(None, want)])
    shown = [all_text(e) for e in errors] + [repr(p) for p in (good, wrong_zone, down, echoing)] + [
        str(good), repr(await good.current([want.key])), repr(good.representable(want)), repr(keys)]
    for text in shown:
        assert ACCESS not in text and SECRET not in text
    assert all(e.__context__ is None and e.__cause__ is None for e in errors)


async def test_no_secret_shows_when_calls_fail_even_at_debug(moto_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    password = "hunter2-route53-url-password"
    zone_id, zone = new_zone(moto_url)
    keys = {"access_key": Secret(ACCESS, "env:AWS_KEY"), "secret_key": Secret(SECRET, "env:AWS_SECRET")}
    with_password = moto_url.replace("http://", f"http://user:{password}@")
    good = provider(with_password, zone_id, **keys)  # the SDK signs with the keys: the URL's password is not sent
    down = provider(f"http://user:{password}@127.0.0.1:{free_port()}", zone_id, timeout_s=1.0, **keys)
    wrong_zone = provider(with_password, "ZNOSUCHZONE", **keys)
    want = rset(zone, "k", {"192.0.2.1": 1})
    await good.apply([Change(None, want)])
    assert await good.list_keys([want.name]) == [want.key]
    shown: list[str] = [repr(p) for p in (good, down, wrong_zone)] + [str(good), repr(keys)]
    for p, call, expected in [
        (down, lambda p: p.list_keys([want.name]), "EndpointConnectionError"),
        (down, lambda p: p.apply([Change(None, want)]), "EndpointConnectionError"),
        (wrong_zone, lambda p: p.current([want.key]), "NoSuchHostedZone"),
        (wrong_zone, lambda p: p.list_keys([want.name]), "NoSuchHostedZone"),
    ]:
        with pytest.raises(ProviderError, match=expected) as caught:
            await call(p)
        shown.append(all_text(caught.value))
    assert "http://127.0.0.1:" in shown[-4]  # the URL is there to read, without its user and password
    for url in (f"http://user:{password}@127.0.0.1:port", f"{moto_url}/?X-Amz-Credential={password}"):
        with pytest.raises(ValueError, match="^endpoint_url: ") as refused:
            provider(url, zone_id, **keys)
        shown.append(all_text(refused.value))
    sdk = [r for r in caplog.records if r.name.startswith("botocore")]
    assert any("Authorization" in r.getMessage() for r in sdk)  # the SDK did log its signed requests at DEBUG
    shown += [caplog.text] + [str(r.__dict__) for r in caplog.records]
    text = "\n".join(shown)
    assert "Credential=<redacted>" in text
    for secret in (password, "user:", ACCESS, SECRET):
        assert secret not in text, secret
    for p in (good, down, wrong_zone):
        await p.aclose()


async def test_the_sdk_credential_chain_is_used_without_keys(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    zone_id, zone = new_zone(moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-environment")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-the-environment")
    p = provider(moto_url, zone_id, access_key=None, secret_key=None)
    want = rset(zone, "chain", {"192.0.2.1": 1})
    await p.apply([Change(None, want)])
    assert await p.current([want.key]) == {want.key: p.representable(want)}
    assert p._client._request_signer._credentials.access_key == "from-the-environment"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"access_key": Secret("a", "env:A")}, "access_key, secret_key", id="half-a-key-pair"),
        pytest.param({"max_changes_per_batch": 0}, "max_changes_per_batch", id="batch-0"),
        pytest.param({"max_changes_per_batch": 1001}, "max_changes_per_batch", id="batch-1001"),
        pytest.param({"rate_per_s": 0}, "rate_per_s", id="rate-0"),
        pytest.param({"timeout_s": -1}, "timeout_s", id="timeout-negative"),
        pytest.param({"cidr_collection": "no spaces"}, "cidr_collection", id="collection-name"),
        pytest.param({"endpoint_url": "not a url"}, "endpoint_url", id="endpoint"),
        pytest.param({"endpoint_url": "http://127.0.0.1:5000/?k=v"}, "endpoint_url", id="endpoint-query"),
        pytest.param({"endpoint_url": "http://127.0.0.1:port"}, "endpoint_url", id="endpoint-port"),
        pytest.param({"access_key": "AKIA", "secret_key": "s"}, "access_key", id="key-not-a-secret"),
    ],
)
def test_bad_settings_name_their_parameter(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}[:,]"):
        Route53Provider("Z1", **kwargs)


def test_an_empty_zone_id_is_refused() -> None:
    with pytest.raises(ValueError, match="^hosted_zone_id:"):
        Route53Provider("/hostedzone/")


# the request rate


async def test_the_token_bucket_paces_to_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    bucket = TokenBucket(5.0, clock=lambda: now[0], sleep=sleep)
    waits = [await bucket.take() for _ in range(11)]  # 11 at once: the last goes 2 s after the first
    assert waits == pytest.approx([0.2 * i for i in range(11)])
    assert slept == pytest.approx(waits[1:])
    now[0] = 100.0  # idle a long time: no burst saved beyond one
    assert await bucket.take() == 0.0
    assert await bucket.take() == pytest.approx(0.2)


async def test_every_request_takes_a_token(moto_url: str) -> None:
    zone_id, zone = new_zone(moto_url)
    p = provider(moto_url, zone_id)
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    p._bucket = TokenBucket(5.0, clock=lambda: 0.0, sleep=sleep)  # time stands still: every request waits its turn
    calls = Calls(p)
    await p.apply([Change(None, rset(zone, "paced", {"192.0.2.1": 1}))])
    assert calls.names() == ["GetHostedZone", "ListResourceRecordSets", "ChangeResourceRecordSets"]
    assert slept == pytest.approx([0.2, 0.4])


# per-group (IP-based) routing: translation only, since moto has no CIDR collections


def _groups(zone: str) -> list[RecordSet]:
    return [
        rset(zone, "geo", {"192.0.2.1": 200, "192.0.2.2": 55}),
        rset(zone, "geo", {"192.0.2.1": 1}, scope="eu", networks=("198.51.100.0/24",)),
        rset(zone, "geo", {"192.0.2.2": 3, "192.0.2.3": 0}, scope="us", networks=("203.0.113.0/24", "2001:db8::/32")),
    ]


def test_per_group_sets_become_cidr_aliases_to_weighted_sets() -> None:
    sets = _groups("example.com.")
    records = desired_records(sets, "ZONE", "11111111-2222-3333-4444-555555555555")
    aliases = [r for r in records if r["Name"] == "geo.example.com."]
    assert [(r["SetIdentifier"], r["CidrRoutingConfig"]["LocationName"], r["AliasTarget"]["DNSName"]) for r in
            aliases] == [
        ("cidr", "*", "_lr-all.geo.example.com."),
        ("cidr/eu", "eu", "_lr-g-eu.geo.example.com."),
        ("cidr/us", "us", "_lr-g-us.geo.example.com."),
    ]
    assert all(r["AliasTarget"]["HostedZoneId"] == "ZONE" and "TTL" not in r and "Weight" not in r for r in aliases)
    behind = {(r["Name"], r["SetIdentifier"]): r["Weight"] for r in records if r["Name"] != "geo.example.com."}
    assert behind == {
        ("_lr-all.geo.example.com.", "geo/192.0.2.1"): 200, ("_lr-all.geo.example.com.", "geo/192.0.2.2"): 55,
        ("_lr-g-eu.geo.example.com.", "geo/192.0.2.1"): 1,
        ("_lr-g-us.geo.example.com.", "geo/192.0.2.2"): 3, ("_lr-g-us.geo.example.com.", "geo/192.0.2.3"): 0,
    }
    # and they read back as written, weights and networks included
    collection = "11111111-2222-3333-4444-555555555555"
    networks = {(collection, "eu"): ("198.51.100.0/24",), (collection, "us"): ("2001:db8::/32", "203.0.113.0/24")}
    p = Route53Provider("ZONE")
    assert parse_group("geo.example.com.", "A", records, networks) == {rs.key: p.representable(rs) for rs in sets}


def test_going_per_group_replaces_the_weighted_sets_in_one_ordered_group() -> None:
    sets = _groups("example.com.")
    weighted = desired_records(sets[:1], "ZONE", "")
    per_group = desired_records(sets, "ZONE", "c")
    steps = [(c["Action"], c["ResourceRecordSet"]["Name"].split(".")[0], c["ResourceRecordSet"]["SetIdentifier"])
             for c in diff_records("geo.example.com.", weighted, per_group)]
    # the weighted sets at the name go first, the targets are written, then the aliases that point at them
    assert steps[:2] == [("DELETE", "geo", "geo/192.0.2.1"), ("DELETE", "geo", "geo/192.0.2.2")]
    assert {s[1] for s in steps[2:7]} == {"_lr-all", "_lr-g-eu", "_lr-g-us"}
    assert {s[0] for s in steps[2:7]} == {"CREATE"}
    assert steps[7:] == [("CREATE", "geo", "cidr"), ("CREATE", "geo", "cidr/eu"), ("CREATE", "geo", "cidr/us")]
    # and back: the aliases go first, then their targets, then the weighted sets return
    back = [(c["Action"], c["ResourceRecordSet"]["Name"].split(".")[0])
            for c in diff_records("geo.example.com.", per_group, weighted)]
    assert [b[0] for b in back[:3]] == ["DELETE"] * 3 and {b[1] for b in back[:3]} == {"geo"}
    assert back[-2:] == [("CREATE", "geo"), ("CREATE", "geo")]
    assert diff_records("geo.example.com.", per_group, per_group) == []


async def test_moto_has_no_cidr_collections_so_per_group_sets_fail_clearly(moto_url: str) -> None:
    zone_id, zone = new_zone(moto_url)
    p = provider(moto_url, zone_id)
    calls = Calls(p)
    with pytest.raises(ProviderError, match=r"list_cidr_collections: 404") as caught:
        await p.apply([Change(None, rs) for rs in _groups(zone)])
    assert caught.value.retryable is False
    assert "ChangeResourceRecordSets" not in calls.names()
    assert raw_records(moto_url, zone_id, f"geo.{zone}") == []
