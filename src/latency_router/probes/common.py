"""URL parsing, address resolution and error mapping shared by the probe kinds."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

from latency_router.probes.base import LossReason

_LOSS_BY_ERRNO = {
    errno.ECONNREFUSED: LossReason.REFUSED,
    errno.EHOSTUNREACH: LossReason.UNREACHABLE,
    errno.ENETUNREACH: LossReason.UNREACHABLE,
    errno.EHOSTDOWN: LossReason.UNREACHABLE,
    errno.ECONNRESET: LossReason.RESET,
    errno.ECONNABORTED: LossReason.RESET,
    errno.EPIPE: LossReason.RESET,
    errno.ETIMEDOUT: LossReason.TIMEOUT,
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def loss_of_oserror(exc: OSError) -> LossReason:
    """The loss reason an OSError stands for (refused, unreachable, reset, timeout), else ERROR."""
    return _LOSS_BY_ERRNO.get(exc.errno or 0, LossReason.ERROR)


def describe(exc: BaseException) -> str:
    """An exception as one line of Sample.detail: its type and its text."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def split_target(url: str, scheme: str) -> SplitResult:
    """urlsplit with the scheme checked and the port validated, raising ValueError in the URL's own words."""
    parts = urlsplit(url)
    if parts.scheme.lower() != scheme:
        raise ValueError(f"expected a {scheme}:// URL, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"{url!r}: missing HOST")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number within 1..65535") from None
    if parts.port == 0:
        raise ValueError(f"{url!r}: the port must be a number within 1..65535")
    return parts


def parse_flag(url: str, key: str, value: str) -> bool:
    """A boolean query option written 1/0, true/false, yes/no or on/off."""
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"{url!r}: {key}={value!r} must be 1 or 0")


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The host as an IP address when it is one, else None (a name resolved at probe time)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def resolve(host: str, port: int, socktype: int) -> tuple[int, tuple]:
    """(family, sockaddr) for a host: IP literals directly, names through the loop's resolver (first answer)."""
    ip = ip_literal(host)
    if ip is not None:
        return (socket.AF_INET6, (str(ip), port, 0, 0)) if ip.version == 6 else (socket.AF_INET, (str(ip), port))
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socktype)
    if not infos:
        raise OSError(errno.EHOSTUNREACH, f"no address for {host!r}")
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr
