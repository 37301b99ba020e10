"""PowerDNS Authoritative through its HTTP API (4.7): weighted and per-group answers as LUA records, or plain RRsets.

How record sets become records, per name and type (A or AAAA):
- one scope-None set with one answer and no group: a plain A/AAAA RRset;
- otherwise one LUA record holding every set of that name and type. With no group it is `pickwrandom({{w,'ip'},...})`;
  with groups it is a program that tests the client's network (`netmask()`, which reads `bestwho`: the EDNS Client
  Subnet when the resolver sends one, needing `edns-subnet-processing=yes`) one rule per network, longest prefix
  first (the groups' order as the decider's lookup; a network given by two groups goes to the first by name), and
  falls back to the scope-None set. Each pool is a weighted pick: weight > 0 only, or all alike when every weight is 0.
  A name with groups but no scope-None set answers NODATA to clients of no group.
- Every literal put in a program is built here, whatever was checked upstream: an address as `ip_address().compressed`
  with no IPv6 zone id ('%'), a network as address/prefix, a weight as a whole number 0-255, each matched against a
  pattern of the characters it may hold. Anything else is refused (ProviderError, not retried), never escaped.
- Every RRset written carries a comment (account `latency-router`) with the sets as JSON: `current()` reads the sets
  from it and accepts them only when writing them again gives exactly the records held, so it returns what was applied.
  A plain RRset without the comment reads as its addresses with weight 1. A LUA A/AAAA record it cannot read that way
  (written or changed by hand) is foreign: it reads as a scope-None set of the addresses quoted in it (weight 1 each;
  0.0.0.0 or :: when it quotes none), each with the set id FOREIGN_SET_ID, so the plan's no-answer and weight-shift
  rules apply to it. `apply()` replaces it only through a change of that scope-None key (until then its records stay
  as they are, whatever else is written at the name), and refuses to write other sets of its type beside it.
LUA records of other types at a name (a TXT, say), disabled LUA records and other people's comments are kept. Messages
and the repr show the API URL without a user or password in it (aiohttp sends those as basic auth) and never the API
key. LUA records need `enable-lua-records=yes`; the API accepts a LUA program that fails (the name then answers
SERVFAIL). So `verify()` reads the zone back through the API (the sets, weights included, and the program text they
give) and asks the DNS server a few queries per set (VERIFY_MAX_QUERIES at most per call): each set answers one address
from its pool, and each group's test address (ECS) gets its group's set. A set no test address reaches (every address is
in some group, or a network given to an earlier group too) is logged, not reported. Weight shares are the LUA
function's job (the tests measure them over 10,000 queries). PowerDNS runs the program for every query (its packet
cache does not keep LUA answers), so a pick is made per query; a program's cost grows with its networks (4.7.3 served
3,000 single-network groups).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
from dataclasses import dataclass
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

log = logging.getLogger(__name__)

META_ACCOUNT = "latency-router"  # the comment account that marks this provider's comments
META_VERSION = "latency-router/1"
FOREIGN_SET_ID = "powerdns:foreign-lua"  # the set id of the answers read from a LUA record latency-router did not write
VERIFY_CONCURRENCY = 8  # DNS queries in flight at once in verify(): few, so that few start in one loop iteration
VERIFY_MAX_QUERIES = 400  # DNS queries at most per verify() call (the API read checks every set)
_FIRST_CLIENT_QUERIES = 2  # verify() asks a set's first test address this many times, each further network once
_RTYPES: tuple[RType, ...] = ("A", "AAAA")
_VERSION = {"A": 4, "AAAA": 6}
_PLACEHOLDER = {"A": "0.0.0.0", "AAAA": "::"}  # the answer of a foreign LUA record that quotes no address
_ERROR_CHARS = 300  # of PowerDNS's error text, at most this much goes into a message
_SHOWN_CHARS = 80  # of a refused value, at most this much goes into a message
_ADDRESS_PROBES = 4  # representative addresses tried per network to find one its group wins
_NETWORKS_CHECKED = 16  # per scoped set, verify() checks at most this many of its networks
_UNREACHABLE_SAID_MAX = 10_000  # sets remembered as already logged unreachable (then forgotten, and logged again)
_RETRYABLE_STATUS = frozenset({408, 429})
# addresses verify() tries, in order, as a client of no group (ECS) when a name has groups
_NO_GROUP_CLIENTS = ("240.0.0.1", "100.64.0.1", "198.18.0.1", "192.0.2.254", "100::1", "2001:db8:ffff:ffff::1")
# what a literal may hold once built, before it goes between quotes in a LUA program
_ADDRESS_TEXT = re.compile(r"[0-9a-f.:]+")
_CIDR_TEXT = re.compile(r"[0-9a-f.:]+/[0-9]+")
_QUOTED_ADDRESS = re.compile(r"""['"]([0-9A-Fa-f.:]+)['"]""")  # an address between quotes in someone's LUA program

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network
_Rrsets = dict[str, dict[str, Any]]  # type -> the API's rrset object, for one name
_Lookup = list[tuple[int, int, dict[_Net, str]]]  # (version, prefix length, network -> group), longest first


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
        self._unreachable_said: set[tuple[Key, str]] = set()  # sets verify() logged as out of every test client's reach

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
            patch += self._patch_name(name, held.get(name, {}), [c for c in changes if c.key[0] == name])
        if patch:
            await self._request("PATCH", self._zone_path, {"rrsets": patch})

    async def verify(self, desired: Sequence[RecordSet]) -> list[str]:
        """Read the sets back through the API, then ask the DNS server a few queries per set (with ECS per group
        network); one line per set that differs, [] when all match. ProviderError when the API cannot be read."""
        held = _by_name(await self._zone_rrsets())
        decoded = {name: decode_name(name, held.get(name, {})) for name in {rs.name for rs in desired}}
        lookups: dict[tuple[str, str], _Lookup] = {}
        lines: dict[int, str] = {}
        checks: list[_Check] = []
        for i, rs in enumerate(desired):
            label = key_label(rs.key)
            if _is_foreign(rs):  # the plan kept someone's record: nothing of ours to check
                log.debug("dns exporter %s: %s: not checked: a LUA record latency-router did not write", self.name,
                          label)
                continue
            try:
                pool, networks = _pool(rs), _networks(rs)
            except ValueError as exc:
                lines[i] = f"{label}: not checked: {exc}"
                continue
            if not pool:
                lines[i] = f"{label}: no answer to check (the set is empty)"
                continue
            here = decoded[rs.name]
            difference = _held_difference(rs, pool, networks, here.get(rs.key))
            if difference:
                lines[i] = f"{label}: {difference}"
                continue
            lookup = lookups.get((rs.name, rs.rtype))
            if lookup is None:
                groups = [s for k, s in here.items() if k[1] == rs.rtype and k[2] is not None and not _is_foreign(s)]
                lookup = lookups[(rs.name, rs.rtype)] = _lookup(_rules(groups))
            clients, why_not = _test_clients(rs, lookup)
            if clients:
                checks.append(_Check(i, rs, pool, clients))
            else:
                self._say_unreachable(rs, why_not)
        if checks:
            for i, line in await self._ask_checks(checks):
                lines[i] = line
        return [lines[i] for i in sorted(lines)]

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _patch_name(self, name: str, existing: Mapping[str, Mapping[str, Any]], changes: Sequence[Change]
                    ) -> list[dict[str, Any]]:
        """The PATCH rrsets for one name: what it holds, with these changes made; ProviderError if it cannot be."""
        decoded = decode_name(name, existing)
        foreign = {k[1] for k, rs in decoded.items() if _is_foreign(rs)}
        sets = {k: rs for k, rs in decoded.items() if not _is_foreign(rs)}
        replaced: set[str] = set()
        for change in changes:
            if change.new is None:
                sets.pop(change.key, None)
            else:
                sets[change.key] = change.new
            if change.key[2] is None:
                replaced.add(change.key[1])
        keep = foreign - replaced
        for rtype in sorted(keep):
            if any(rs.rtype == rtype for rs in sets.values()):
                raise ProviderError(
                    self.name,
                    f"{name} {rtype}: holds a LUA {rtype} record latency-router did not write (or one changed by "
                    f"hand); only a change of {key_label((name, rtype, None))} itself replaces it, and no other set "
                    f"of that type is written beside it",
                    retryable=False,
                )
        try:
            return encode_name(name, sets.values(), existing, keep_foreign=keep)
        except ValueError as exc:  # a literal refused while encoding: _problem() should have caught it
            raise ProviderError(self.name, f"{name}: {exc}", retryable=False) from None

    # --- HTTP API ---

    def _problem(self, rs: RecordSet) -> str:
        """Why this set cannot be written, or ''."""
        if not isinstance(rs.name, str) or rs.name != rs.name.lower() or not rs.name.endswith("."):
            return "name: expected lower case ending in '.'"
        if rs.name != self.zone and not rs.name.endswith("." + self.zone):
            return f"name: outside the zone {self.zone}"
        if rs.rtype not in _RTYPES:
            return f"rtype: expected A or AAAA, got {rs.rtype!r}"
        if isinstance(rs.ttl, bool) or not isinstance(rs.ttl, int) or not 0 <= rs.ttl <= 2**31 - 1:
            return f"ttl: expected a whole number of seconds >= 0, got {rs.ttl!r}"
        if rs.scope is not None and not isinstance(rs.scope, str):
            return f"scope: expected a group name or None, got {_shown(rs.scope)}"
        if not rs.answers:
            return "answers: none (PowerDNS cannot hold an empty record set)"
        for a in rs.answers:
            try:
                value = lua_address(a.value)
                lua_weight(a.weight)
            except ValueError as exc:
                return f"answers: {exc}"
            if ipaddress.ip_address(value).version != _VERSION[rs.rtype]:
                return f"answers: {value} is not an {rs.rtype} address"
            if a.set_id == FOREIGN_SET_ID:
                return f"answers: {value} has the set id {FOREIGN_SET_ID!r} of a record latency-router did not write"
        if rs.scope is not None and not rs.networks:
            return "networks: none (PowerDNS tells a group's clients apart by their networks)"
        for net in rs.networks:
            try:
                lua_network(net)
            except ValueError as exc:
                return f"networks: {exc}"
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

    async def _ask_checks(self, checks: Sequence[_Check]) -> list[tuple[int, str]]:
        """Ask each check's queries, every set's first before any set's second, VERIFY_MAX_QUERIES at most in all;
        (index in desired, its first difference) for each set that differs."""
        plans = [[c.clients[0]] * min(_FIRST_CLIENT_QUERIES, len(c.pool)) + c.clients[1:] for c in checks]
        queue: list[tuple[int, str | None]] = []  # (check number, client)
        for position in range(max(len(p) for p in plans)):
            queue += [(n, p[position]) for n, p in enumerate(plans) if position < len(p)]
        if len(queue) > VERIFY_MAX_QUERIES:
            unasked = {n for n, _ in queue[VERIFY_MAX_QUERIES:]} - {n for n, _ in queue[:VERIFY_MAX_QUERIES]}
            log.debug("dns exporter %s: %d queries asked of %d; %d sets checked through the API only",
                      self.name, VERIFY_MAX_QUERIES, len(queue), len(unasked))
            queue = queue[:VERIFY_MAX_QUERIES]
        results: list[tuple[str, list[str]]] = [("", [])] * len(queue)
        down: list[str] = []  # the first sign that the DNS server is not there: later queries are not sent
        todo = iter(range(len(queue)))

        async def worker() -> None:  # a few workers, not a task per query: few queries start in one loop iteration
            for j in todo:
                n, client = queue[j]
                results[j] = await self._ask(checks[n].rs.name, checks[n].rs.rtype, client, down)

        await asyncio.gather(*(worker() for _ in range(min(VERIFY_CONCURRENCY, len(queue)))))
        found: dict[int, str] = {}
        for (n, client), (problem, values) in zip(queue, results):
            if n not in found:
                difference = _answer_difference(checks[n], client, problem, values)
                if difference:
                    found[n] = difference
        return [(checks[n].index, line) for n, line in found.items()]

    async def _ask(self, name: str, rtype: str, client: str | None, down: list[str]) -> tuple[str, list[str]]:
        """One query: ('', addresses) or (what went wrong, []). A timeout or a socket error goes into `down`, and
        nothing is asked once it holds one."""
        if down:
            return down[0], []
        options = []
        if client is not None:
            address = ipaddress.ip_address(client)
            options.append(dns.edns.ECSOption(client, address.max_prefixlen))
        query = dns.message.make_query(name, rtype, use_edns=0, options=options)
        host, port = self._dns
        try:
            response = await dns.asyncquery.udp(query, host, port=port, timeout=self._timeout_s)
            if response.flags & dns.flags.TC:
                response = await dns.asyncquery.tcp(query, host, port=port, timeout=self._timeout_s)
        except dns.exception.Timeout:
            down.append(f"no answer from the DNS server {host}:{port} within {self._timeout_s:g}s")
            return down[0], []
        except OSError as exc:
            down.append(f"query to {host}:{port} failed: {type(exc).__name__}: {exc}")
            return down[0], []
        except dns.exception.DNSException as exc:
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

    def _say_unreachable(self, rs: RecordSet, why: str) -> None:
        """Log once (at info; at debug after) that no test address reaches this set: not a difference."""
        said = (rs.key, why)
        if said in self._unreachable_said:
            log.debug("dns exporter %s: %s: not checked over DNS: %s", self.name, key_label(rs.key), why)
            return
        if len(self._unreachable_said) >= _UNREACHABLE_SAID_MAX:
            self._unreachable_said.clear()
        self._unreachable_said.add(said)
        log.info("dns exporter %s: %s: not checked over DNS (the API read checked it): %s", self.name,
                 key_label(rs.key), why)


@dataclass(frozen=True, slots=True)
class _Check:
    """What verify() asks the DNS server about one set."""

    index: int  # in desired
    rs: RecordSet
    pool: dict[str, int]
    clients: list[str | None]  # the ECS addresses to ask from (None: no ECS); the first is asked more than once


def _answer_difference(check: _Check, client: str | None, problem: str, values: Sequence[str]) -> str:
    """The line for one query's answer, or '' when it came from the set's pool."""
    where = f"{key_label(check.rs.key)}" + (f" (client {client})" if client else "")
    if problem:
        return f"{where}: {problem}"
    if len(values) != 1:
        got = ", ".join(values) or "no address (NODATA)"
        return f"{where}: got {got}; want one of {_show(check.pool)} per query"
    if values[0] not in check.pool:
        hint = " (is edns-subnet-processing=yes set on the server?)" if check.rs.scope is not None else ""
        return f"{where}: got {values[0]}; want one of {_show(check.pool)}{hint}"
    return ""


def _held_difference(want: RecordSet, pool: Mapping[str, int], networks: list[str], held: RecordSet | None) -> str:
    """How the set the API shows differs from the one wanted, or ''."""
    if held is None:
        return "the zone holds no such set"
    if _is_foreign(held):
        return f"the zone holds a LUA {want.rtype} record latency-router did not write (or one changed by hand)"
    held_pool = _pool(held)
    if held_pool != pool:
        return f"the zone holds {_show(held_pool)}; want {_show(pool)}"
    held_networks = _networks(held)
    if held_networks != networks:
        return f"the zone holds networks {', '.join(held_networks) or '-'}; want {', '.join(networks) or '-'}"
    if held.ttl != want.ttl:
        return f"the zone holds TTL {held.ttl}; want {want.ttl}"
    return ""


def _test_clients(rs: RecordSet, lookup: _Lookup) -> tuple[list[str | None], str]:
    """The addresses whose queries (ECS) the program hands to this set, None meaning no ECS; or [] and why none."""
    if rs.scope is None:
        if not lookup:
            return [None], ""
        client = next((c for c in _NO_GROUP_CLIENTS if _match(ipaddress.ip_address(c), lookup) is None), None)
        if client is None:
            return [], "every test address is in some group's networks (a catch-all group?)"
        return [client], ""
    clients: list[str | None] = []
    for text in rs.networks:
        client = _client_in(ipaddress.ip_network(lua_network(text)), rs.scope, lookup)
        if client is not None:
            clients.append(client)
            if len(clients) == _NETWORKS_CHECKED:
                break
    if not clients:
        return [], (f"every test address of {', '.join(rs.networks)} goes to another group (one given the same "
                    f"network and first by name, or one with a more specific network)")
    return clients, ""


# --- translation between record sets and PowerDNS rrsets (pure functions) ---


def lua_address(value: object) -> str:
    """The address as a LUA program quotes it (`ip_address(value).compressed`); ValueError naming anything else,
    an IPv6 zone id ('%') included."""
    if not isinstance(value, str):
        raise ValueError(f"{_shown(value)} is not an IP address")
    if "%" in value:
        raise ValueError(f"{_shown(value)}: an IPv6 zone id ('%') is refused")
    try:
        text = ipaddress.ip_address(value).compressed
    except ValueError:
        raise ValueError(f"{_shown(value)} is not an IP address") from None
    if not _ADDRESS_TEXT.fullmatch(text):
        raise ValueError(f"{_shown(value)} is not an IP address")
    return text


def lua_network(value: object) -> str:
    """The network as a LUA program quotes it (address/prefix, host bits cleared); ValueError naming anything else,
    an IPv6 zone id ('%') included."""
    if not isinstance(value, str):
        raise ValueError(f"{_shown(value)} is not a network (CIDR)")
    if "%" in value:
        raise ValueError(f"{_shown(value)}: an IPv6 zone id ('%') is refused")
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{_shown(value)} is not a network (CIDR)") from None
    text = f"{net.network_address.compressed}/{net.prefixlen}"
    if not _CIDR_TEXT.fullmatch(text):
        raise ValueError(f"{_shown(value)} is not a network (CIDR)")
    return text


def lua_weight(value: object) -> int:
    """The weight as a LUA program writes it; ValueError for anything but a whole number 0-255."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= WEIGHT_MAX:
        raise ValueError(f"weight {_shown(value)} is not a whole number 0-{WEIGHT_MAX}")
    return int(value)


def lua_program(sets: Sequence[RecordSet]) -> str:
    """The LUA record body serving these sets of one name and type: a pickwrandom expression, or a ';' program.
    ValueError when an address, network or weight cannot be written as a literal."""
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
        listed = ",".join(f"'{lua_network(n.with_prefixlen)}'" for n in nets)
        parts.append(f"if netmask({{{listed}}}) then return {_pick(by_scope[scope])} end")
    parts.append(f"return {_pick(default)}" if default is not None else "return {}")
    return ";" + " ".join(parts)


def encode_name(
    name: str, sets: Iterable[RecordSet], existing: Mapping[str, Mapping[str, Any]], *, keep_foreign: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The PATCH rrsets that make `name` serve exactly `sets` (every set of it), given what it holds (type -> rrset).
    The types in `keep_foreign` are left as they are (someone's LUA records of that type, and its plain RRset)."""
    keep = frozenset(keep_foreign)
    sets = list(sets)
    lua = existing.get("LUA", {})
    kept = [r for r in lua.get("records", []) if r.get("disabled") or _lua_type(r.get("content", "")) not in _RTYPES
            or _lua_type(r.get("content", "")) in keep]
    lua_records = [{"content": r.get("content", ""), "disabled": bool(r.get("disabled"))} for r in kept]
    lua_comments = _foreign_comments(lua) + _meta_comments(lua, keep)
    lua_ttls: list[int] = []
    out: list[dict[str, Any]] = []
    for rtype in _RTYPES:
        if rtype in keep:
            continue
        mine = sorted((rs for rs in sets if rs.rtype == rtype), key=_scope_order)
        if not mine:
            if rtype in existing:
                out.append({"name": name, "type": rtype, "changetype": "DELETE"})
            continue
        meta = {"content": _meta_text(rtype, mine), "account": META_ACCOUNT}
        if _is_plain(mine):
            rs = mine[0]
            comments = _foreign_comments(existing.get(rtype, {})) + [meta]
            records = [{"content": lua_address(rs.answers[0].value), "disabled": False}]
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
        if sets is not None and _is_plain(sets) and [lua_address(sets[0].answers[0].value)] == contents:
            rs = sets[0]
            if rs.ttl != ttl:  # the TTL was changed by hand: report what is served
                rs = RecordSet(name, rtype, ttl, rs.answers, None, rs.networks)
            out[(name, rtype, None)] = rs
        else:
            answers = tuple(Answer(lua_address(c)) for c in contents if _is_address(c, rtype))
            out[(name, rtype, None)] = RecordSet(name, rtype, ttl, answers)
    lua = existing.get("LUA")
    if lua:
        ttl = int(lua.get("ttl", 0))
        by_type: dict[str, list[str]] = {}
        for record in lua.get("records", []):
            content = record.get("content", "")
            if _lua_type(content) in _RTYPES and not record.get("disabled"):
                by_type.setdefault(_lua_type(content), []).append(content)
        found: list[RecordSet] = []
        ours: list[int] = []
        for rtype in _RTYPES:
            if rtype in by_type:
                sets = _our_lua_sets(name, rtype, lua, by_type[rtype])
                if sets is None:  # not ours, or changed by hand: someone's answers
                    found.append(_foreign_set(name, rtype, ttl, by_type[rtype]))
                else:
                    found += sets
                    ours += [rs.ttl for rs in sets]
        for rs in found:
            if ours and ttl != min(ours) and not _is_foreign(rs):  # the TTL was changed by hand: report what is served
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


def _is_foreign(rs: RecordSet) -> bool:
    """True for the set read from a LUA record latency-router did not write (or one changed by hand)."""
    return bool(rs.answers) and all(a.set_id == FOREIGN_SET_ID for a in rs.answers)


def _scope_order(rs: RecordSet) -> tuple[int, str]:
    return (0, "") if rs.scope is None else (1, rs.scope)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def _is_address(value: object, rtype: str) -> bool:
    try:
        return ipaddress.ip_address(lua_address(value)).version == _VERSION[rtype]
    except ValueError:
        return False


def _pool(rs: RecordSet) -> dict[str, int]:
    """address -> weight of what the set serves: weight > 0 only, or every answer at 1 when all weights are 0.
    ValueError for an answer that is not a plain address or a weight outside 0-255."""
    pool: dict[str, int] = {}
    for a in rs.answers:
        value, weight = lua_address(a.value), lua_weight(a.weight)
        if weight > 0:
            pool[value] = pool.get(value, 0) + weight
    if not pool:
        pool = {lua_address(a.value): 1 for a in rs.answers}
    return pool


def _networks(rs: RecordSet) -> list[str]:
    """The set's networks as the program writes them, sorted, each once."""
    return sorted({lua_network(n) for n in rs.networks})


def _pick(rs: RecordSet) -> str:
    entries = ",".join(f"{{{int(w):d},'{lua_address(v)}'}}" for v, w in _pool(rs).items())
    return f"pickwrandom({{{entries}}})"


def _rules(groups: Sequence[RecordSet]) -> list[tuple[_Net, str]]:
    """(network, group) in the order the program tests them: longest prefix first, then group name, then network."""
    rules: list[tuple[_Net, str]] = []
    seen: set[tuple[_Net, str]] = set()
    for rs in groups:
        assert rs.scope is not None
        for text in rs.networks:
            net = ipaddress.ip_network(lua_network(text))
            if (net, rs.scope) not in seen:
                seen.add((net, rs.scope))
                rules.append((net, rs.scope))
    rules.sort(key=lambda r: (-r[0].prefixlen, r[1], r[0].version, r[0].network_address.packed))
    return rules


def _lookup(rules: Sequence[tuple[_Net, str]]) -> _Lookup:
    """The rules as one table per (version, prefix length), longest first: _match() costs a lookup per length."""
    tables: dict[tuple[int, int], dict[_Net, str]] = {}
    for net, scope in rules:  # in the program's order: the first group given a network is the one it hands it to
        tables.setdefault((net.version, net.prefixlen), {}).setdefault(net, scope)
    return sorted(((v, p, t) for (v, p), t in tables.items()), key=lambda item: -item[1])


def _match(address: _IP, lookup: _Lookup) -> str | None:
    """The group the program hands this client to (first rule holding it), None for none."""
    for version, prefixlen, table in lookup:
        if version == address.version:
            scope = table.get(ipaddress.ip_network((address, prefixlen), strict=False))
            if scope is not None:
                return scope
    return None


def _client_in(net: _Net, scope: str, lookup: _Lookup) -> str | None:
    """An address of `net` that the program hands to `scope`, or None when other groups' rules take them all."""
    first, last = int(net.network_address), int(net.broadcast_address)
    for number in dict.fromkeys([first, last, min(first + 1, last), (first + last) // 2][:_ADDRESS_PROBES]):
        address = ipaddress.IPv4Address(number) if net.version == 4 else ipaddress.IPv6Address(number)
        if _match(address, lookup) == scope:
            return str(address)
    return None


def _lua_record(rtype: str, sets: Sequence[RecordSet]) -> str:
    return f'{rtype} "{lua_program(sets)}"'


def _lua_type(content: str) -> str:
    return content.split(" ", 1)[0].upper() if isinstance(content, str) else ""


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
                    if not isinstance(value, str) or not isinstance(set_id, str) or set_id == FOREIGN_SET_ID:
                        return None
                    lua_weight(weight)
                    answers.append(Answer(value, weight, set_id))
                if not answers or not all(_is_address(a.value, rtype) for a in answers):
                    return None
                for net in networks:
                    lua_network(net)
                if scope is not None and not networks:
                    return None
                rs = RecordSet(name, rtype, ttl, tuple(answers), scope, tuple(networks))  # type: ignore[arg-type]
                sets.append(rs)
        except (ValueError, TypeError, KeyError):
            return None
        scopes = [rs.scope for rs in sets]
        return sets if sets and len(set(scopes)) == len(scopes) else None
    return None


def _our_lua_sets(name: str, rtype: str, lua: Mapping[str, Any], contents: Sequence[str]) -> list[RecordSet] | None:
    """The sets of the LUA `rtype` records held (`contents`) when they are exactly what this provider's comment says
    it wrote, else None."""
    sets = _meta_sets(name, rtype, lua)
    if sets is None or _is_plain(sets):
        return None
    try:
        return sets if list(contents) == [_lua_record(rtype, sets)] else None
    except ValueError:
        return None


def _foreign_set(name: str, rtype: RType, ttl: int, contents: Sequence[str]) -> RecordSet:
    """Someone's LUA `rtype` records as one scope-None set: the addresses of that family quoted in them, weight 1
    each (0.0.0.0 or :: when they quote none), every answer with the set id FOREIGN_SET_ID."""
    values: list[str] = []
    for content in contents:
        for text in _QUOTED_ADDRESS.findall(content):
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            if address.version == _VERSION[rtype] and address.compressed not in values:
                values.append(address.compressed)
    answers = tuple(Answer(v, 1, FOREIGN_SET_ID) for v in values or [_PLACEHOLDER[rtype]])
    return RecordSet(name, rtype, ttl, answers)


def _foreign_comments(rrset: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {k: c[k] for k in ("content", "account", "modified_at") if k in c}
        for c in rrset.get("comments", []) or []
        if c.get("account") != META_ACCOUNT
    ]


def _meta_comments(rrset: Mapping[str, Any], rtypes: Iterable[str]) -> list[dict[str, Any]]:
    """This provider's comments on the rrset about these types, as they are."""
    prefixes = tuple(f"{META_VERSION} {rtype} " for rtype in rtypes)
    return [
        {k: c[k] for k in ("content", "account", "modified_at") if k in c}
        for c in rrset.get("comments", []) or []
        if prefixes and c.get("account") == META_ACCOUNT and str(c.get("content", "")).startswith(prefixes)
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
