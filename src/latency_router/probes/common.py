"""What the probe kinds share: URL checks, a per-target address cache, error mapping, kernel receive timestamps."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import platform
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Collection
from urllib.parse import SplitResult, parse_qsl, urlsplit

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


def loss_of_exception(
    exc: BaseException, timeout_detail: str, timeouts: tuple[type[BaseException], ...] = (TimeoutError,)
) -> tuple[LossReason, str]:
    """A probe's exception as (reason, detail): a timeout says `timeout_detail`, an OSError its errno's reason."""
    if isinstance(exc, timeouts):
        return LossReason.TIMEOUT, timeout_detail
    if isinstance(exc, OSError):
        return loss_of_oserror(exc), describe(exc)
    return LossReason.ERROR, describe(exc)


def describe(exc: BaseException) -> str:
    """An exception as one line of Sample.detail: its type and its text."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----- URLs

_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}\.?$){_LABEL}(\.{_LABEL})*\.?$")
_NUMERIC_LABEL = re.compile(r"^[0-9]+$")
PORT_RANGE = "the port must be a number within 1..65535"


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The host as an IP address when it is one, else None (a name, looked up at probe time)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_host(url: str, host: str) -> None:
    """Refuse a host that is neither an IP address nor a host name (empty labels, NUL, spaces, non-ASCII, ...)."""
    if "%" in host:
        raise ValueError(f"{url!r}: IPv6 zone IDs ('%' in the address) are not supported")
    if ip_literal(host) is not None:
        return
    # A name whose last label is all digits (127.1, 2130706433) would be read by the resolver as an IPv4 address.
    if _HOST_NAME.match(host) and not _NUMERIC_LABEL.match(host.rstrip(".").rsplit(".", 1)[-1]):
        return
    hint = " (write an international name in its xn-- form)" if not host.isascii() else ""
    raise ValueError(f"{url!r}: {host!r} is neither an IP address nor a host name{hint}")


def split_target(url: str, scheme: str, *, allow_port_zero: bool = False) -> SplitResult:
    """urlsplit with the scheme, host and port checked, raising ValueError in the URL's own words."""
    if not isinstance(url, str):
        raise ValueError(f"expected a {scheme}:// URL, got {url!r}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed '[' or a netloc that NFKC normalization changes
        raise ValueError(f"{url!r}: {exc}") from None
    if parts.scheme.lower() != scheme:
        raise ValueError(f"expected a {scheme}:// URL, got {url!r}")
    hostport = parts.netloc.rpartition("@")[2]
    if hostport.count(":") > 1 and "[" not in hostport:
        raise ValueError(f"{url!r}: write an IPv6 address in brackets, e.g. {scheme}://[::1]")
    if not parts.hostname:
        raise ValueError(f"{url!r}: missing HOST")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: {PORT_RANGE}") from None
    if port is None and hostport.endswith(":"):
        raise ValueError(f"{url!r}: empty port after ':' (write HOST:PORT, or no ':')")
    if port == 0 and not allow_port_zero:
        raise ValueError(f"{url!r}: {PORT_RANGE}")
    check_host(url, parts.hostname)
    return parts


def query_options(url: str, query: str, allowed: Collection[str] | None, expected: str = "") -> dict[str, str]:
    """The query as {key: value}, each key at most once and (when allowed is given) one of allowed."""
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if allowed is not None and key not in allowed:
            raise ValueError(f"{url!r}: unknown option {key!r}" + (f" ({expected})" if expected else ""))
        if key in options:
            raise ValueError(f"{url!r}: {key!r} given twice")
        options[key] = value
    if query and not options:
        raise ValueError(f"{url!r}: cannot read the query {query!r}")
    return options


def parse_flag(url: str, key: str, value: str) -> bool:
    """A boolean query option written 1/0, true/false, yes/no or on/off."""
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"{url!r}: {key}={value!r} must be 1 or 0")


# ----- addresses

REFRESH_S = 60.0  # a name's addresses are looked up again, in the background, this long after the last lookup
RETRY_S = 1.0  # after a failed lookup (or a failed probe) with addresses in hand, the soonest next lookup

Address = tuple[int, tuple]  # (family, sockaddr)


def _literal_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> Address:
    if ip.version == 6:
        return socket.AF_INET6, (str(ip), port, 0, 0)
    return socket.AF_INET, (str(ip), port)


class AddressCache:
    """One target's addresses: an IP literal as it is; a name looked up once, then refreshed in the background.

    At most one lookup per target is ever in flight, each in a thread of its own: a probe's timeout stops its
    wait, not the lookup, so a slow name can neither pile lookups up nor (as it would in the loop's small shared
    pool: 6 threads on asyncio here, 4 on uvloop's libuv) hold up the lookups of the other targets.
    """

    def __init__(self, host: str, port: int, socktype: int, *, refresh_s: float = REFRESH_S,
                 retry_s: float = RETRY_S) -> None:
        self.host, self.port, self.socktype = host, port, socktype
        self.refresh_s, self.retry_s = refresh_s, retry_s
        ip = ip_literal(host)
        self.literal = ip is not None
        self._addresses: list[Address] | None = [_literal_address(ip, port)] if ip is not None else None
        self._looked_up_at = 0.0  # time.monotonic() when the last lookup ended (either way)
        self._failed = False
        self._task: asyncio.Task | None = None
        self.lookups = 0  # lookups started, for tests and stats

    @property
    def in_flight(self) -> bool:
        """Whether a lookup for this target is running now."""
        return self._live_task() is not None

    def cached(self) -> list[Address] | None:
        """The addresses at hand (None before the first lookup succeeded); starts a refresh when one is due."""
        if not self.literal and self._refresh_due():
            self._start()
        return self._addresses

    async def get(self) -> list[Address]:
        """The addresses: the cached ones at once, else the result of the (one) lookup in flight."""
        addresses = self.cached()
        if addresses is not None:
            return addresses
        return await self.lookup()

    async def first(self) -> Address:
        """The first address, as getaddrinfo ordered them."""
        return (await self.get())[0]

    async def lookup(self) -> list[Address]:
        """A fresh lookup: join the one in flight or start it; a cancelled wait leaves the lookup running."""
        if self.literal:
            return self._addresses  # type: ignore[return-value]
        task = self._live_task() or self._start()
        return await asyncio.shield(task)

    def refresh_soon(self) -> None:
        """A probe to these addresses failed: look the name up again (in the background, rate-limited)."""
        if not self.literal and self._live_task() is None and time.monotonic() - self._looked_up_at >= self.retry_s:
            self._start()

    def _refresh_due(self) -> bool:
        if self._live_task() is not None:
            return False
        age = time.monotonic() - self._looked_up_at
        if self._addresses is None:
            return True  # nothing in hand: every probe may ask (still one lookup at a time)
        return age >= (self.retry_s if self._failed else self.refresh_s)

    def _live_task(self) -> asyncio.Task | None:
        task = self._task
        if task is None or task.done():
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return task
        if task.get_loop() is not loop:
            return None  # a lookup on another (likely finished) loop cannot be awaited here
        return task

    def _start(self) -> asyncio.Task:
        loop = asyncio.get_running_loop()
        self.lookups += 1
        task = self._task = loop.create_task(self._resolve(loop), name=f"resolve {self.host}")
        task.add_done_callback(_consume)
        return task

    async def _resolve(self, loop: asyncio.AbstractEventLoop) -> list[Address]:
        try:
            infos = await _getaddrinfo(loop, self.host, self.port, self.socktype)
            addresses: list[Address] = []
            for family, _, _, _, sockaddr in infos:
                if (family, sockaddr) not in addresses:
                    addresses.append((family, sockaddr))
            if not addresses:
                raise OSError(errno.EHOSTUNREACH, f"no address for {self.host!r}")
        except BaseException:
            self._failed, self._looked_up_at = True, time.monotonic()
            raise
        self._addresses, self._failed, self._looked_up_at = addresses, False, time.monotonic()
        return addresses


def _getaddrinfo(loop: asyncio.AbstractEventLoop, host: str, port: int, socktype: int) -> asyncio.Future:
    """socket.getaddrinfo in a daemon thread of its own (a lookup that hangs never holds up exit), as a future."""
    future: asyncio.Future = loop.create_future()

    def settle(result: list | None, error: BaseException | None) -> None:
        if not future.done():
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    def work() -> None:
        result, error = None, None
        try:
            result = socket.getaddrinfo(host, port, 0, socktype)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting loop
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop closed meanwhile: nobody is waiting

    threading.Thread(target=work, name=f"resolve {host}", daemon=True).start()
    return future


def _consume(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # read, so that a lookup nobody waited for logs no "exception was never retrieved"


# ----- kernel receive timestamps

# Socket options by number where Python's socket module lacks them. The values are asm-generic Linux; a few
# architectures (alpha, mips, parisc, sparc) number them differently, and there we go without.
GENERIC_LINUX = sys.platform == "linux" and platform.machine().lower() in (
    "x86_64", "amd64", "i386", "i686", "aarch64", "arm64", "armv7l", "armv8l", "riscv64", "ppc64le", "ppc64", "s390x",
    "loongarch64")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if GENERIC_LINUX else None)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40 if GENERIC_LINUX else None)

_TIMESPEC = struct.Struct("@ll")  # struct timespec of SCM_TIMESTAMPNS (time_t and long are both native long)
_U32 = struct.Struct("@I")
RX_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_U32.size) + 64
_SOL_SOCKET = socket.SOL_SOCKET

CLOCK_KERNEL, CLOCK_USER, CLOCK_STEPPED = "kernel", "user", "stepped"
CLOCK_SLACK_NS = 1_000_000  # a kernel RTT this far above the monotonic one means the wall clock stepped


def enable_option(sock: socket.socket, level: int, option: int | None) -> bool:
    """Set a boolean socket option; False where the platform lacks it or refuses."""
    if option is None:
        return False
    try:
        sock.setsockopt(level, option, 1)
    except OSError:
        return False
    return True


def enable_rx_timestamps(sock: socket.socket) -> bool:
    """Ask for SO_TIMESTAMPNS and SO_RXQ_OVFL on every datagram read; returns whether timestamps are on."""
    enable_option(sock, _SOL_SOCKET, SO_RXQ_OVFL)
    return enable_option(sock, _SOL_SOCKET, SO_TIMESTAMPNS)


def read_rx_cmsgs(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, int | None]:
    """(kernel receive time in wall-clock ns, 0 without one; the socket's running drop count, None without one)."""
    rx_ns, drops = 0, None
    for level, kind, data in ancdata:
        if level == _SOL_SOCKET:
            if kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
                sec, nsec = _TIMESPEC.unpack_from(data)
                rx_ns = sec * 1_000_000_000 + nsec
            elif kind == SO_RXQ_OVFL and len(data) >= _U32.size:
                drops = _U32.unpack_from(data)[0]
    return rx_ns, drops


def pair_rtt(rx_wall_ns: int, sent_wall_ns: int, sent_perf_ns: int, now_perf_ns: int) -> tuple[int, str]:
    """(RTT in ns, which clock): the kernel receive stamp minus the wall-clock send time, bounded by the monotonic
    RTT measured around it; the monotonic RTT itself without a stamp or when the wall clock stepped meanwhile."""
    monotonic_ns = now_perf_ns - sent_perf_ns
    if rx_wall_ns:
        rtt = rx_wall_ns - sent_wall_ns
        if 0 <= rtt <= monotonic_ns + CLOCK_SLACK_NS:
            return rtt, CLOCK_KERNEL
        return monotonic_ns, CLOCK_STEPPED
    return monotonic_ns, CLOCK_USER


class DropCounter:
    """Turns a socket's running 32-bit drop count (SO_RXQ_OVFL, SK_MEMINFO_DROPS) into increments, across a wrap."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen = 0

    def delta(self, total: int) -> int:
        """The drops since the last reading of this counter (0 when it did not move or went back)."""
        delta = (total - self.seen) & 0xFFFFFFFF
        self.seen = total
        return delta if delta < 1 << 31 else 0  # "backwards" by more than half the range: a reset, not 4 G drops


__all__ = [
    "CLOCK_KERNEL", "CLOCK_STEPPED", "CLOCK_USER", "GENERIC_LINUX", "RX_CMSG_SPACE", "SO_RXQ_OVFL", "SO_TIMESTAMPNS",
    "AddressCache",
    "DropCounter", "check_host", "describe", "enable_option", "enable_rx_timestamps", "ip_literal", "loss_of_oserror",
    "pair_rtt", "parse_flag", "query_options", "read_rx_cmsgs", "split_target",
]
