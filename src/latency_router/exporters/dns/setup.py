"""From the config's [dns] to running providers: each provider built with its secrets resolved (never logged)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from latency_router.config.fields import listen
from latency_router.secrets import SecretError, resolve_secret

if TYPE_CHECKING:
    from latency_router.config.models import DnsProviderConfig


class ProviderSetupError(SecretError):
    """A [[dns.providers]] table no provider can be built from (a TSIG secret that is not base64, say); the message
    names the table and key, never a secret. A SecretError, so `run` and `dns plan|apply` print it and exit 2."""


def _host_port(text: str) -> tuple[str, int]:
    host, port = listen(text)
    return host, port


def build_provider(p: "DnsProviderConfig", index: int) -> Any:
    """The provider of one [[dns.providers]] table; SecretError names the key whose secret cannot be read, and
    ProviderSetupError (a SecretError) the key the provider refuses."""
    where = f"dns.providers[{index}]"
    try:
        return _build(p, where)
    except SecretError:
        raise
    except (ValueError, TypeError) as exc:
        raise ProviderSetupError(f"{where}.{exc}") from None


def _build(p: "DnsProviderConfig", where: str) -> Any:
    if p.kind == "powerdns":
        from latency_router.exporters.dns.powerdns import PowerDNSProvider

        return PowerDNSProvider(
            p.api_url or "", resolve_secret(p.api_key or "", f"{where}.api_key"), p.zone, server_id=p.server_id,
            dns_server=_host_port(p.dns_server) if p.dns_server else None, name=p.name,
        )
    if p.kind == "rfc2136":
        from latency_router.exporters.dns.rfc2136 import Rfc2136Provider

        views = {
            group: (v.key_name, resolve_secret(v.key_secret, f"{where}.views.{group}.key_secret"))
            for group, v in p.views.items()
        }
        return Rfc2136Provider(
            _host_port(p.server or ""), p.zone, p.key_name or "", resolve_secret(p.key_secret or "", f"{where}.key_secret"),
            algorithm=p.algorithm, views=views or None, max_answers=p.max_answers, name=p.name,
        )
    if p.kind == "route53":
        from latency_router.exporters.dns.route53 import Route53Provider

        keys = {}
        if p.access_key and p.secret_key:
            keys = {"access_key": resolve_secret(p.access_key, f"{where}.access_key"),
                    "secret_key": resolve_secret(p.secret_key, f"{where}.secret_key")}
        return Route53Provider(p.hosted_zone_id or "", endpoint_url=p.endpoint_url, region=p.region, name=p.name, **keys)
    raise ValueError(f"kind: unknown kind {p.kind!r}")
