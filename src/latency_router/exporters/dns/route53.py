"""Route 53 through boto3: weighted A/AAAA record sets, and IP-based (CIDR) routing for per-group answers.

Per (name, type):
- only a scope-None set: one weighted record set per answer at the name, with SetIdentifier = the answer's set id (its
  address when that is empty), Weight 0-255 (a 0 is served only when every weight is 0), the set's TTL, one value.
- per-group sets too: one IP-based alias record set per set at the name. A group's has CidrRoutingConfig {the
  `cidr_collection` collection (found or created), a location named after the group holding its networks}; the
  scope-None set's is in the default location "*", which answers every client no location matches. An IP-based record
  has no weight of its own, so each alias points at its set's weighted record sets, kept under `_lr-all.<name>` (scope
  None) and `_lr-g-<group>.<name>`: every set keeps its weights exactly and reads back as written.
Route 53 rejects much that its local stand-in (moto) accepts, so every change is checked here before any call, and
`apply()` reads the zone first: a DELETE carries the exact record set it deletes, and the changes of one (name, type)
go in one ChangeBatch (atomic), packed within Route 53's per-batch limits. The SDK is synchronous: each call runs in a
thread, one at a time, paced by a token bucket (Route 53 takes 5 requests a second per account); the SDK's own retries
are off, since retrying with backoff is the runner's job: throttling comes back as a retryable ProviderError.
No AWS key, nor an endpoint URL's user:password@ (which the SDK would not use: requests are signed with the keys), shows
in a message, the repr, or the SDK's own log records (at DEBUG they hold request URLs and the signed Authorization
header): a filter on the SDK's loggers rewrites those.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import boto3
import botocore.exceptions
from botocore.config import Config

from latency_router.exporters.dns.errors import ProviderError, public_url, scrub_urls
from latency_router.exporters.dns.model import WEIGHT_MAX, Answer, Change, Key, RecordSet
from latency_router.secrets import Secret

Raw = dict[str, Any]  # one ResourceRecordSet (or Change) as the Route 53 API spells it
Group = tuple[str, str]  # (name, rtype): its record sets, helpers included, are written in one ChangeBatch

TTL_MAX = 2_147_483_647
SET_ID_MAX = 128
WEIGHTED_MAX = 100  # weighted record sets with one name and type
BATCH_CHANGES_MAX = 1000
BATCH_RECORDS_MAX = 1000  # ResourceRecord elements in one ChangeBatch; an UPSERT counts twice
BATCH_CHARS_MAX = 32_000  # characters in all Value elements of one ChangeBatch; an UPSERT counts twice
CIDR_BLOCKS_MAX = 1000  # CIDR blocks in one ChangeCidrCollection request
PAGE_ITEMS = 300  # the most record sets ListResourceRecordSets returns at once
PAGES_MAX = 1000  # pages read per listing: a bound on every pagination loop
SHOWN_MAX = 20  # problems quoted in one refusal
DEFAULT_LOCATION = "*"
RETRYABLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "PriorRequestNotComplete", "RequestLimitExceeded", "ServiceUnavailable",
    "InternalError", "InternalFailure", "RequestTimeout", "ConcurrentModification",
})
_FAMILY = {"A": 4, "AAAA": 6}
_PREFIX_MAX = {4: 24, 6: 48}  # the longest prefixes a CIDR location takes
_LOCATION = re.compile(r"[0-9A-Za-z_-]{1,16}")
_COLLECTION = re.compile(r"[0-9A-Za-z_-]{1,64}")
_ESCAPE = re.compile(r"\\(\d{3})")
_ALL_LABEL = "_lr-all"
_GROUP_LABEL = "_lr-g-"
_ROUTING = ("Weight", "CidrRoutingConfig", "AliasTarget", "GeoLocation", "GeoProximityLocation", "Failover", "Region",
            "MultiValueAnswer", "TrafficPolicyInstanceId")
_KNOWN = ("Name", "Type", "SetIdentifier", "Weight", "TTL", "ResourceRecords", "CidrRoutingConfig", "AliasTarget")
# any URL in a message loses its user:password@ and its query string or fragment (either may hold a key)
# what a signed request shows of its keys: the access key in the Authorization header, a session token
_AWS_CREDENTIAL = re.compile(r"(Credential=)[^/,\s'\"]+")
_AWS_TOKEN = re.compile(r"(?i)(x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?)[^'\",\s}]+")
_SDK_LOGGERS = ("botocore", "boto3")  # urllib3 logs host, port and path only


class TokenBucket:
    """Paces takes to `rate_per_s` a second with a burst of one; the clock and sleep are injectable for tests."""

    def __init__(
        self,
        rate_per_s: float,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if isinstance(rate_per_s, bool) or not isinstance(rate_per_s, (int, float)) or not rate_per_s > 0:
            raise ValueError(f"rate_per_s: expected a number of requests per second > 0, got {rate_per_s!r}")
        self.interval_s = 1.0 / rate_per_s
        self._clock, self._sleep = clock, sleep
        self._next = -math.inf  # when the next take may go

    async def take(self) -> float:
        """Wait for the next slot (reserved before waiting, so concurrent takers queue); returns the seconds waited."""
        now = self._clock()
        start = max(now, self._next)
        self._next = start + self.interval_s
        wait = start - now
        if wait > 0:
            await self._sleep(wait)
        return wait


class _SdkLogScrubber(logging.Filter):
    """Rewrites the SDK's log records so that no key or URL password of any Route53Provider shows."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: set[str] = set()  # the literal values to blank out
        self._loggers_seen = -1

    def scrub(self, text: str) -> str:
        text = _AWS_TOKEN.sub(r"\1<redacted>", _AWS_CREDENTIAL.sub(r"\1<redacted>", scrub_urls(text)))
        for hidden in sorted(self.hidden, key=len, reverse=True):
            text = text.replace(hidden, "<redacted>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot be formatted: the handler reports it, as it would
            return True
        clean = self.scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info:  # the traceback as text, scrubbed: the exception object itself is not passed on
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, self.scrub(text)
        elif record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True

    def install(self) -> None:
        """Put the filter on every SDK logger (a logger's filter sees only its own records, not its children's)."""
        known = logging.Logger.manager.loggerDict
        if len(known) == self._loggers_seen:
            return
        names = [n for n in list(known) if n.split(".", 1)[0] in _SDK_LOGGERS] + list(_SDK_LOGGERS)
        for name in names:
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)
        self._loggers_seen = len(known)


_SCRUBBER = _SdkLogScrubber()


class Route53Provider:
    """Route 53 behind the Provider protocol: weighted record sets, and IP-based routing per group."""

    def __init__(
        self,
        hosted_zone_id: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: Secret | None = None,
        secret_key: Secret | None = None,
        name: str = "route53",
        max_changes_per_batch: int = BATCH_CHANGES_MAX,
        rate_per_s: float = 5.0,
        timeout_s: float = 10.0,
        cidr_collection: str = "latency-router",
    ) -> None:
        zone_id = hosted_zone_id.rsplit("/", 1)[-1] if isinstance(hosted_zone_id, str) else ""
        if not zone_id:
            raise ValueError(f"hosted_zone_id: expected an id such as 'Z0123456789ABC', got {hosted_zone_id!r}")
        if (access_key is None) != (secret_key is None):
            raise ValueError("access_key, secret_key: give both, or neither to use the SDK's usual credential chain")
        if not _whole(max_changes_per_batch) or not 1 <= max_changes_per_batch <= BATCH_CHANGES_MAX:
            raise ValueError(f"max_changes_per_batch: expected 1-{BATCH_CHANGES_MAX}, got {max_changes_per_batch!r}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"timeout_s: expected seconds > 0, got {timeout_s!r}")
        if not isinstance(cidr_collection, str) or not _COLLECTION.fullmatch(cidr_collection):
            raise ValueError(f"cidr_collection: expected 1-64 of A-Z a-z 0-9 _ -, got {cidr_collection!r}")
        for field, key in (("access_key", access_key), ("secret_key", secret_key)):
            if key is not None and not isinstance(key, Secret):
                raise ValueError(f"{field}: expected a Secret (write 'env:NAME' or 'file:PATH'), or none for the SDK's "
                                 "usual credential chain")
        hidden = {s.reveal() for s in (access_key, secret_key) if s is not None}
        connect_url = endpoint_url
        if endpoint_url is not None:
            if not isinstance(endpoint_url, str):
                raise ValueError(f"endpoint_url: expected a URL such as 'http://127.0.0.1:5000', got {endpoint_url!r}")
            try:
                parts = urlsplit(endpoint_url)
                parts.port  # noqa: B018 - raises ValueError for a port that is not a number 0-65535
            except ValueError:
                raise ValueError(f"endpoint_url: not a URL: {public_url(endpoint_url)!r}") from None
            if parts.query or parts.fragment:
                raise ValueError("endpoint_url: expected no query string or fragment, got "
                                 f"{public_url(endpoint_url)!r}")
            hidden |= {parts.password or "", unquote(parts.password or "")}
            if "@" in parts.netloc:  # the SDK signs with the keys: a user and password in the URL would only show
                connect_url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        self.name = name
        self.hosted_zone_id = zone_id
        self.endpoint_url = None if endpoint_url is None else public_url(endpoint_url)  # what the repr shows
        self.max_changes_per_batch = max_changes_per_batch
        self.cidr_collection = cidr_collection
        self._bucket = TokenBucket(rate_per_s)
        self._lock = asyncio.Lock()  # one request at a time: Route 53 rejects a change while the last one runs
        self._zone_name: str | None = None
        self._collection_id: str | None = None
        self._secrets = tuple(sorted(hidden - {""}, key=len, reverse=True))  # what _scrub() blanks out, longest first
        _SCRUBBER.hidden.update(self._secrets)
        config = Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"total_max_attempts": 1})
        try:
            session = boto3.session.Session(
                aws_access_key_id=access_key.reveal() if access_key is not None else None,
                aws_secret_access_key=secret_key.reveal() if secret_key is not None else None,
                region_name=region,
            )
            self._client = session.client("route53", endpoint_url=connect_url, config=config)
        except (ValueError, botocore.exceptions.BotoCoreError) as exc:
            raise ValueError(f"endpoint_url, region: cannot make a Route 53 client: {self._scrub(str(exc))}") from None
        _SCRUBBER.install()

    def __repr__(self) -> str:
        return (f"Route53Provider(name={self.name!r}, hosted_zone_id={self.hosted_zone_id!r}, "
                f"endpoint_url={self.endpoint_url!r}, cidr_collection={self.cidr_collection!r})")

    def representable(self, record_set: RecordSet) -> RecordSet:
        """The record set as this provider writes and reads it back: addresses in canonical text, every set id filled
        in (the address where it was empty), answers and networks sorted; ProviderError for what Route 53 rejects."""
        self._refuse(record_set_problems(record_set, label(record_set.key)))
        return _canonical(record_set)

    # Provider

    async def current(self, keys: Sequence[Key]) -> Mapping[Key, RecordSet]:
        """What the zone holds for these keys (absent keys: no such record set), read through the API."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        self._refuse([p for i, key in enumerate(keys) for p in key_problems(key, f"keys[{i}]")])
        await self._check_in_zone(key[0] for key in keys)
        raw = await self._read({key[0] for key in keys})
        found = self._parse(raw, await self._networks(raw))
        return {key: found[key] for key in keys if key in found}

    async def list_keys(self, names: Sequence[str]) -> list[Key]:
        """Every key of an A or AAAA record set the zone holds at these names (FQDN, lower case, ending in '.'), as
        current() reads them: a CIDR record set's location is its scope ('*' is None), every other (weighted, simple,
        geolocation) is scope None; other types are left out. Costs one ListResourceRecordSets request per name (one
        more per further 300 record sets at it), plus GetHostedZone once per provider, each paced by the token bucket
        (5 a second: 300 names take a minute)."""
        if isinstance(names, str):
            self._refuse([f"names: expected a list of names, got the string {names!r}"])
        names = list(dict.fromkeys(names))
        self._refuse([p for i, name in enumerate(names) for p in name_problems(name, f"names[{i}]")])
        if not names:
            return []
        await self._check_in_zone(names)
        keys: list[Key] = []
        for name in names:
            by_type: dict[Group, list[Raw]] = {}
            for rr in await self._list_name(name):
                by_type.setdefault((name, rr["Type"]), []).append(rr)
            keys += self._parse(by_type, {})
        return sorted(keys, key=lambda k: (k[0], k[1], k[2] is not None, k[2] or ""))

    async def apply(self, changes: Sequence[Change]) -> None:
        """Write the changes against what the zone holds now (all, or raise); a set with no answers is removed."""
        changes = list(changes)
        if not changes:
            return
        self._refuse(change_problems(changes))  # before any call
        await self._check_in_zone(change.key[0] for change in changes)
        scoped = {change.key[0] for change in changes if change.key[2] is not None}
        helpers = {(change.key[0], helper_name(change.key[0], scope)) for change in changes
                   if change.key[0] in scoped for scope in (None, change.key[2])}  # stale records there would clash
        raw = await self._read({change.key[0] for change in changes}, helpers)
        state = self._parse(raw, {})  # networks are not needed: a location's blocks are synced from the changes
        for change in changes:
            if change.new is None:
                state.pop(change.key, None)
            else:
                state[change.key] = _canonical(change.new)
        touched = sorted({(change.key[0], change.key[1]) for change in changes})
        by_group: dict[Group, list[RecordSet]] = {group: [] for group in touched}
        for key, record_set in state.items():
            if (key[0], key[1]) in by_group:
                by_group[(key[0], key[1])].append(record_set)
        collection_id = ""
        if any(rs.scope is not None and rs.answers for sets in by_group.values() for rs in sets):
            collection_id = await self._collection()
            await self._sync_locations(collection_id, {
                change.new.scope: _canonical(change.new).networks for change in changes
                if change.new is not None and change.new.scope is not None and change.new.answers
            })
        groups = []
        for group in touched:
            try:
                desired = desired_records(by_group[group], self.hosted_zone_id, collection_id)
            except ValueError as exc:
                raise ProviderError(self.name, f"refused: {exc}", retryable=False) from None
            diff = diff_records(group[0], raw.get(group, []), desired)
            if diff:
                groups.append(diff)
        try:
            batches = split_batches(groups, self.max_changes_per_batch)
        except ValueError as exc:
            raise ProviderError(self.name, f"refused: {exc}", retryable=False) from None
        for batch in batches:
            await self._call("change_resource_record_sets", HostedZoneId=self.hosted_zone_id,
                             ChangeBatch={"Comment": "latency-router", "Changes": batch})

    async def verify(self, desired: Sequence[RecordSet]) -> list[str]:
        """Read the desired sets back through the API; one line per set that differs, [] when all match.

        Route 53's answers cannot be checked over DNS from here (its name servers are on the internet, and moto serves
        no DNS), so this compares what the API holds, networks of the CIDR locations included.
        """
        wanted = [self.representable(rs) for rs in desired]
        found = await self.current([rs.key for rs in wanted])
        lines = []
        for want in wanted:
            have = found.get(want.key)
            if not want.answers:
                if have is not None and have.answers:
                    lines.append(f"{label(want.key)}: serves {_show(have)}, want no record set")
            elif have is None:
                lines.append(f"{label(want.key)}: serves nothing, want {_show(want)}")
            elif have != want:
                lines.append(f"{label(want.key)}: serves {_show(have)}, want {_show(want)}")
        return lines

    async def aclose(self) -> None:
        """Close the SDK client's connections."""
        await asyncio.to_thread(self._client.close)

    # reading

    async def _zone(self) -> str:
        if self._zone_name is None:
            out = await self._call("get_hosted_zone", Id=self.hosted_zone_id)
            self._zone_name = decode_name(out["HostedZone"]["Name"])
        return self._zone_name

    async def _check_in_zone(self, names: Iterable[str]) -> None:
        zone = await self._zone()
        outside = sorted({n for n in names if n != zone and not n.endswith("." + zone)})
        self._refuse([f"name: {n} is not in hosted zone {zone} ({self.hosted_zone_id})" for n in outside])

    async def _read(self, names: Iterable[str], more: Iterable[tuple[str, str]] = ()) -> dict[Group, list[Raw]]:
        """The A/AAAA record sets at each name and at the helper names its aliases point at (and at `more`, pairs of
        (name, helper name)), by (name, type)."""
        found: dict[Group, dict[tuple[str, str | None], Raw]] = {}
        helpers = set(more)
        for name in sorted(set(names)):
            for rr in await self._list_name(name):
                found.setdefault((name, rr["Type"]), {})[_identity(rr)] = rr
                alias = rr.get("AliasTarget")
                if alias and rr.get("CidrRoutingConfig"):
                    target = decode_name(str(alias.get("DNSName", "")))
                    if _is_helper(target, name):
                        helpers.add((name, target))
        for name, helper in sorted(helpers):
            for rr in await self._list_name(helper):
                found.setdefault((name, rr["Type"]), {})[_identity(rr)] = rr
        return {group: list(records.values()) for group, records in found.items()}

    async def _list_name(self, name: str) -> list[Raw]:
        """The A/AAAA record sets at exactly this name (they are listed together, whatever order the server keeps)."""
        params: dict[str, Any] = {"HostedZoneId": self.hosted_zone_id, "StartRecordName": name,
                                  "MaxItems": str(PAGE_ITEMS)}
        records: list[Raw] = []
        tokens: set[tuple[Any, ...]] = set()
        for _ in range(PAGES_MAX):
            out = await self._call("list_resource_record_sets", **params)
            past = False
            for rr in out.get("ResourceRecordSets", []):
                if decode_name(rr["Name"]) != name:
                    past = True
                    break
                if rr.get("Type") in _FAMILY:
                    records.append(rr)
            token = (out.get("NextRecordName"), out.get("NextRecordType"), out.get("NextRecordIdentifier"))
            if past or not out.get("IsTruncated") or not token[0] or token in tokens:
                break  # a repeated token: a server that pages without record identifiers (moto) would loop
            tokens.add(token)
            params.update(StartRecordName=token[0], StartRecordType=token[1])
            params.pop("StartRecordIdentifier", None)
            if token[2]:
                params["StartRecordIdentifier"] = token[2]
        return records

    async def _networks(self, raw: Mapping[Group, list[Raw]]) -> dict[tuple[str, str], tuple[str, ...]]:
        """(collection id, location) -> its CIDR blocks, for every group location the record sets point at."""
        wanted = set()
        for records in raw.values():
            for rr in records:
                cidr = rr.get("CidrRoutingConfig")
                if cidr and cidr.get("LocationName") != DEFAULT_LOCATION:
                    wanted.add((cidr["CollectionId"], cidr["LocationName"]))
        return {where: tuple(sorted(await self._cidr_blocks(*where))) for where in sorted(wanted)}

    async def _cidr_blocks(self, collection_id: str, location: str) -> list[str]:
        blocks: list[str] = []
        params: dict[str, Any] = {"CollectionId": collection_id, "LocationName": location}
        for _ in range(PAGES_MAX):
            out = await self._call("list_cidr_blocks", absent=("NoSuchCidrLocationException",), **params)
            blocks += [_network(b["CidrBlock"]) for b in out.get("CidrBlocks", [])]
            if not out.get("NextToken"):
                break
            params["NextToken"] = out["NextToken"]
        return blocks

    def _parse(self, raw: Mapping[Group, list[Raw]], networks: Mapping[tuple[str, str], tuple[str, ...]]
               ) -> dict[Key, RecordSet]:
        out: dict[Key, RecordSet] = {}
        for (name, rtype), records in raw.items():
            try:
                out.update(parse_group(name, rtype, records, networks))
            except (ValueError, KeyError, TypeError) as exc:
                raise ProviderError(self.name, f"{name} {rtype}: cannot read what the zone holds: {exc}",
                                    retryable=False) from None
        return out

    # writing

    async def _collection(self) -> str:
        """The id of the `cidr_collection` collection, created when the account has none of that name."""
        if self._collection_id is None:
            params: dict[str, Any] = {}
            for _ in range(PAGES_MAX):
                out = await self._call("list_cidr_collections", **params)
                for collection in out.get("CidrCollections", []):
                    if collection.get("Name") == self.cidr_collection:
                        self._collection_id = str(collection["Id"])
                        return self._collection_id
                if not out.get("NextToken"):
                    break
                params["NextToken"] = out["NextToken"]
            out = await self._call("create_cidr_collection", Name=self.cidr_collection,
                                   CallerReference=uuid.uuid4().hex)
            self._collection_id = str(out["Collection"]["Id"])
        return self._collection_id

    async def _sync_locations(self, collection_id: str, wanted: Mapping[str | None, tuple[str, ...]]) -> None:
        """Make each group's location hold exactly its networks (deletes first: a block may move between groups)."""
        deletes, puts = [], []
        for location, networks in sorted((k, v) for k, v in wanted.items() if k is not None):
            have = set(await self._cidr_blocks(collection_id, location))
            if gone := sorted(have - set(networks)):
                deletes.append({"LocationName": location, "Action": "DELETE_IF_EXISTS", "CidrList": gone})
            if new := sorted(set(networks) - have):
                puts.append({"LocationName": location, "Action": "PUT", "CidrList": new})
        for request in split_cidr_changes(deletes + puts):
            await self._call("change_cidr_collection", Id=collection_id, Changes=request)

    # the wire

    async def _call(self, operation: str, absent: tuple[str, ...] = (), **params: Any) -> dict[str, Any]:
        """One API request, paced and in a thread; an error code in `absent` reads as an empty answer."""
        method = getattr(self._client, operation)
        _SCRUBBER.install()  # the SDK may have made loggers since the last request
        async with self._lock:
            await self._bucket.take()
            try:
                return dict(await asyncio.to_thread(method, **params))
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in absent:
                    return {}
                failure = self._failure(operation, exc)
            except botocore.exceptions.BotoCoreError as exc:
                failure = self._failure(operation, exc)
        raise failure  # raised outside the handler: the SDK's exception does not ride along as its context

    def _failure(self, operation: str, exc: Exception) -> ProviderError:
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "unknown error")
            message = str(error.get("Message") or "").strip()
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            retryable = code in RETRYABLE_CODES or status == 429 or status >= 500
            text = f"{operation}: {code}" + (f": {message}" if message and message != code else "")
            text += f" (HTTP {status})" if status else ""
        else:
            retryable = isinstance(exc, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError))
            text = f"{operation}: {type(exc).__name__}: {exc}"
        return ProviderError(self.name, self._scrub(text), retryable=retryable)

    def _scrub(self, text: str) -> str:
        """The text without this provider's keys, or any URL's user, password, query string or fragment."""
        text = scrub_urls(text)
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    def _refuse(self, problems: list[str]) -> None:
        if problems:
            shown = "; ".join(problems[:SHOWN_MAX])
            more = f"; and {len(problems) - SHOWN_MAX} more" if len(problems) > SHOWN_MAX else ""
            raise ProviderError(self.name, self._scrub(f"refused: {shown}{more}"), retryable=False)


# checks: everything Route 53 rejects and moto accepts, found before any call


def label(key: Key) -> str:
    """'name type', or 'name type [group]' for a per-group set."""
    name, rtype, scope = key
    return f"{name} {rtype}" if scope is None else f"{name} {rtype} [{scope}]"


def key_problems(key: Key, where: str) -> list[str]:
    """What is wrong with a (name, type, scope) key, each naming its field."""
    name, rtype, scope = key
    out = name_problems(name, f"{where}.name")
    if rtype not in _FAMILY:
        out.append(f"{where}.rtype: {rtype!r} is not A or AAAA")
    if scope is not None and (not isinstance(scope, str) or not _LOCATION.fullmatch(scope)):
        out.append(f"{where}.scope: {scope!r} cannot name a CIDR location (1-16 of A-Z a-z 0-9 _ -)")
    return out


def name_problems(name: object, field: str) -> list[str]:
    """A lower-case domain name ending in '.', labels of 1-63 characters, 253 in all."""
    if not isinstance(name, str) or len(name) < 2 or not name.endswith(".") or name != name.lower():
        return [f"{field}: {name!r} is not a lower-case domain name ending in '.'"]
    if len(name) > 254 or any(not 0 < len(part) <= 63 for part in name[:-1].split(".")):
        return [f"{field}: {name!r} is not a valid domain name (labels of 1-63 characters, 253 in all)"]
    return []


def record_set_problems(record_set: RecordSet, where: str) -> list[str]:
    """What Route 53 would reject in this record set (moto accepts most of it), each naming its field."""
    rs = record_set
    out = key_problems(rs.key, where)
    family = _FAMILY.get(rs.rtype)
    if not _whole(rs.ttl) or not 0 <= rs.ttl <= TTL_MAX:
        out.append(f"{where}.ttl: {rs.ttl!r} is not a whole number of seconds 0-{TTL_MAX}")
    if not isinstance(rs.answers, tuple):
        return out + [f"{where}.answers: expected a tuple of answers, got {type(rs.answers).__name__}"]
    if len(rs.answers) > WEIGHTED_MAX:
        out.append(f"{where}.answers: {len(rs.answers)} answers; Route 53 holds at most {WEIGHTED_MAX} weighted "
                   "record sets with one name and type")
    ids: dict[str, int] = {}
    for i, answer in enumerate(rs.answers):
        field = f"{where}.answers[{i}]"
        try:
            address = ipaddress.ip_address(answer.value)
        except ValueError:
            out.append(f"{field}.value: {answer.value!r} is not an IP address")
        else:
            if "%" in answer.value:  # ipaddress keeps a zone id; Route 53 has no use for one
                out.append(f"{field}.value: {answer.value!r} has a zone id (the part after '%')")
            elif family is not None and address.version != family:
                out.append(f"{field}.value: {answer.value} is not an {rs.rtype} address")
        if not _whole(answer.weight) or not 0 <= answer.weight <= WEIGHT_MAX:
            out.append(f"{field}.weight: {answer.weight!r} is not a whole number 0-{WEIGHT_MAX}")
        if not isinstance(answer.set_id, str) or len(answer.set_id) > SET_ID_MAX:
            out.append(f"{field}.set_id: {answer.set_id!r} is not a SetIdentifier of 1-{SET_ID_MAX} characters")
            continue
        set_id = set_id_of(answer)
        if set_id in ids:
            out.append(f"{field}.set_id: {set_id!r} is also answers[{ids[set_id]}]'s (a SetIdentifier is unique per "
                       "name and type)")
        else:
            ids[set_id] = i
    if rs.scope is not None and rs.answers:
        out += networks_problems(rs.networks, f"{where}.networks")
        out += helper_problems(rs, where)
    return out


def helper_problems(record_set: RecordSet, where: str) -> list[str]:
    """The helper names a per-group set needs (`_lr-g-<group>.<name>`, and `_lr-all.<name>` for the set for everyone)
    must be valid names too: AWS rejects a long one only after the CIDR locations were written (moto takes it)."""
    name, _, scope = record_set.key
    if not isinstance(name, str) or not isinstance(scope, str) or name_problems(name, "name"):
        return []  # the key's own problems are reported already
    for helper in (helper_name(name, scope), helper_name(name, None)):  # the first is never the shorter
        if name_problems(helper, "helper"):
            shown = helper[: len(helper) - len(name)] + "<name>"
            return [f"{where}.name: with group {scope!r} it needs the helper name {shown} of {len(helper) - 1} "
                    "characters, over Route 53's 253 (use a shorter name or group name)"]
    return []


def networks_problems(networks: object, field: str) -> list[str]:
    """A group's networks: 1-1000 CIDRs, IPv4 /1-/24 and IPv6 /1-/48 (what a CIDR location takes)."""
    if not isinstance(networks, tuple) or not networks:
        return [f"{field}: a per-group set needs its group's networks (CIDRs), got {networks!r}"]
    out = []
    if len(networks) > CIDR_BLOCKS_MAX:
        out.append(f"{field}: {len(networks)} networks; a CIDR location takes at most {CIDR_BLOCKS_MAX} per request")
    for j, text in enumerate(networks):
        try:
            network = ipaddress.ip_network(text, strict=False)
        except (ValueError, TypeError):
            out.append(f"{field}[{j}]: {text!r} is not a CIDR")
            continue
        if "%" in text:
            out.append(f"{field}[{j}]: {text!r} has a zone id (the part after '%')")
            continue
        longest = _PREFIX_MAX[network.version]
        if not 1 <= network.prefixlen <= longest:
            out.append(f"{field}[{j}]: {text} has prefix /{network.prefixlen}; a CIDR location takes "
                       f"IPv{network.version} /1-/{longest} (everyone else gets the scope-None set)")
    return out


def change_problems(changes: Sequence[Change]) -> list[str]:
    """What is wrong with a list of changes, each problem naming the change and its field."""
    out: list[str] = []
    seen: dict[Key, int] = {}
    groups: dict[str, tuple[tuple[str, ...], int]] = {}
    for i, change in enumerate(changes):
        if change.old is None and change.new is None:
            out.append(f"changes[{i}]: neither old nor new: nothing to change")
            continue
        if change.old is not None and change.new is not None and change.old.key != change.new.key:
            out.append(f"changes[{i}]: old is {label(change.old.key)} but new is {label(change.new.key)}")
            continue
        key = change.key
        where = f"changes[{i}] ({label(key)})"
        if key in seen:
            out.append(f"{where}: also changed by changes[{seen[key]}]")
            continue
        seen[key] = i
        if change.new is None:
            out += key_problems(key, where)
            continue
        problems = record_set_problems(change.new, f"{where}.new")
        out += problems
        scope = change.new.scope
        if scope is not None and change.new.answers and not problems:
            networks = _canonical(change.new).networks
            if scope in groups and groups[scope][0] != networks:
                out.append(f"{where}.new.networks: group {scope!r} has other networks in changes[{groups[scope][1]}]")
            groups.setdefault(scope, (networks, i))
    # every change of one (name, type) goes in one ChangeBatch: refuse now what could never fit one
    weights: dict[Group, list[int]] = {}
    for change in changes:
        if change.new is not None and isinstance(change.new.answers, tuple):
            totals = weights.setdefault((change.new.name, change.new.rtype), [0, 0])
            totals[0] += len(change.new.answers)
            totals[1] += sum(len(str(a.value)) for a in change.new.answers)
    for (name, rtype), (records, chars) in sorted(weights.items()):
        if 2 * records > BATCH_RECORDS_MAX or 2 * chars > BATCH_CHARS_MAX:
            out.append(f"{name} {rtype}: {records} answers ({chars} characters) in all its sets may not fit one "
                       f"ChangeBatch ({BATCH_RECORDS_MAX} records, {BATCH_CHARS_MAX} characters; an update counts "
                       "twice)")
    return out


# translation between latency-router's record sets and Route 53's


def set_id_of(answer: Answer) -> str:
    """The answer's SetIdentifier: its set id, or its address when that is empty."""
    return answer.set_id or _value(answer.value)


def helper_name(name: str, scope: str | None) -> str:
    """Where the weighted record sets behind a per-group alias live."""
    return f"{_ALL_LABEL}.{name}" if scope is None else f"{_GROUP_LABEL}{scope.lower()}.{name}"


def decode_name(name: str) -> str:
    """A name as Route 53 lists it (octal escapes such as \\052 for '*') in lower case, ending in '.'."""
    text = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), name).lower()
    return text if text.endswith(".") else text + "."


def weighted_records(name: str, record_set: RecordSet) -> list[Raw]:
    """One weighted record set per answer, under `name`."""
    return [
        {"Name": name, "Type": record_set.rtype, "SetIdentifier": set_id_of(a), "Weight": a.weight,
         "TTL": record_set.ttl, "ResourceRecords": [{"Value": _value(a.value)}]}
        for a in record_set.answers
    ]


def desired_records(sets: Sequence[RecordSet], zone_id: str, collection_id: str) -> list[Raw]:
    """The Route 53 record sets that hold every record set of one (name, type); a set with no answers holds nothing."""
    live = sorted((rs for rs in sets if rs.answers), key=lambda rs: (rs.scope is not None, rs.scope or ""))
    if not live:
        return []
    name, rtype = live[0].name, live[0].rtype
    if all(rs.scope is None for rs in live):
        return weighted_records(name, live[0])
    out: list[Raw] = []
    helpers: dict[str, Key] = {}
    for rs in live:
        helper = helper_name(name, rs.scope)
        if helper in helpers:
            raise ValueError(f"{label(rs.key)}: scope: group names that differ only in case ({label(helpers[helper])})")
        helpers[helper] = rs.key
        out.append({
            "Name": name, "Type": rtype, "SetIdentifier": _cidr_set_id(rs.scope),
            "CidrRoutingConfig": {"CollectionId": collection_id,
                                  "LocationName": DEFAULT_LOCATION if rs.scope is None else rs.scope},
            "AliasTarget": {"HostedZoneId": zone_id, "DNSName": helper, "EvaluateTargetHealth": False},
        })
        out += weighted_records(helper, rs)
    return out


def parse_group(name: str, rtype: str, records: Sequence[Raw],
                networks: Mapping[tuple[str, str], tuple[str, ...]]) -> dict[Key, RecordSet]:
    """latency-router's record sets from the Route 53 record sets of one (name, type), its helper names included."""
    at_name: list[Raw] = []
    behind: dict[str, list[Raw]] = {}
    for rr in records:
        rname = decode_name(rr["Name"])
        (at_name if rname == name else behind.setdefault(rname, [])).append(rr)
    out: dict[Key, RecordSet] = {}
    plain = []
    for rr in at_name:
        cidr, alias = rr.get("CidrRoutingConfig"), rr.get("AliasTarget")
        if cidr and alias:
            location = cidr["LocationName"]
            scope = None if location == DEFAULT_LOCATION else location
            nets = networks.get((cidr["CollectionId"], location), ()) if scope is not None else ()
            target = behind.get(decode_name(alias.get("DNSName", "")), [])
            out[(name, rtype, scope)] = _record_set(name, rtype, scope, target, nets)
        else:
            plain.append(rr)  # weighted, or someone else's simple or other routing
    if plain and (name, rtype, None) not in out:
        out[(name, rtype, None)] = _record_set(name, rtype, None, plain, ())
    return out


def diff_records(name: str, current: Sequence[Raw], desired: Sequence[Raw]) -> list[Raw]:
    """The Route 53 changes from current to desired for one (name, type): deletes carry the record set as it is; the
    order keeps every alias's target in place (aliases go first, targets are written before aliases point at them)."""
    have = {_identity(rr): rr for rr in current}
    want = {_identity(rr): rr for rr in desired}
    name_deletes: list[Raw] = []
    helper_puts: list[Raw] = []
    helper_deletes: list[Raw] = []
    name_puts: list[Raw] = []
    for ident, rr in have.items():
        at_name = ident[0] == name
        new = want.get(ident)
        if new is None:
            (name_deletes if at_name else helper_deletes).append({"Action": "DELETE", "ResourceRecordSet": rr})
        elif _canon(rr) != _canon(new):
            puts = name_puts if at_name else helper_puts
            if _kind(rr) == _kind(new):
                puts.append({"Action": "UPSERT", "ResourceRecordSet": new})
            else:  # another routing policy: Route 53 takes that as a delete and a create, not an upsert
                (name_deletes if at_name else helper_puts).append({"Action": "DELETE", "ResourceRecordSet": rr})
                puts.append({"Action": "CREATE", "ResourceRecordSet": new})
    for ident, rr in want.items():
        if ident not in have:
            (name_puts if ident[0] == name else helper_puts).append({"Action": "CREATE", "ResourceRecordSet": rr})
    return name_deletes + helper_puts + helper_deletes + name_puts


def change_cost(change: Raw) -> tuple[int, int]:
    """(ResourceRecord elements, characters of Value elements) as Route 53 counts them: an UPSERT twice."""
    values = change["ResourceRecordSet"].get("ResourceRecords") or []
    times = 2 if change["Action"] == "UPSERT" else 1
    return times * len(values), times * sum(len(v["Value"]) for v in values)


def split_batches(groups: Sequence[Sequence[Raw]], max_changes: int = BATCH_CHANGES_MAX) -> list[list[Raw]]:
    """Pack the changes into ChangeBatches within Route 53's limits, each (name, type)'s changes whole in one batch
    (atomic); ValueError naming a group too large for any batch."""
    batches: list[list[Raw]] = []
    batch: list[Raw] = []
    used = [0, 0, 0]  # changes, records, characters
    limits = (max_changes, BATCH_RECORDS_MAX, BATCH_CHARS_MAX)
    for group in groups:
        costs = [change_cost(c) for c in group]
        need = (len(group), sum(c[0] for c in costs), sum(c[1] for c in costs))
        if any(n > limit for n, limit in zip(need, limits)):
            rr = group[0]["ResourceRecordSet"]
            raise ValueError(
                f"{rr['Name']} {rr['Type']}: {need[0]} changes ({need[1]} records, {need[2]} characters) do not fit "
                f"one ChangeBatch ({max_changes} changes, {BATCH_RECORDS_MAX} records, {BATCH_CHARS_MAX} characters)")
        if batch and any(u + n > limit for u, n, limit in zip(used, need, limits)):
            batches.append(batch)
            batch, used = [], [0, 0, 0]
        batch += group
        used = [u + n for u, n in zip(used, need)]
    if batch:
        batches.append(batch)
    return batches


def split_cidr_changes(changes: Sequence[Raw]) -> list[list[Raw]]:
    """ChangeCidrCollection requests of at most 1,000 CIDR blocks each, in order."""
    requests: list[list[Raw]] = []
    current: list[Raw] = []
    room = CIDR_BLOCKS_MAX
    for change in changes:
        blocks = list(change["CidrList"])
        while blocks:
            if room == 0:
                requests.append(current)
                current, room = [], CIDR_BLOCKS_MAX
            piece, blocks = blocks[:room], blocks[room:]
            current.append({**change, "CidrList": piece})
            room -= len(piece)
    if current:
        requests.append(current)
    return requests


# small pieces


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _value(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def _network(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


def _canonical(rs: RecordSet) -> RecordSet:
    answers = tuple(sorted(Answer(_value(a.value), a.weight, set_id_of(a)) for a in rs.answers))
    networks = tuple(sorted({_network(n) for n in rs.networks})) if rs.scope is not None else ()
    return RecordSet(rs.name, rs.rtype, rs.ttl, answers, rs.scope, networks)


def _cidr_set_id(scope: str | None) -> str:
    return "cidr" if scope is None else f"cidr/{scope}"


def _is_helper(rname: str, name: str) -> bool:
    first, _, rest = rname.partition(".")
    return rest == name and (first == _ALL_LABEL or first.startswith(_GROUP_LABEL))


def _record_set(name: str, rtype: str, scope: str | None, records: Sequence[Raw], networks: tuple[str, ...]
                ) -> RecordSet:
    answers = []
    for rr in records:
        for record in rr.get("ResourceRecords") or ():
            value = _value(record["Value"])
            answers.append(Answer(value, int(rr.get("Weight", 1)), rr.get("SetIdentifier") or value))
    ttl = min((int(rr["TTL"]) for rr in records if "TTL" in rr), default=0)
    return RecordSet(name, rtype, ttl, tuple(sorted(answers)), scope, networks)  # type: ignore[arg-type]


def _identity(rr: Raw) -> tuple[str, str | None]:
    return (decode_name(rr["Name"]), rr.get("SetIdentifier"))


def _kind(rr: Raw) -> tuple[str, ...]:
    return tuple(k for k in _ROUTING if k in rr)


def _canon(rr: Raw) -> tuple[Any, ...]:
    """What makes two record sets with one identity the same record set."""
    values = tuple(sorted(_value(v["Value"]) for v in rr.get("ResourceRecords") or ()))
    cidr, alias = rr.get("CidrRoutingConfig"), rr.get("AliasTarget")
    return (
        rr.get("Type"), rr.get("Weight"), rr.get("TTL"), values,
        (cidr.get("CollectionId"), cidr.get("LocationName")) if cidr else None,
        (str(alias.get("HostedZoneId", "")).rsplit("/", 1)[-1], decode_name(str(alias.get("DNSName", ""))),
         bool(alias.get("EvaluateTargetHealth"))) if alias else None,
        tuple(sorted((k, repr(v)) for k, v in rr.items() if k not in _KNOWN)),
    )


def _show(rs: RecordSet) -> str:
    answers = ", ".join(f"{a.value} w{a.weight} id {a.set_id}" for a in rs.answers) or "no answer"
    networks = f" for {', '.join(rs.networks)}" if rs.networks else ""
    return f"ttl {rs.ttl}{networks}: {answers}"
