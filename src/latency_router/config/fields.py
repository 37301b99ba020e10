"""Value parsers for config fields: each takes the raw TOML value and returns it typed, or raises ValueError in plain words."""

from __future__ import annotations

import datetime
import ipaddress
import re
from typing import Any

from latency_router.config.countries import COMMON_MISTAKES, COUNTRY_CODES
from latency_router.durations import parse_duration

NAME_CHARS = "letters, digits, '_', '.', '-'"
# all used with fullmatch: '$' would also match before a trailing newline, letting "eu\n" through
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_COUNTRY = re.compile(r"[A-Za-z]{2}")
_LISTEN = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]+)")
PORT_RANGE = "1..65535"


def show(value: Any) -> str:
    """Render a raw TOML value the way the user wrote it, for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date: TOML's date-time literals
        return value.isoformat()
    return _clip(repr(value), len(value) if isinstance(value, str) else len(repr(value)))


def _clip(shown: str, length: int) -> str:
    """Cut the middle out of a value too long to read in one line, saying how long it was."""
    return shown if len(shown) <= 60 else f"{shown[:40]}...{shown[-12:]} ({length} characters)"


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
    if not _NAME.fullmatch(text):
        raise ValueError(f"invalid name {show(text)}: use {NAME_CHARS}")
    return text


def is_name(value: Any) -> bool:
    """True when `name` would accept the value."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def one_of(value: Any, what: str, allowed: tuple[str, ...]) -> str:
    """A string from a fixed set, or an error listing the set."""
    text = _need_str(value, "a string")
    if text not in allowed:
        raise ValueError(f"unknown {what} {show(text)} (expected one of: {', '.join(allowed)})")
    return text


def is_host_name(text: str) -> bool:
    """True for an RFC 1123 host name whose last label is not all digits (so it cannot be a mistyped IPv4)."""
    labels = text[:-1].split(".") if text.endswith(".") else text.split(".")
    if not text or len(text) > 253 or labels[-1].isdigit():
        return False
    return all(_HOST_LABEL.fullmatch(label) for label in labels)


def fqdn(value: Any) -> str:
    """A fully qualified domain name, lower case, ending in '.' (added when missing)."""
    text = _need_str(value, "a domain name (string)")
    name = text.lower().rstrip(".")
    if not name or not is_host_name(name):
        raise ValueError(f"{show(text)} is not a domain name")
    return name + "."


def answer(value: Any) -> str:
    """An IPv4/IPv6 address (kept in its canonical form, without a zone id) or a host name (letters, digits, '-', '.')."""
    text = _need_str(value, "an address or host name (string)")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = None
    if address is not None:
        # ipaddress keeps any text after '%' (spaces, quotes) as the zone id: it would reach DNS servers verbatim
        _no_zone_id(text, "an answer is an address without one")
        return str(address)
    if not is_host_name(text):
        raise ValueError(f"{show(text)} is not an IP address or a host name")
    return text


def cidr(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A network in CIDR notation with no host bits set and no zone id."""
    text = _need_str(value, "a CIDR string such as '192.0.2.0/24'")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        network = None
    if network is not None:
        _no_zone_id(text, "a network is written without one")
        return network
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"invalid CIDR {show(text)}") from None
    _no_zone_id(text, "a network is written without one")
    raise ValueError(f"{show(text)} has host bits set (did you mean '{loose}'?)")


def _no_zone_id(text: str, why: str) -> None:
    """Refuse an address or network that ipaddress parsed with a zone id ('%' can be nothing else in one)."""
    if "%" in text:
        raise ValueError(f"{show(text)} has a zone id (the part after '%'): {why}")


def country(value: Any) -> str:
    """An ISO 3166-1 alpha-2 country code, upper-cased."""
    text = _need_str(value, "a country code (string)")
    if not _COUNTRY.fullmatch(text):
        raise ValueError(f"invalid country code {show(text)}: use an ISO 3166-1 alpha-2 code such as 'GB'")
    code = text.upper()
    if code in COMMON_MISTAKES:
        raise ValueError(f"unknown country code {show(text)}: the ISO 3166-1 code is {COMMON_MISTAKES[code]!r}")
    if code not in COUNTRY_CODES:
        raise ValueError(f"unknown country code {show(text)}: not an ISO 3166-1 alpha-2 code")
    return code


def port(value: Any) -> int:
    """A TCP or UDP port to listen on or connect to: an integer within 1..65535."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected a port number (integer), got {show(value)}")
    if not 1 <= value <= 65535:
        raise ValueError(f"port must be within {PORT_RANGE}, got {show(value)}")
    return value


def secret_ref(value: Any) -> str | None:
    """A secret reference: 'env:NAME' (an environment variable) or 'file:PATH' (a file's first line); never the secret."""
    if value is None:
        return None
    text = _need_str(value, "'env:NAME' or 'file:PATH' (string)")
    kind, sep, rest = text.partition(":")
    if not sep or kind not in ("env", "file") or not rest:
        # never echo the value: it may be the secret itself, pasted where a reference belongs
        raise ValueError("write 'env:NAME' or 'file:PATH' (the secret itself does not belong in the config)")
    if kind == "env" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rest):
        raise ValueError("env: needs an environment variable name (letters, digits, _)")
    return text


def listen(value: Any) -> tuple[str, int]:
    """A 'HOST:PORT' or '[V6]:PORT' listen address as (host, port)."""
    text = _need_str(value, "'HOST:PORT' (string)")
    match = _LISTEN.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid listen address {show(text)}: write HOST:PORT, e.g. '127.0.0.1:9180' or '[::1]:9180'")
    host = match.group("v6") or match.group("host")
    digits = match.group("port")
    if match.group("v6") is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {show(host)} in listen address {show(text)}") from None
    elif not (is_host_name(host) or _is_ipv4(host)):
        raise ValueError(f"invalid host {show(host)} in listen address {show(text)}")
    # port 0 would bind wherever the kernel likes, and nobody could find the API there
    number = int(digits) if len(digits.lstrip("0")) <= 5 else None  # int() of thousands of digits is slow, then refused
    if number is None or not 1 <= number <= 65535:
        raise ValueError(f"port must be within {PORT_RANGE}, got {_clip(digits, len(digits))}")
    return host, number


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

    try:
        parse_url(text)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 -- a parser bug must still be one line naming the key, not a traceback
        raise ValueError(f"cannot parse probe URL {show(text)} ({type(exc).__name__}: {exc})") from None
    return text
