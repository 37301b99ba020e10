"""The typed, frozen config model: one class per TOML table, unknown keys rejected, values parsed once."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from latency_router.config import fields
from latency_router.config.checks import DEFAULT_AGENT_NAME, cross_reference_problems, key_path
from latency_router.decider.steps import POLICY_NAMES, Step, named_chain, parse_chain
from latency_router.durations import format_duration

LAB_MODES: tuple[str, ...] = ("auto", "nfqueue", "userspace")
LAB_EVENT_KINDS: tuple[str, ...] = ("outage", "step")
ALL_DOWN: tuple[str, ...] = ("fail-open", "last-known-good", "static", "none")
METRICS: tuple[str, ...] = ("ewma", "p50", "p95", "min")
DNS_KINDS: tuple[str, ...] = ("powerdns", "rfc2136", "route53")
DNS_MODES: tuple[str, ...] = ("weighted", "per-group")
# the keys each DNS provider kind reads (besides name, kind, zone), and those it cannot do without
DNS_KIND_KEYS: dict[str, tuple[str, ...]] = {
    "powerdns": ("api_url", "api_key", "server_id", "dns_server"),
    "rfc2136": ("server", "key_name", "key_secret", "algorithm", "max_answers", "views"),
    "route53": ("hosted_zone_id", "endpoint_url", "region", "access_key", "secret_key"),
}
DNS_KIND_REQUIRED: dict[str, tuple[str, ...]] = {
    "powerdns": ("api_url", "api_key"),
    "rfc2136": ("server", "key_name", "key_secret"),
    "route53": ("hosted_zone_id",),
}

# context key: the loader runs the cross-reference checks itself, on the raw data, so they run even when a field fails
SKIP_CROSS_CHECK = "skip_cross_check"

Int = Annotated[int, Strict()]
Str = Annotated[str, Strict()]
Name = Annotated[str, PlainValidator(fields.name)]
Duration = Annotated[float, PlainValidator(fields.duration), PlainSerializer(format_duration, when_used="json")]
OptionalDuration = Annotated[
    float | None, PlainValidator(fields.duration), PlainSerializer(lambda s: s if s is None else format_duration(s), when_used="json")
]
Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, PlainValidator(fields.cidr)]
Country = Annotated[str, PlainValidator(fields.country)]
# TOML has inf and nan: a finite check first, since nan fails every bound with a misleading message
Latitude = Annotated[float, Strict(), Field(ge=-90, le=90, allow_inf_nan=False)]
Longitude = Annotated[float, Strict(), Field(ge=-180, le=180, allow_inf_nan=False)]
Ratio = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]
Port = Annotated[int, PlainValidator(fields.port)]


def _choice(what: str, allowed: tuple[str, ...]) -> PlainValidator:
    return PlainValidator(lambda value: fields.one_of(value, what, allowed))


def rule_error(key: str, message: str) -> PydanticCustomError:
    """A broken rule between keys of one table, reported at `key` of that table."""
    return PydanticCustomError("config_rule", "{message}", {"key": key, "message": message})


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=False)


class AgentConfig(_Model):
    """[agent]: this vantage's name."""

    name: Name = DEFAULT_AGENT_NAME


class ApiConfig(_Model):
    """[api]: where the HTTP API listens ('HOST:PORT', IPv6 as '[::1]:9180'), and its admin token.

    `token` is a secret reference, 'env:NAME' or 'file:PATH'; with none, the admin endpoints are off.
    """

    listen: Annotated[str, PlainValidator(lambda v: (fields.listen(v), v)[1])] = "127.0.0.1:9180"
    token: Annotated[str | None, PlainValidator(fields.secret_ref)] = None
    ready_grace_s: Annotated[Duration, Field(alias="ready_grace", gt=0)] = 30.0
    max_body_bytes: Annotated[Int, Field(alias="max_body", ge=1024, le=64 * 2**20)] = 2**20
    max_batch: Annotated[Int, Field(ge=1, le=100_000)] = 1000

    @property
    def host(self) -> str:
        """The listen host (without brackets for IPv6)."""
        return fields.listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The listen port."""
        return fields.listen(self.listen)[1]


class StoreConfig(_Model):
    """[store]: where the table is snapshotted (SQLite, WAL) and how often; no [store] table means no persistence."""

    path: Str
    interval_s: Annotated[Duration, Field(alias="interval", gt=0)] = 5.0


SecretRef = Annotated[str, PlainValidator(fields.secret_ref)]
HostPort = Annotated[str, PlainValidator(lambda v: (fields.listen(v), v)[1])]
Fqdn = Annotated[str, PlainValidator(fields.fqdn)]


class DnsViewKey(_Model):
    """A BIND view's TSIG key, for the per-group answers of that view's group."""

    key_name: Str
    key_secret: SecretRef


class DnsProviderConfig(_Model):
    """[[dns.providers]]: one DNS server latency-router writes to; which keys apply depends on `kind`."""

    name: Name
    kind: Annotated[str, _choice("kind", DNS_KINDS)]
    zone: Fqdn
    api_url: Str | None = None
    api_key: SecretRef | None = None
    server_id: Str = "localhost"
    dns_server: HostPort | None = None
    server: HostPort | None = None
    key_name: Str | None = None
    key_secret: SecretRef | None = None
    algorithm: Annotated[str, _choice("algorithm", ("hmac-sha256", "hmac-sha512", "hmac-sha384", "hmac-sha224", "hmac-sha1", "hmac-md5"))] = "hmac-sha256"
    max_answers: Annotated[Int | None, Field(ge=1, le=255)] = None
    views: dict[Name, DnsViewKey] = {}
    hosted_zone_id: Str | None = None
    endpoint_url: Str | None = None
    region: Str = "us-east-1"
    access_key: SecretRef | None = None
    secret_key: SecretRef | None = None

    @model_validator(mode="after")
    def _kind_rules(self) -> "DnsProviderConfig":
        for key in DNS_KIND_REQUIRED[self.kind]:
            if getattr(self, key) is None:
                raise rule_error(key, f"required for a {self.kind} provider")
        for kind, keys in DNS_KIND_KEYS.items():
            if kind == self.kind:
                continue
            for key in keys:
                if key in self.model_fields_set and key not in DNS_KIND_KEYS[self.kind]:
                    raise rule_error(key, f"a {kind} key; this provider is {self.kind}")
        if (self.access_key is None) != (self.secret_key is None):
            raise rule_error("secret_key" if self.secret_key is None else "access_key", "give access_key and secret_key together")
        return self


class DnsRecordConfig(_Model):
    """[[dns.records]]: a name kept in step with a service's decisions at one provider."""

    name: Fqdn
    service: Name
    provider: Name
    mode: Annotated[str, _choice("mode", DNS_MODES)] = "weighted"
    ttl_s: Annotated[OptionalDuration, Field(alias="ttl")] = None


class DnsConfig(_Model):
    """[dns]: the DNS exporters and their safety settings."""

    min_weight_change: Annotated[Int, Field(ge=0, le=255)] = 10
    max_weight_shift: Ratio = 1.0  # 1.0: no limit (a failover moves a whole group); set lower to guard
    min_write_interval_s: Annotated[Duration, Field(alias="min_write_interval", ge=0)] = 1.0
    retry_max_s: Annotated[Duration, Field(alias="retry_max", gt=0)] = 5.0
    recheck_s: Annotated[Duration, Field(alias="recheck_interval", ge=0)] = 60.0  # 0: no re-check while idle
    providers: tuple[DnsProviderConfig, ...] = ()
    records: tuple[DnsRecordConfig, ...] = ()


class ProbingConfig(_Model):
    """[probing]: how often and how long each target is probed."""

    interval_s: Annotated[Duration, Field(alias="interval", gt=0)] = 1.0
    timeout_s: Annotated[Duration, Field(alias="timeout", gt=0)] = 0.5
    samples: Annotated[Int, Field(ge=1)] = 5
    max_in_flight: Annotated[Int, Field(ge=1)] = 1000
    loss_threshold: Ratio = 0.5

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> "ProbingConfig":
        if self.timeout_s > self.interval_s:
            raise rule_error("timeout", f"must not exceed interval ({format_duration(self.interval_s)})")
        return self


class HealthConfig(_Model):
    """[health]: consecutive failed (or good) rounds before a target goes down (or up)."""

    fail_after: Annotated[Int, Field(ge=1)] = 3
    recover_after: Annotated[Int, Field(ge=1)] = 3


class TableSettings(_Model):
    """[table]: how the latency table smooths, windows and judges its rows."""

    ewma_tau_s: Annotated[Duration, Field(alias="ewma_tau", gt=0)] = 10.0
    window: Annotated[Int, Field(ge=1, le=65536)] = 256
    stale_after: Annotated[Int, Field(ge=1, le=1000)] = 3
    unknown_healthy: Annotated[bool, Strict()] = True


class PathLab(_Model):
    """A path's lab impairment: the RTT added, its jitter and a loss ratio."""

    delay_s: Annotated[Duration, Field(alias="delay", ge=0)] = 0.0
    jitter_s: Annotated[Duration, Field(alias="jitter", ge=0)] = 0.0
    loss: Ratio = 0.0

    @model_validator(mode="after")
    def _jitter_within_delay(self) -> "PathLab":
        if self.jitter_s > self.delay_s:
            raise rule_error("jitter", f"must not exceed delay ({format_duration(self.delay_s)})")
        return self


class PathConfig(_Model):
    """[[regions.paths]]: one way to reach a region, its probe target and the answer a decision hands out."""

    name: Name
    probe: Annotated[str, PlainValidator(fields.probe_url)]
    answer: Annotated[str, PlainValidator(fields.answer)]
    lab: PathLab | None = None


class RegionConfig(_Model):
    """[[regions]]: a place that serves the application, with its location and paths."""

    name: Name
    lat: Latitude
    lon: Longitude
    paths: Annotated[tuple[PathConfig, ...], Field(min_length=1)]


class GroupConfig(_Model):
    """[[groups]]: a population of clients (CIDRs, countries, a location) measured by a vantage."""

    name: Name
    cidrs: tuple[Network, ...] = ()
    lat: Latitude | None = None
    lon: Longitude | None = None
    vantage: Annotated[str | None, PlainValidator(fields.name)] = None
    size: Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)] = 1.0
    countries: tuple[Country, ...] = ()

    @model_validator(mode="after")
    def _lat_lon_together(self) -> "GroupConfig":
        if (self.lat is None) != (self.lon is None):
            missing, given = ("lon", "lat") if self.lon is None else ("lat", "lon")
            raise rule_error(missing, f"required with {given} (give both or neither)")
        return self


class HysteresisConfig(_Model):
    """[services.hysteresis]: a challenger must lead by max(margin, margin_ratio) for `evaluations` in a row, after `dwell`."""

    margin_s: Annotated[Duration, Field(alias="margin", ge=0)] = 0.002
    margin_ratio: Ratio = 0.03
    evaluations: Annotated[Int, Field(ge=1, le=1000)] = 3
    dwell_s: Annotated[Duration, Field(alias="dwell", ge=0)] = 10.0


class FenceConfig(_Model):
    """[[services.fences]]: the regions allowed to the groups it matches (by name, country or CIDR); the first match wins."""

    groups: tuple[Name, ...] = ()
    countries: tuple[Country, ...] = ()
    cidrs: tuple[Network, ...] = ()
    regions: Annotated[tuple[Str, ...], Field(min_length=1)]

    @model_validator(mode="after")
    def _matches_something(self) -> "FenceConfig":
        if not (self.groups or self.countries or self.cidrs):
            raise rule_error("groups", "a fence needs groups, countries or cidrs to match")
        return self

    def matches(self, group: "GroupConfig") -> bool:
        """True when the group is named, shares a country, or has a CIDR inside one of the fence's."""
        if group.name in self.groups or set(group.countries) & set(self.countries):
            return True
        return any(
            net.version == fence.version and net.subnet_of(fence)  # type: ignore[arg-type]
            for net in group.cidrs
            for fence in self.cidrs
        )


def _chain(value: Any) -> tuple[Step, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected an array of step strings such as [\"healthy\", \"latency\", \"first\"], got {fields.show(value)}")
    return parse_chain(value)


Weight = Annotated[int, Strict(), Field(ge=0, le=255)]
Bias = Annotated[int, Strict(), Field(ge=-99, le=99)]


class ServiceConfig(_Model):
    """[[services]]: what clients ask for, the policy (or chain) that decides it, and how it moves and fails."""

    name: Name
    policy: Annotated[str | None, _choice("policy", POLICY_NAMES)] = None
    chain: Annotated[tuple[Step, ...], PlainValidator(_chain), PlainSerializer(lambda c: [str(s) for s in c])] = ()
    regions: Annotated[tuple[Str, ...], Field(min_length=1)] = ()
    path: Annotated[str, PlainValidator(lambda v: v if v == "auto" else fields.name(v))] = "auto"
    primary_path: Name = "direct"
    path_margin_s: Annotated[Duration, Field(alias="path_margin", ge=0)] = 0.001
    path_margin_ratio: Ratio = 0.02
    metric: Annotated[str, _choice("metric", METRICS)] = "ewma"
    ttl_s: Annotated[Duration, Field(alias="ttl", ge=0)] = 60.0
    all_down: Annotated[str, _choice("all_down", ALL_DOWN)] = "fail-open"
    fallback: tuple[Annotated[str, PlainValidator(fields.answer)], ...] = ()
    answers: Annotated[Int | None, Field(ge=1, le=255)] = None
    priority: tuple[Str, ...] = ()
    weights: dict[Str, Weight] = {}
    bias: dict[Str, Bias] = {}
    geolocation: dict[Str, Str] = {}
    fences: tuple[FenceConfig, ...] = ()
    hysteresis: HysteresisConfig = HysteresisConfig()

    @model_validator(mode="after")
    def _rules(self) -> "ServiceConfig":
        if self.policy is None and not self.chain:
            raise rule_error("policy", f"give a policy (one of: {', '.join(POLICY_NAMES)}) or a chain")
        if self.policy is not None and self.chain:
            raise rule_error("chain", "give a policy or a chain, not both")
        if self.all_down == "static" and not self.fallback:
            raise rule_error("fallback", "required when all_down = 'static' (the answers to give when every region is down)")
        if "geolocation" in {s.name for s in self.steps} and not self.geolocation:
            raise rule_error("geolocation", "required by the geolocation step: a map of group to region, '*' for the default")
        if self.fallback and self.all_down != "static":
            raise rule_error("fallback", f"only used with all_down = 'static' (all_down is '{self.all_down}')")
        return self

    @property
    def steps(self) -> tuple[Step, ...]:
        """The filter chain that decides this service: its own, or its named policy's."""
        return self.chain if self.chain else named_chain(self.policy)  # type: ignore[arg-type]

    @property
    def policy_name(self) -> str:
        """The named policy, or 'chain' for a service that writes its own."""
        return self.policy or "chain"


class LabEvent(_Model):
    """[[lab.events]]: an outage (from start to end) or a delay step (from start on) on one lab path."""

    region: Str
    path: Str
    kind: Annotated[str, _choice("event kind", LAB_EVENT_KINDS)]
    start_s: Annotated[Duration, Field(alias="start")]
    end_s: Annotated[OptionalDuration, Field(alias="end")] = None
    delay_s: Annotated[OptionalDuration, Field(alias="delay")] = None

    @model_validator(mode="after")
    def _kind_rules(self) -> "LabEvent":
        if self.kind == "outage":
            if self.end_s is None:
                raise rule_error("end", "required for an outage")
            if self.end_s <= self.start_s:
                raise rule_error("end", f"must be after start ({format_duration(self.start_s)})")
            if self.delay_s is not None:
                raise rule_error("delay", "not allowed for an outage (only a step adds delay)")
        else:
            if self.end_s is not None:
                raise rule_error("end", "not allowed for a step (a step lasts from start on)")
            if self.delay_s is None:
                raise rule_error("delay", "required for a step")
        return self


class LabConfig(_Model):
    """[lab]: the emulated regions' mode, the ports they listen on and their scheduled events."""

    mode: Annotated[str, _choice("mode", LAB_MODES)] = "auto"
    queue_num: Annotated[Int, Field(ge=0, le=65535)] = 7
    tcp_port: Port = 7080
    http_port: Port = 8080
    udp_port: Port = 7007
    events: tuple[LabEvent, ...] = ()


class Config(_Model):
    """The whole config: sections, regions with their paths, client groups, services and the optional lab."""

    agent: AgentConfig = AgentConfig()
    api: ApiConfig = ApiConfig()
    probing: ProbingConfig = ProbingConfig()
    health: HealthConfig = HealthConfig()
    table: TableSettings = TableSettings()
    store: StoreConfig | None = None
    regions: Annotated[tuple[RegionConfig, ...], Field(min_length=1)]
    groups: tuple[GroupConfig, ...] = ()
    services: tuple[ServiceConfig, ...] = ()
    default_group: Name = "default"
    lab: LabConfig | None = None
    dns: DnsConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        return fill_defaults(data)

    @model_validator(mode="after")
    def _cross_references(self, info: ValidationInfo) -> "Config":
        if info.context and info.context.get(SKIP_CROSS_CHECK):
            return self
        problems = cross_reference_problems(self.model_dump(by_alias=True))
        if problems:
            lines = "; ".join(f"{key_path(loc)}: {message}" for loc, message in problems)
            raise PydanticCustomError("config_cross", "{message}", {"problems": problems, "message": lines})
        return self

    def region(self, name: str) -> RegionConfig:
        """The region of that name (KeyError if none)."""
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(name)


def fill_defaults(data: Any) -> Any:
    """Fill defaults that depend on other keys: a group's vantage (the agent) and a service's regions (all of them)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    agent = data.get("agent", {})
    agent_name = agent.name if isinstance(agent, AgentConfig) else agent.get("name", DEFAULT_AGENT_NAME) if isinstance(agent, dict) else None
    groups = data.get("groups")
    # an invalid agent name is reported once, at agent.name, not again at every group's vantage
    if fields.is_name(agent_name) and isinstance(groups, (list, tuple)):
        data["groups"] = [_with_default(g, "vantage", agent_name) for g in groups]
    regions = data.get("regions")
    names = [_get(r, "name") for r in regions] if isinstance(regions, (list, tuple)) else []
    services = data.get("services")
    if names and all(isinstance(n, str) for n in names) and isinstance(services, (list, tuple)):
        # each name once: a repeated region name is reported at the region, not again at every service
        data["services"] = [_with_default(s, "regions", tuple(dict.fromkeys(names))) for s in services]
    return data


def _get(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)


def _with_default(item: Any, key: str, value: Any) -> Any:
    if isinstance(item, dict) and key not in item:
        return {**item, key: value}
    if isinstance(item, BaseModel) and getattr(item, key) in (None, ()):
        return item.model_copy(update={key: value})
    return item
