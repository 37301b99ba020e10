"""RFC 2136 dynamic updates signed with TSIG (BIND 9 and any server that speaks them), through dnspython.

Plain DNS has no weights. A weighted record set is written as the RRset of its top answers: weight > 0 only, the
highest first, ties broken by address, at most `max_answers`; when every weight is 0 all answers are served (as on
Route 53). Reading back gives those answers with equal, full weights (255: an answer served or not is a whole move for
the plan's churn threshold), no set ids and no networks, so the shared plan compares a desired set through
`Rfc2136Provider.representable()`, which turns it into exactly what this provider holds. A TTL outside 0-2147483647
(RFC 2181) is refused before anything is sent.

Per-group answers go through views: BIND picks a view by the TSIG key that signs a message (`match-clients { key K; }`),
so a scoped set is read and written with its group's view key and the scope-None set with the main key (the default
view). `apply()` sends one UPDATE per view, which the server applies atomically, with prerequisites that each RRset
still holds what `current()` read: a concurrent writer makes the update fail (and be planned again) instead of being
overwritten.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
from collections.abc import Mapping, Sequence

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.tsig
import dns.update

from latency_router.exporters.dns.errors import ProviderError
from latency_router.exporters.dns.model import WEIGHT_MAX, Answer, Change, Key, RecordSet
from latency_router.secrets import Secret

ALGORITHMS = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}
READ_CONCURRENCY = 16  # queries in flight at once in current() and verify()
TTL_MAX = 2_147_483_647  # RFC 2181 section 8
_FAMILY = {"A": 4, "AAAA": 6}

# rcode -> (what it means here, retryable)
_RCODES = {
    dns.rcode.REFUSED: ("REFUSED: the server does not let this key update the zone (allow-update / update-policy)",
                        False),
    dns.rcode.NOTAUTH: ("NOTAUTH: the view this key selects is not authoritative for the zone, or it did not accept the"
                        " key", False),
    dns.rcode.NOTZONE: ("NOTZONE: a name is outside the zone", False),
    dns.rcode.NXRRSET: ("NXRRSET: a record set changed since it was read (prerequisite failed)", True),
    dns.rcode.YXRRSET: ("YXRRSET: a record set changed since it was read (prerequisite failed)", True),
    dns.rcode.SERVFAIL: ("SERVFAIL: the server failed to process the message", True),
}


class _ViewKey:
    """The TSIG key that selects one view; its secret stays in the Secret until a message is signed."""

    __slots__ = ("algorithm", "label", "name", "secret")

    def __init__(self, label: str, name: dns.name.Name, secret: Secret, algorithm: dns.name.Name) -> None:
        self.label, self.name, self.secret, self.algorithm = label, name, secret, algorithm

    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        # dns.tsig.Key's repr shows the secret: it lives only inside one message's signing and reading
        return {self.name: dns.tsig.Key(self.name, self.secret.reveal(), self.algorithm)}

    def __repr__(self) -> str:
        return f"<{self.label}, key {self.name}>"


class Rfc2136Provider:
    """A zone on a server that takes signed dynamic updates; per-group answers through views selected by TSIG key."""

    def __init__(
        self,
        server: tuple[str, int],
        zone: str,
        key_name: str,
        key_secret: Secret,
        *,
        algorithm: str = "hmac-sha256",
        views: Mapping[str, tuple[str, Secret]] | None = None,
        max_answers: int | None = None,
        name: str = "rfc2136",
        timeout_s: float = 5.0,
    ) -> None:
        self.name = name
        self.host, self.port = _server(server)
        self.zone = _dns_name(zone, "zone")
        if algorithm.lower() not in ALGORITHMS:
            raise ValueError(f"algorithm: {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        self.algorithm = ALGORITHMS[algorithm.lower()]
        self._main = self._key("default view", key_name, key_secret, "key_name", "key_secret")
        self._views: dict[str, _ViewKey] = {}
        for group, pair in (views or {}).items():
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ValueError(f"views[{group!r}]: write (key_name, secret)")
            field = f"views[{group!r}]"
            self._views[group] = self._key(f"view of group {group!r}", pair[0], pair[1], field, field)
        if max_answers is not None and (isinstance(max_answers, bool) or not isinstance(max_answers, int)
                                        or max_answers < 1):
            raise ValueError(f"max_answers: {max_answers!r} is not a whole number of at least 1")
        self.max_answers = max_answers
        if not timeout_s > 0:
            raise ValueError(f"timeout_s: {timeout_s!r} is not a positive number of seconds")
        self.timeout_s = float(timeout_s)

    def _key(self, label: str, key_name: str, secret: Secret, name_field: str, secret_field: str) -> _ViewKey:
        if not isinstance(secret, Secret):
            raise TypeError(f"{secret_field}: pass a latency_router.secrets.Secret, not {type(secret).__name__}")
        try:
            base64.b64decode(secret.reveal(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{secret_field}: the TSIG secret in {secret.ref} is not base64") from None
        return _ViewKey(label, _dns_name(key_name, name_field), secret, self.algorithm)

    def __repr__(self) -> str:
        views = ", ".join(f"{g}={k.name}" for g, k in self._views.items())
        return (f"Rfc2136Provider(name={self.name!r}, server={self.host}:{self.port}, zone={self.zone}, "
                f"key={self._main.name}, views=[{views}], max_answers={self.max_answers})")

    # what this provider can hold

    def representable(self, record_set: RecordSet) -> RecordSet:
        """The record set as this provider holds and reads it back: the top answers by weight, with equal weights."""
        self._view(record_set.scope)
        self._check_name(record_set.name)
        ttl = record_set.ttl
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= TTL_MAX:
            raise ProviderError(self.name, f"{_label(record_set.key)}: ttl {ttl!r} is not a whole number of seconds "
                                f"0-{TTL_MAX} (RFC 2181)", retryable=False)
        merged: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, int] = {}
        for answer in record_set.answers:
            address = ipaddress.ip_address(answer.value)
            if address.version != _FAMILY.get(record_set.rtype):
                raise ProviderError(self.name, f"{_label(record_set.key)}: {answer.value} is not an {record_set.rtype}"
                                    " address", retryable=False)
            merged[address] = merged.get(address, 0) + answer.weight  # one address twice: one record, both shares
        chosen = [a for a, w in merged.items() if w > 0] or list(merged)  # all weights 0: all are served
        chosen.sort(key=lambda a: (-merged[a], a))
        if self.max_answers is not None:
            chosen = chosen[: self.max_answers]
        answers = tuple(Answer(str(a), WEIGHT_MAX) for a in sorted(chosen))
        return RecordSet(record_set.name, record_set.rtype, record_set.ttl, answers, record_set.scope)

    # Provider

    async def current(self, keys: Sequence[Key]) -> Mapping[Key, RecordSet]:
        """What the server serves now for these keys, each read with its view's key (absent keys: no such RRset)."""
        for name, _, scope in keys:
            self._view(scope)
            self._check_name(name)
        found = await self._read_all(list(dict.fromkeys(keys)))
        return {key: rs for key, rs in found.items() if rs is not None}

    async def list_keys(self, names: Sequence[str]) -> list[Key]:
        """Every key of an A or AAAA RRset the server holds at these names (FQDN, lower case, ending in '.'), per view:
        scope None for the default view's, the group for a group's view. Costs 2 x names x (1 + views) queries (A and
        AAAA, each signed with its view's key), READ_CONCURRENCY at once."""
        if isinstance(names, str):
            raise ProviderError(self.name, f"names: expected a list of names, got the string {names!r}",
                                retryable=False)
        for i, name in enumerate(names):
            if not isinstance(name, str) or len(name) < 2 or not name.endswith(".") or name != name.lower():
                raise ProviderError(self.name, f"names[{i}]: expected a lower-case domain name ending in '.', got "
                                    f"{name!r}", retryable=False)
            self._check_name(name)
        scopes: list[str | None] = [None, *sorted(self._views)]
        keys = [(name, rtype, scope) for name in sorted(set(names)) for rtype in _FAMILY for scope in scopes]
        found = await self._read_all(keys)
        return [key for key in keys if found[key] is not None]

    async def apply(self, changes: Sequence[Change]) -> None:
        """Write the changes: one signed UPDATE per view, deleting and adding whole RRsets; raise on any refusal."""
        by_view: dict[str | None, list[Change]] = {}
        seen: set[Key] = set()
        for change in changes:
            if change.key in seen:
                raise ProviderError(self.name, f"{_label(change.key)}: two changes for one record set", retryable=False)
            seen.add(change.key)
            if change.new is not None:
                self.representable(change.new)  # checks name, family and view before anything is sent
            self._view(change.key[2])
            self._check_name(change.key[0])
            by_view.setdefault(change.key[2], []).append(change)
        for scope, view_changes in by_view.items():
            await self._update(self._view(scope), view_changes)

    async def verify(self, desired: Sequence[RecordSet]) -> list[str]:
        """Read each desired set back over DNS with its view's key; one line per set that differs, [] when all match."""
        wanted = [self.representable(rs) for rs in desired]
        found = await self._read_all([rs.key for rs in wanted])
        lines = []
        for want in wanted:
            have = found.get(want.key)
            if not want.answers:
                if have is not None:
                    lines.append(f"{_label(want.key)}: serves {_show(have)}, want no record set")
            elif have is None:
                lines.append(f"{_label(want.key)}: serves nothing, want {_show(want)}")
            elif have.answers != want.answers or have.ttl != want.ttl:
                lines.append(f"{_label(want.key)}: serves {_show(have)}, want {_show(want)}")
        return lines

    async def aclose(self) -> None:
        """Nothing to release: every message opens and closes its own socket."""

    # the wire

    def _view(self, scope: str | None) -> _ViewKey:
        if scope is None:
            return self._main
        view = self._views.get(scope)
        if view is None:
            known = ", ".join(sorted(self._views)) or "none"
            raise ProviderError(self.name, f"no view key for group {scope!r} (views: {known})", retryable=False)
        return view

    def _check_name(self, name: str) -> None:
        try:
            ok = dns.name.from_text(name).is_subdomain(self.zone)
        except dns.exception.DNSException:
            ok = False
        if not ok:
            raise ProviderError(self.name, f"{name!r} is not a name in zone {self.zone}", retryable=False)

    async def _read_all(self, keys: Sequence[Key]) -> dict[Key, RecordSet | None]:
        gate = asyncio.Semaphore(READ_CONCURRENCY)

        async def one(key: Key) -> RecordSet | None:
            async with gate:
                return await self._read(key)

        tasks = [asyncio.ensure_future(one(key)) for key in keys]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:  # the first failure (one ProviderError) goes up; the other reads are stopped
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return dict(zip(keys, results))

    async def _read(self, key: Key) -> RecordSet | None:
        name, rtype, scope = key
        view = self._view(scope)
        query = dns.message.make_query(name, rtype)
        query.flags &= ~dns.flags.RD
        query.use_tsig(view.keyring(), keyname=view.name, algorithm=view.algorithm)
        what = f"query for {_label(key)} ({view!r})"
        try:
            response, _ = await dns.asyncquery.udp_with_fallback(query, self.host, self.timeout_s, self.port)
        except Exception as exc:  # noqa: BLE001 - every transport or TSIG failure becomes a ProviderError
            raise self._error(what, exc) from None
        rcode = response.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise self._rcode_error(what, rcode)
        if not response.flags & dns.flags.AA:
            raise ProviderError(self.name, f"{what}: the answer is not authoritative: the view has no zone {self.zone}",
                                retryable=False)
        rrset = response.get_rrset(response.answer, dns.name.from_text(name), dns.rdataclass.IN,
                                   dns.rdatatype.from_text(rtype))
        if rrset is None:
            return None
        answers = tuple(Answer(str(ipaddress.ip_address(r.address)), WEIGHT_MAX) for r in rrset)
        return RecordSet(name, rtype, rrset.ttl, tuple(sorted(answers, key=_address)), scope)

    async def _update(self, view: _ViewKey, changes: Sequence[Change]) -> None:
        update = dns.update.UpdateMessage(self.zone, keyring=view.keyring(), keyname=view.name,
                                          keyalgorithm=view.algorithm)
        for change in changes:
            name, rtype, _ = change.key
            if change.old is None or not change.old.answers:
                update.absent(name, rtype)
            else:
                update.present(name, _rdataset(change.old, ttl=0))  # RFC 2136 3.2.1: a prerequisite's TTL is 0
            new = None if change.new is None else self.representable(change.new)
            if new is None or not new.answers:
                update.delete(name, rtype)
            else:
                update.replace(name, _rdataset(new))
        what = f"update of {len(changes)} record set(s) in the {view!r}"
        try:
            response = await dns.asyncquery.tcp(update, self.host, self.timeout_s, self.port)
        except Exception as exc:  # noqa: BLE001 - every transport or TSIG failure becomes a ProviderError
            raise self._error(what, exc) from None
        rcode = response.rcode()
        if rcode in (dns.rcode.NXRRSET, dns.rcode.YXRRSET) and await self._already_done(changes):
            return  # an earlier try went through and only its reply was lost
        if rcode != dns.rcode.NOERROR:
            raise self._rcode_error(what, rcode)

    async def _already_done(self, changes: Sequence[Change]) -> bool:
        found = await self._read_all([c.key for c in changes])
        for change in changes:
            want = None if change.new is None else self.representable(change.new)
            have = found[change.key]
            if (have is None) != (want is None or not want.answers):
                return False
            if have is not None and want is not None and (have.answers, have.ttl) != (want.answers, want.ttl):
                return False
        return True

    def _rcode_error(self, what: str, rcode: dns.rcode.Rcode) -> ProviderError:
        meaning, retryable = _RCODES.get(rcode, (f"{dns.rcode.to_text(rcode)} from the server", True))
        return ProviderError(self.name, f"{what}: {meaning}", retryable=retryable)

    def _error(self, what: str, exc: BaseException) -> ProviderError:
        where = f"{self.host}:{self.port}"
        if isinstance(exc, dns.tsig.PeerBadSignature):
            text, retryable = "BADSIG: the server rejected the signature (wrong secret or algorithm for the key)", False
        elif isinstance(exc, dns.tsig.PeerBadKey):
            text, retryable = "BADKEY: the server does not know this key name", False
        elif isinstance(exc, dns.tsig.PeerBadTime):
            text, retryable = "BADTIME: the server's clock and ours differ by more than the TSIG fudge", True
        elif isinstance(exc, dns.tsig.PeerError):
            text, retryable = f"TSIG error from the server: {type(exc).__name__}", False
        elif isinstance(exc, (dns.tsig.BadSignature, dns.message.UnknownTSIGKey)):
            text, retryable = "the reply's TSIG signature does not verify", False
        elif isinstance(exc, dns.exception.Timeout):
            text, retryable = f"no reply from {where} within {self.timeout_s:g} s", True
        elif isinstance(exc, OSError):
            text, retryable = f"cannot reach {where}: {exc.strerror or type(exc).__name__}", True
        else:
            text, retryable = f"{type(exc).__name__} talking to {where}: {exc}", True
        return ProviderError(self.name, self._scrub(f"{what}: {text}"), retryable=retryable)

    def _scrub(self, text: str) -> str:
        for view in (self._main, *self._views.values()):
            text = text.replace(view.secret.reveal(), "<secret>")
        return text


def _server(server: tuple[str, int]) -> tuple[str, int]:
    try:
        host, port = server
        address = str(ipaddress.ip_address(host))
    except (TypeError, ValueError):
        raise ValueError(f"server: {server!r} is not an (IP address, port) pair") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"server: port {port!r} is not within 1-65535")
    return address, port


def _dns_name(text: str, field: str) -> dns.name.Name:
    try:
        return dns.name.from_text(text.lower().rstrip(".") + ".")
    except (AttributeError, dns.exception.DNSException) as exc:
        raise ValueError(f"{field}: {text!r} is not a domain name ({exc})") from None


def _rdataset(rs: RecordSet, ttl: int | None = None) -> dns.rdataset.Rdataset:
    return dns.rdataset.from_text(dns.rdataclass.IN, rs.rtype, rs.ttl if ttl is None else ttl,
                                  *(a.value for a in rs.answers))


def _address(answer: Answer) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(answer.value)


def _label(key: Key) -> str:
    name, rtype, scope = key
    return f"{name} {rtype} {'(every client)' if scope is None else f'(group {scope})'}"


def _show(rs: RecordSet) -> str:
    return f"[{', '.join(a.value for a in rs.answers)}] ttl {rs.ttl}"
