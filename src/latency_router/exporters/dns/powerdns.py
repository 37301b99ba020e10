"""PowerDNS Authoritative through its HTTP API (4.7): weighted and per-group answers as LUA records, or plain RRsets.

How record sets become records, per name and type (A or AAAA):
- one scope-None set with one answer and no group: a plain A/AAAA RRset;
- otherwise one LUA record holding every set of that name and type. With no group it is `pickwrandom({{w,'ip'},...})`;
  with groups it is a program that tests the client's network (`netmask()`, which reads `bestwho`: the EDNS Client
  Subnet when the resolver sends one, needing `edns-subnet-processing=yes`) one rule per network, longest prefix
  first (the groups' order as the decider's lookup; a network given by two groups goes to the first by name), and
  falls back to the scope-None set. Each pool is a weighted pick: weight > 0 only, or all alike when every weight is 0.
  A name with groups but no scope-None set answers NODATA to clients of no group.
- Every RRset written carries a comment (account `latency-router`) with the sets as JSON: `current()` reads the sets
  from it and accepts them only when writing them again gives exactly the records held, so it returns what was applied.
  A LUA A/AAAA record it cannot read that way (written or changed by hand) reads as a scope-None set with no answer,
  which the plan then replaces; a plain RRset without the comment reads as its addresses with weight 1.
LUA records of other types at a name (a TXT, say) and other people's comments are kept. Messages and the repr show the
API URL without a user or password in it (aiohttp sends those as basic auth) and never the API key. The API accepts a
LUA program that fails (the name then answers SERVFAIL), so `verify()` asks the server over DNS. LUA records need
`enable-lua-records=yes`. PowerDNS runs the program for every query (its packet cache does not keep LUA answers), so a
pick is made per query; a program's cost grows with its networks (4.7.3 served 3,000 single-network groups).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import dns.asyncquery
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from latency_router.exporters.dns.errors import ProviderError, public_url, scrub_urls
from latency_router.exporters.dns.model import WEIGHT_MAX, Answer, Change, Key, RecordSet, RType
from latency_router.exporters.dns.plan import key_label
from latency_router.secrets import Secret

META_ACCOUNT = "latency-router"  # the comment account that marks this provider's comments
META_VERSION = "latency-router/1"
VERIFY_CONCURRENCY = 32  # DNS queries in flight at once in verify()
VERIFY_MAX_QUERIES = 5000  # queries at most per record set and client network in verify()
VERIFY_TIME_LIMIT_S = 30.0  # verify() stops sampling after this long
MISS_CHANCE = 1e-6  # verify() reports an unseen answer only when chance alone would miss it less often than this
_RTYPES: tuple[RType, ...] = ("A", "AAAA")
_VERSION = {"A": 4, "AAAA": 6}
_ERROR_CHARS = 300  # of PowerDNS's error text, at most this much goes into a message
_ADDRESS_PROBES = 4  # representative addresses tried per network to find one its group wins
_NETWORKS_CHECKED = 16  # per scoped set, verify() checks at most this many of its networks
_RETRYABLE_STATUS = frozenset({408, 429})
# addresses verify() tries, in order, as a client of no group (ECS) when a name has groups
_NO_GROUP_CLIENTS = ("240.0.0.1", "100.64.0.1", "198.18.0.1", "192.0.2.254", "100::1", "2001:db8:ffff:ffff::1")

# any URL in a message loses its user:password@ and its query string or fragment (either may hold a key)

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network
_Rrsets = dict[str, dict[str, Any]]  # type -> the API's rrset object, for one name


class PowerDNSProvider:
    """Writes record sets to a PowerDNS Authoritative zone through its HTTP API and checks them over DNS."""

    def __init__(
        self,
        api_url: str,
        api_key: Secret,
        zone: str,
        *,
        server_id: str = "localhost",
        dns_server: tuple[str, int] | None = None,
        name: str = "powerdns",
        timeout_s: float = 5.0,
    ) -> None:
        try:
            parts = urlsplit(api_url) if isinstance(api_url, str) else None
            if parts is not None:
                parts.port  # noqa: B018 - raises ValueError for a port that is not a number 0-65535
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            shown = public_url(api_url) if isinstance(api_url, str) else api_url
            raise ValueError(f"api_url: expected http(s)://HOST[:PORT] of the PowerDNS webserver, got {shown!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"api_url: expected no query string or fragment (the key goes in api_key), got "
                             f"{public_url(api_url)!r}")
        if not isinstance(api_key, Secret):
            raise ValueError("api_key: expected a Secret (write 'env:NAME' or 'file:PATH')")
        if not isinstance(zone, str) or not zone.strip("."):
            raise ValueError(f"zone: expected a zone name such as 'example.com.', got {zone!r}")
        if not isinstance(server_id, str) or not server_id:
            raise ValueError(f"server_id: expected a server id such as 'localhost', got {server_id!r}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"timeout_s: expected a number of seconds > 0, got {timeout_s!r}")
        if dns_server is None:
            dns_server = (parts.hostname, 53)
        host, port = dns_server
        port_ok = isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536
        if not isinstance(host, str) or not host or not port_ok:
            raise ValueError(f"dns_server: expected (host, port 1-65535), got {dns_server!r}")
        base = api_url.rstrip("/")
        self._api = base if base.endswith("/api/v1") else base + "/api/v1"
        self._shown_api = public_url(self._api)  # what messages and the repr show
        self._key = api_key
        # what _scrub() blanks out, longest first: the key, and the URL's password as written and decoded
        hidden = {api_key.reveal(), parts.password or "", unquote(parts.password or "")} - {""}
        self._hidden = tuple(sorted(hidden, key=len, reverse=True))
        self.zone = zone.lower() if zone.endswith(".") else zone.lower() + "."
        self._zone_path = f"/servers/{quote(server_id, safe='')}/zones/{quote(self.zone, safe='')}"
        self._dns = (host, port)
        self.name = name
        self._timeout_s = float(timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"PowerDNSProvider(name={self.name!r}, api={self._shown_api!r}, zone={self.zone!r}, dns={self._dns!r})"

    async def current(self, keys: Sequence[Key]) -> Mapping[Key, RecordSet]:
        """The record sets the zone holds for these keys, read from the API (one GET of the zone)."""
        wanted = set(keys)
        if not wanted:
            return {}
        held = _by_name(await self._zone_rrsets())
        out: dict[Key, RecordSet] = {}
        for name in sorted({k[0] for k in wanted}):
            for key, record_set in decode_name(name, held.get(name, {})).items():
                if key in wanted:
                    out[key] = record_set
        return out

    async def list_keys(self, names: Sequence[str]) -> list[Key]:
        """Every key of an A or AAAA record set the zone holds at these names (FQDN, lower case, ending in '.'), as
        current() reads them: a plain A/AAAA RRset and each set of a LUA A/AAAA record (its group's scope); records of
        other types, LUA ones included, are left out. Costs one GET of the zone, whatever the number of names."""
        wanted = _check_names(self.name, names)
        if not wanted:
            return []
        held = _by_name(await self._zone_rrsets())
        return sorted((key for name in wanted for key in decode_name(name, held.get(name, {}))), key=_key_order)

    async def apply(self, changes: Sequence[Change]) -> None:
        """Write the changes in one PATCH (PowerDNS applies it in one transaction): all, or ProviderError."""
        for change in changes:
            if change.new is not None:
                problem = self._problem(change.new)
                if problem:
                    raise ProviderError(self.name, f"{key_label(change.key)}: {problem}", retryable=False)
        names = sorted({c.key[0] for c in changes})
        if not names:
            return
        held = _by_name(await self._zone_rrsets())
        patch: list[dict[str, Any]] = []
        for name in names:
            existing = held.get(name, {})
            # what the name holds now, less the sets that could not be read (those get replaced)
            sets = {k: rs for k, rs in decode_name(name, existing).items() if rs.answers}
            for change in changes:
                if change.key[0] != name:
                    continue
                if change.new is None:
                    sets.pop(change.key, None)
                else:
                    sets[change.key] = change.new
            patch += encode_name(name, sets.values(), existing)
        if patch:
            await self._request("PATCH", self._zone_path, {"rrsets": patch})

    async def verify(self, desired: Sequence[RecordSet]) -> list[str]:
        """Ask the DNS server for every set (with ECS per group network); one line per difference, [] when all match."""
        slots = asyncio.Semaphore(VERIFY_CONCURRENCY)
        deadline = time.perf_counter() + VERIFY_TIME_LIMIT_S
        groups: dict[tuple[str, str], list[RecordSet]] = {}
        for rs in desired:
            if rs.scope is not None:
                groups.setdefault((rs.name, rs.rtype), []).append(rs)
        checks = [self._verify_set(rs, groups.get((rs.name, rs.rtype), []), slots, deadline) for rs in desired]
        lines: list[str] = []
        for found in await asyncio.gather(*checks):
            lines += found
        return lines

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- HTTP API ---

    def _problem(self, rs: RecordSet) -> str:
        """Why this set cannot be written, or ''."""
        if rs.name != rs.name.lower() or not rs.name.endswith("."):
            return "name: expected lower case ending in '.'"
        if rs.name != self.zone and not rs.name.endswith("." + self.zone):
            return f"name: outside the zone {self.zone}"
        if rs.rtype not in _RTYPES:
            return f"rtype: expected A or AAAA, got {rs.rtype!r}"
        if isinstance(rs.ttl, bool) or not isinstance(rs.ttl, int) or not 0 <= rs.ttl <= 2**31 - 1:
            return f"ttl: expected a whole number of seconds >= 0, got {rs.ttl!r}"
        if not rs.answers:
            return "answers: none (PowerDNS cannot hold an empty record set)"
        for a in rs.answers:
            if ipaddress.ip_address(a.value).version != _VERSION[rs.rtype]:
                return f"answers: {a.value} is not an {rs.rtype} address"
        if rs.scope is not None and not rs.networks:
            return "networks: none (PowerDNS tells a group's clients apart by their networks)"
        for net in rs.networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                return f"networks: {net!r} is not a network (CIDR)"
        return ""

    async def _zone_rrsets(self) -> list[dict[str, Any]]:
        zone = await self._request("GET", self._zone_path)
        rrsets = zone.get("rrsets") if isinstance(zone, dict) else None
        if not isinstance(rrsets, list):
            raise ProviderError(self.name, f"GET {self._zone_path}: the answer holds no rrsets list")
        return rrsets

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        """One API call; its JSON answer (None for 204). Failures raise ProviderError without a trace of the key."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        headers = {"X-API-Key": self._key.reveal(), "Accept": "application/json"}
        failure, retryable = "", True
        try:
            async with self._session.request(method, self._api + path, json=body, headers=headers) as resp:
                status, text = resp.status, await resp.text()
        except asyncio.TimeoutError:
            failure = f"no answer within {self._timeout_s:g}s"
        except aiohttp.ClientError as exc:  # the message is built here, raised below: no exception chain to the request
            failure = f"{type(exc).__name__}: {exc}"
        if failure:
            raise ProviderError(self.name, self._scrub(f"{method} {self._shown_api}{path}: {failure}"),
                                retryable=retryable)
        if status >= 400:
            retryable = status >= 500 or status in _RETRYABLE_STATUS
            what = _error_text(text)
            if status == 401:
                what = f"{what} (check the API key)"
            elif status == 404 and method == "GET" and path == self._zone_path:
                what = f"{what} (no zone {self.zone} on this server)"
            raise ProviderError(self.name, self._scrub(f"{method} {path}: HTTP {status}: {what}"), retryable=retryable)
        if status == 204 or not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise ProviderError(self.name, f"{method} {path}: HTTP {status}: the answer is not JSON") from None

    def _scrub(self, text: str) -> str:
        """The text without the key, the URL's password, or any URL's user, password, query string or fragment."""
        text = scrub_urls(text)
        for hidden in self._hidden:
            text = text.replace(hidden, "***")
        return text

    # --- DNS checks ---

    async def _verify_set(
        self, rs: RecordSet, groups: Sequence[RecordSet], slots: asyncio.Semaphore, deadline: float
    ) -> list[str]:
        label = key_label(rs.key)
        pool = _pool(rs)
        if not pool:
            return [f"{label}: no answer to check (the set is empty)"]
        rules = _rules(groups)
        if rs.scope is None:
            if not rules:
                return await self._sample(label, rs, pool, None, slots, deadline)
            client = next((c for c in _NO_GROUP_CLIENTS if _match(ipaddress.ip_address(c), rules) is None), None)
            if client is None:
                return [f"{label}: not checked: every test address is in some group's networks"]
            return await self._sample(label, rs, pool, client, slots, deadline)
        clients = []
        for net in rs.networks[:_NETWORKS_CHECKED]:
            client = _client_in(ipaddress.ip_network(net, strict=False), rs.scope, rules)
            if client is not None:
                clients.append(client)
        if not clients:
            return [f"{label}: not checked: other groups' more specific networks cover all of {', '.join(rs.networks)}"]
        lines = await self._sample(label, rs, pool, clients[0], slots, deadline)
        if lines:
            return lines
        for client in clients[1:]:  # the other networks: one query each, its answer must come from the group's pool
            lines = await self._sample(label, rs, pool, client, slots, deadline, budget=1)
            if lines:
                return lines
        return []

    async def _sample(
        self,
        label: str,
        rs: RecordSet,
        pool: Mapping[str, int],
        client: str | None,
        slots: asyncio.Semaphore,
        deadline: float,
        budget: int | None = None,
    ) -> list[str]:
        """Ask until every answer of the pool was seen (or the budget or time is spent); the differences found."""
        total = sum(pool.values())
        rarest = min(pool.values()) / total
        if budget is None:
            needed = 1 if rarest >= 1.0 else math.ceil(math.log(MISS_CHANCE) / math.log(1 - rarest))
            budget = min(VERIFY_MAX_QUERIES, needed)
        where = f" (client {client})" if client else ""
        seen: dict[str, int] = {}
        asked = 0
        while asked < budget and len(seen) < len(pool) and time.perf_counter() < deadline:
            # 1, 1, 2, 4... queries at once: a dead server costs one timeout, a single answer one query
            batch = min(VERIFY_CONCURRENCY, budget - asked, max(1, asked))
            results = await asyncio.gather(*(self._ask(rs.name, rs.rtype, client, slots) for _ in range(batch)))
            asked += batch
            for problem, values in results:
                if problem:
                    return [f"{label}{where}: {problem}"]
                if len(values) != 1:
                    got = ", ".join(values) or "no address (NODATA)"
                    return [f"{label}{where}: got {got}; want one of {_show(pool)} per query"]
                value = values[0]
                if value not in pool:
                    hint = ""
                    if rs.scope is not None:
                        hint = " (is edns-subnet-processing=yes set on the server?)"
                    return [f"{label}{where}: got {value}; want one of {_show(pool)}{hint}"]
                seen[value] = seen.get(value, 0) + 1
        if asked == 0:
            return [f"{label}{where}: not checked: the verify time limit ({VERIFY_TIME_LIMIT_S:g}s) was spent"]
        missing = [v for v in pool if v not in seen and (1 - pool[v] / total) ** asked < MISS_CHANCE]
        if missing:
            return [f"{label}{where}: {', '.join(missing)} never served in {asked} queries; want {_show(pool)}"]
        return []

    async def _ask(self, name: str, rtype: str, client: str | None, slots: asyncio.Semaphore) -> tuple[str, list[str]]:
        """One query: ('', addresses) or (what went wrong, [])."""
        options = []
        if client is not None:
            address = ipaddress.ip_address(client)
            options.append(dns.edns.ECSOption(client, address.max_prefixlen))
        query = dns.message.make_query(name, rtype, use_edns=0, options=options)
        host, port = self._dns
        try:
            async with slots:
                response = await dns.asyncquery.udp(query, host, port=port, timeout=self._timeout_s)
                if response.flags & dns.flags.TC:
                    response = await dns.asyncquery.tcp(query, host, port=port, timeout=self._timeout_s)
        except dns.exception.Timeout:
            return f"no answer from the DNS server {host}:{port} within {self._timeout_s:g}s", []
        except (OSError, dns.exception.DNSException) as exc:
            return f"query to {host}:{port} failed: {type(exc).__name__}: {exc}", []
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            hint = " (a LUA record that fails? enable-lua-records set?)" if rcode == dns.rcode.SERVFAIL else ""
            return f"{dns.rcode.to_text(rcode)}{hint}", []
        rdtype = dns.rdatatype.from_text(rtype)
        values = [
            str(ipaddress.ip_address(rd.address)) for rrset in response.answer if rrset.rdtype == rdtype for rd in rrset
        ]
        return "", values


# --- translation between record sets and PowerDNS rrsets (pure functions) ---


def lua_program(sets: Sequence[RecordSet]) -> str:
    """The LUA record body serving these sets of one name and type: a pickwrandom expression, or a ';' program."""
    default = next((rs for rs in sets if rs.scope is None), None)
    rules = _rules([rs for rs in sets if rs.scope is not None])
    if not rules:
        return _pick(default) if default is not None else "{}"
    by_scope = {rs.scope: rs for rs in sets if rs.scope is not None}
    parts: list[str] = []
    i = 0
    while i < len(rules):  # consecutive networks of one group and prefix length share one netmask() call
        net, scope = rules[i]
        nets = [net]
        i += 1
        while i < len(rules) and rules[i][1] == scope and rules[i][0].prefixlen == net.prefixlen:
            nets.append(rules[i][0])
            i += 1
        listed = ",".join(f"'{n.with_prefixlen}'" for n in nets)
        parts.append(f"if netmask({{{listed}}}) then return {_pick(by_scope[scope])} end")
    parts.append(f"return {_pick(default)}" if default is not None else "return {}")
    return ";" + " ".join(parts)


def encode_name(
    name: str, sets: Iterable[RecordSet], existing: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The PATCH rrsets that make `name` serve exactly `sets` (every set of it), given what it holds (type -> rrset)."""
    lua = existing.get("LUA", {})
    kept = [r for r in lua.get("records", []) if _lua_type(r.get("content", "")) not in _RTYPES]
    lua_records = [{"content": r["content"], "disabled": bool(r.get("disabled"))} for r in kept]
    lua_comments = _foreign_comments(lua)
    lua_ttls: list[int] = []
    out: list[dict[str, Any]] = []
    for rtype in _RTYPES:
        mine = sorted((rs for rs in sets if rs.rtype == rtype), key=_scope_order)
        if not mine:
            if rtype in existing:
                out.append({"name": name, "type": rtype, "changetype": "DELETE"})
            continue
        meta = {"content": _meta_text(rtype, mine), "account": META_ACCOUNT}
        if _is_plain(mine):
            rs = mine[0]
            comments = _foreign_comments(existing.get(rtype, {})) + [meta]
            records = [{"content": _addr(rs.answers[0].value), "disabled": False}]
            out.append({"name": name, "type": rtype, "ttl": rs.ttl, "changetype": "REPLACE", "records": records,
                        "comments": comments})
            continue
        if rtype in existing:
            out.append({"name": name, "type": rtype, "changetype": "DELETE"})
        lua_records.append({"content": _lua_record(rtype, mine), "disabled": False})
        lua_comments.append(meta)
        lua_ttls += [rs.ttl for rs in mine]
    if lua_ttls or kept:
        ttl = min(lua_ttls) if lua_ttls else int(lua.get("ttl", 0))
        out.append({"name": name, "type": "LUA", "ttl": ttl, "changetype": "REPLACE", "records": lua_records,
                    "comments": lua_comments})
    elif lua:
        out.append({"name": name, "type": "LUA", "changetype": "DELETE"})
    return out


def decode_name(name: str, existing: Mapping[str, Mapping[str, Any]]) -> dict[Key, RecordSet]:
    """The record sets `name` holds, from its rrsets as the API lists them (type -> rrset)."""
    out: dict[Key, RecordSet] = {}
    for rtype in _RTYPES:
        rrset = existing.get(rtype)
        if not rrset:
            continue
        contents = sorted(r["content"] for r in rrset.get("records", []) if not r.get("disabled"))
        if not contents:
            continue
        ttl = int(rrset.get("ttl", 0))
        sets = _meta_sets(name, rtype, rrset)
        if sets is not None and _is_plain(sets) and [_addr(sets[0].answers[0].value)] == contents:
            rs = sets[0]
            out[(name, rtype, None)] = rs if rs.ttl == ttl else RecordSet(name, rtype, ttl, rs.answers, None, rs.networks)
        else:
            answers = tuple(Answer(_addr(c)) for c in contents if _is_address(c, rtype))
            out[(name, rtype, None)] = RecordSet(name, rtype, ttl, answers)
    lua = existing.get("LUA")
    if lua:
        ttl = int(lua.get("ttl", 0))
        found: list[RecordSet] = []
        for record in lua.get("records", []):
            content = record.get("content", "")
            rtype = _lua_type(content)
            if rtype not in _RTYPES or record.get("disabled"):
                continue
            sets = _meta_sets(name, rtype, lua)
            if sets is not None and not _is_plain(sets) and _lua_record(rtype, sets) == content:
                found += sets
            else:  # not ours, or changed by hand: no answer we can vouch for
                found.append(RecordSet(name, rtype, ttl, ()))
        ours = [rs.ttl for rs in found if rs.answers]
        for rs in found:
            if ours and ttl != min(ours):  # the TTL was changed by hand: report what is served
                rs = RecordSet(rs.name, rs.rtype, ttl, rs.answers, rs.scope, rs.networks)
            out[rs.key] = rs
    return out


def _check_names(provider: str, names: Sequence[str]) -> list[str]:
    """The names, each once, in order; ProviderError naming the first that is not a lower-case FQDN ending in '.'."""
    if isinstance(names, str):
        raise ProviderError(provider, f"names: expected a list of names, got the string {names!r}", retryable=False)
    for i, name in enumerate(names):
        if not isinstance(name, str) or len(name) < 2 or not name.endswith(".") or name != name.lower():
            raise ProviderError(provider, f"names[{i}]: expected a lower-case domain name ending in '.', got {name!r}",
                                retryable=False)
    return list(dict.fromkeys(names))


def _key_order(key: Key) -> tuple[str, str, bool, str]:
    return (key[0], key[1], key[2] is not None, key[2] or "")


def _by_name(rrsets: Iterable[Mapping[str, Any]]) -> dict[str, _Rrsets]:
    out: dict[str, _Rrsets] = {}
    for rrset in rrsets:
        name = str(rrset.get("name", "")).lower()
        out.setdefault(name, {})[str(rrset.get("type", ""))] = dict(rrset)
    return out


def _is_plain(sets: Sequence[RecordSet]) -> bool:
    return len(sets) == 1 and sets[0].scope is None and len(sets[0].answers) == 1


def _scope_order(rs: RecordSet) -> tuple[int, str]:
    return (0, "") if rs.scope is None else (1, rs.scope)


def _addr(value: str) -> str:
    return str(ipaddress.ip_address(value))


def _is_address(value: str, rtype: str) -> bool:
    try:
        return ipaddress.ip_address(value).version == _VERSION[rtype]
    except ValueError:
        return False


def _pool(rs: RecordSet) -> dict[str, int]:
    """address -> weight of what the set serves: weight > 0 only, or every answer at 1 when all weights are 0."""
    pool: dict[str, int] = {}
    for a in rs.answers:
        if a.weight > 0:
            pool[_addr(a.value)] = pool.get(_addr(a.value), 0) + a.weight
    if not pool:
        pool = {_addr(a.value): 1 for a in rs.answers}
    return pool


def _pick(rs: RecordSet) -> str:
    entries = ",".join(f"{{{w},'{v}'}}" for v, w in _pool(rs).items())
    return f"pickwrandom({{{entries}}})"


def _rules(groups: Sequence[RecordSet]) -> list[tuple[_Net, str]]:
    """(network, group) in the order the program tests them: longest prefix first, then group name, then network."""
    rules: list[tuple[_Net, str]] = []
    seen: set[tuple[_Net, str]] = set()
    for rs in groups:
        assert rs.scope is not None
        for text in rs.networks:
            net = ipaddress.ip_network(text, strict=False)
            if (net, rs.scope) not in seen:
                seen.add((net, rs.scope))
                rules.append((net, rs.scope))
    rules.sort(key=lambda r: (-r[0].prefixlen, r[1], r[0].version, r[0].network_address.packed))
    return rules


def _match(address: _IP, rules: Sequence[tuple[_Net, str]]) -> str | None:
    """The group the program hands this client to (first rule holding it), None for none."""
    for net, scope in rules:
        if address.version == net.version and address in net:
            return scope
    return None


def _client_in(net: _Net, scope: str, rules: Sequence[tuple[_Net, str]]) -> str | None:
    """An address of `net` that the program hands to `scope`, or None when more specific networks shadow them all."""
    first, last = int(net.network_address), int(net.broadcast_address)
    for number in dict.fromkeys([first, last, min(first + 1, last), (first + last) // 2][:_ADDRESS_PROBES]):
        address = ipaddress.ip_address(number) if net.version == 4 else ipaddress.IPv6Address(number)
        if _match(address, rules) == scope:
            return str(address)
    return None


def _lua_record(rtype: str, sets: Sequence[RecordSet]) -> str:
    return f'{rtype} "{lua_program(sets)}"'


def _lua_type(content: str) -> str:
    return content.split(" ", 1)[0].upper()


def _meta_text(rtype: str, sets: Sequence[RecordSet]) -> str:
    data = [
        {"scope": rs.scope, "ttl": rs.ttl, "networks": list(rs.networks),
         "answers": [[a.value, a.weight, a.set_id] for a in rs.answers]}
        for rs in sets
    ]
    return f"{META_VERSION} {rtype} {json.dumps(data, separators=(',', ':'))}"


def _meta_sets(name: str, rtype: str, rrset: Mapping[str, Any]) -> list[RecordSet] | None:
    """The sets this provider's comment on the rrset says it wrote for `rtype`, or None (no comment, or unreadable)."""
    prefix = f"{META_VERSION} {rtype} "
    for comment in rrset.get("comments", []) or []:
        text = comment.get("content", "")
        if comment.get("account") != META_ACCOUNT or not isinstance(text, str) or not text.startswith(prefix):
            continue
        try:
            sets = []
            for item in json.loads(text[len(prefix):]):
                scope, ttl, networks = item["scope"], item["ttl"], item["networks"]
                if not (scope is None or isinstance(scope, str)) or not isinstance(ttl, int):
                    return None
                if not isinstance(networks, list) or not all(isinstance(n, str) for n in networks):
                    return None
                answers = []
                for value, weight, set_id in item["answers"]:
                    if not isinstance(value, str) or not isinstance(weight, int) or not isinstance(set_id, str):
                        return None
                    if not 0 <= weight <= WEIGHT_MAX:
                        return None
                    answers.append(Answer(value, weight, set_id))
                if not answers or not all(_is_address(a.value, rtype) for a in answers):
                    return None
                for net in networks:
                    ipaddress.ip_network(net, strict=False)
                if scope is not None and not networks:
                    return None
                rs = RecordSet(name, rtype, ttl, tuple(answers), scope, tuple(networks))  # type: ignore[arg-type]
                sets.append(rs)
        except (ValueError, TypeError, KeyError):
            return None
        scopes = [rs.scope for rs in sets]
        return sets if sets and len(set(scopes)) == len(scopes) else None
    return None


def _foreign_comments(rrset: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {k: c[k] for k in ("content", "account", "modified_at") if k in c}
        for c in rrset.get("comments", []) or []
        if c.get("account") != META_ACCOUNT
    ]


def _error_text(text: str) -> str:
    """PowerDNS's error message: the "error" of a JSON body, else the body, cut short."""
    try:
        body = json.loads(text)
        message = body.get("error") if isinstance(body, dict) else None
    except ValueError:
        message = None
    shown = (message if isinstance(message, str) else text).strip() or "no error text"
    return shown if len(shown) <= _ERROR_CHARS else shown[:_ERROR_CHARS] + "..."


def _show(pool: Mapping[str, int]) -> str:
    return ", ".join(f"{v} (w{w})" for v, w in pool.items())
