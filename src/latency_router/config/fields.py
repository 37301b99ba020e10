"""Value parsers for config fields: each takes the raw TOML value and returns it typed, or raises ValueError in plain words."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from latency_router.durations import parse_duration

NAME_CHARS = "letters, digits, '_', '.', '-'"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_COUNTRY = re.compile(r"^[A-Za-z]{2}$")
_LISTEN = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d+)$")


def show(value: Any) -> str:
    """Render a raw TOML value the way the user wrote it, for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    return repr(value)


def _need_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected {what}, got {show(value)}")
    return value


def duration(value: Any) -> float:
    """A duration string such as '250ms' in seconds."""
    if not isinstance(value, str):
        raise ValueError(f"expected a duration string such as '250ms' or '2s', got {show(value)}")
    return parse_duration(value)


def name(value: Any) -> str:
    """A region, path, group, service or agent name: non-empty, from a small safe charset."""
    text = _need_str(value, "a name (string)")
    if not text:
        raise ValueError("must not be empty")
    if not _NAME.match(text):
        raise ValueError(f"invalid name {text!r}: use {NAME_CHARS}")
    return text


def one_of(value: Any, what: str, allowed: tuple[str, ...]) -> str:
    """A string from a fixed set, or an error listing the set."""
    text = _need_str(value, "a string")
    if text not in allowed:
        raise ValueError(f"unknown {what} {text!r} (expected one of: {', '.join(allowed)})")
    return text


def is_host_name(text: str) -> bool:
    """True for an RFC 1123 host name whose last label is not all digits (so it cannot be a mistyped IPv4)."""
    labels = text[:-1].split(".") if text.endswith(".") else text.split(".")
    if not text or len(text) > 253 or labels[-1].isdigit():
        return False
    return all(_HOST_LABEL.match(label) for label in labels)


def answer(value: Any) -> str:
    """An IPv4/IPv6 address (kept in its canonical form) or a host name."""
    text = _need_str(value, "an address or host name (string)")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not is_host_name(text):
        raise ValueError(f"{text!r} is not an IP address or a host name")
    return text


def cidr(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A network in CIDR notation with no host bits set."""
    text = _need_str(value, "a CIDR string such as '192.0.2.0/24'")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"invalid CIDR {text!r}") from None
    raise ValueError(f"{text!r} has host bits set (did you mean '{loose}'?)")


def country(value: Any) -> str:
    """An ISO 3166-1 alpha-2 country code, upper-cased."""
    text = _need_str(value, "a country code (string)")
    if not _COUNTRY.match(text):
        raise ValueError(f"invalid country code {text!r}: use an ISO 3166-1 alpha-2 code such as 'GB'")
    return text.upper()


def listen(value: Any) -> tuple[str, int]:
    """A 'HOST:PORT' or '[V6]:PORT' listen address as (host, port)."""
    text = _need_str(value, "'HOST:PORT' (string)")
    match = _LISTEN.match(text)
    if match is None:
        raise ValueError(f"invalid listen address {text!r}: write HOST:PORT, e.g. '127.0.0.1:9180' or '[::1]:9180'")
    host = match.group("v6") or match.group("host")
    port = int(match.group("port"))
    if match.group("v6") is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host!r} in listen address {text!r}") from None
    elif not (is_host_name(host) or _is_ipv4(host)):
        raise ValueError(f"invalid host {host!r} in listen address {text!r}")
    if port > 65535:
        raise ValueError(f"port {port} out of range (0-65535)")
    return host, port


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def probe_url(value: Any) -> str:
    """A probe URL, validated by its kind's parse_url (no socket is opened)."""
    text = _need_str(value, "a probe URL (string)")
    from latency_router.probes import parse_url  # the registry imports every probe kind; only needed here

    parse_url(text)
    return text
