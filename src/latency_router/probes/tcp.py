"""tcp://HOST:PORT: a non-blocking connect; the RTT is the kernel's TCP_INFO.tcpi_rtt of the handshake."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import ClassVar

from latency_router.probes.base import EngineCounters, Sample, wall_now
from latency_router.probes.common import AddressCache, loss_of_exception, split_target

# struct tcp_info (linux/tcp.h): 8 one-byte fields, then 32-bit fields; tcpi_rtt is the 16th of those
# (byte offset 68), tcpi_total_retrans the 24th (offset 100). A kernel that fills less gets no tcpi_rtt reading.
_TCP_INFO = struct.Struct("=8B24I")
_RTT, _TOTAL_RETRANS = 8 + 15, 8 + 23

@dataclass(frozen=True, slots=True)
class TcpSpec:
    """A parsed tcp:// target."""

    url: str
    host: str
    port: int


def read_tcp_info(sock: socket.socket) -> tuple[int, int, int] | None:
    """(tcpi_state, tcpi_rtt in microseconds, tcpi_total_retrans), or None where TCP_INFO is missing."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None
    raw = sock.getsockopt(socket.IPPROTO_TCP, option, _TCP_INFO.size)
    if len(raw) < _TCP_INFO.size:
        return None
    fields = _TCP_INFO.unpack_from(raw)
    return fields[0], fields[_RTT], fields[_TOTAL_RETRANS]


class TcpProber:
    """Connects to HOST:PORT once per probe and reports the handshake RTT the kernel measured."""

    kind: ClassVar[str] = "tcp"
    phased: ClassVar[bool] = True  # its samples carry phases (connect, tcpi_rtt)

    def __init__(self, spec: TcpSpec, counters: EngineCounters | None = None) -> None:
        self.spec = spec
        self.url = spec.url
        self.counters = counters
        self._address = AddressCache(spec.host, spec.port, socket.SOCK_STREAM)

    @classmethod
    def parse_url(cls, url: str) -> TcpSpec:
        """Validate tcp://HOST:PORT without opening anything."""
        parts = split_target(url, "tcp")
        if parts.port is None:
            raise ValueError("tcp://HOST:PORT needs a port")
        if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in url:
            raise ValueError(f"{url!r}: tcp://HOST:PORT takes no path or query")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"{url!r}: tcp://HOST:PORT takes no user or password")
        return TcpSpec(url=url, host=parts.hostname, port=parts.port)

    async def probe(self, timeout_s: float) -> Sample:
        """One connect; a refused, unreachable, reset or timed-out handshake is a lost Sample."""
        sent_at = wall_now()
        try:
            async with asyncio.timeout(timeout_s):
                family, addr = await self._address.first()
                connect_ns, info = await self._connect(family, addr)
        except Exception as exc:  # noqa: BLE001 - one bad target is a lost sample, never an exception
            self._address.refresh_soon()  # the name may point elsewhere by now (rate-limited)
            reason, detail = loss_of_exception(exc, f"no handshake within {timeout_s * 1e3:g} ms")
            return Sample.lost(self.url, self.kind, sent_at, reason, detail)
        connect_ms = connect_ns / 1e6
        if info is None or info[1] == 0:
            # No kernel sample (no TCP_INFO, or Karn's rule after a retransmitted SYN): say so and use the wall clock.
            detail = "no tcpi_rtt sample: rtt is the wall-clock connect"
            phases = {"connect": connect_ms}
            return Sample(self.url, self.kind, sent_at, rtt_ms=connect_ms, detail=detail, phases_ms=phases)
        rtt_ms = info[1] / 1e3
        detail = "tcpi_rtt of the handshake" + (f" ({info[2]} retransmissions)" if info[2] else "")
        phases = {"connect": connect_ms, "tcpi_rtt": rtt_ms}
        return Sample(self.url, self.kind, sent_at, rtt_ms=rtt_ms, detail=detail, phases_ms=phases)

    async def _connect(self, family: int, addr: tuple) -> tuple[int, tuple[int, int, int] | None]:
        """Connect without blocking; returns (wall-clock connect in ns, TCP_INFO read as soon as it completed)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            done: asyncio.Future[tuple[int, int, tuple[int, int, int] | None]] = loop.create_future()

            def on_writable() -> None:
                # Stamp and read the kernel state here, in the loop's callback, before any await can queue.
                end = time.perf_counter_ns()
                if done.done():
                    return
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                done.set_result((end, err, None if err else read_tcp_info(sock)))

            start = time.perf_counter_ns()
            err = sock.connect_ex(addr)
            if err == 0:
                end, info = time.perf_counter_ns(), read_tcp_info(sock)
            elif err not in (errno.EINPROGRESS, errno.EAGAIN):
                raise OSError(err, os.strerror(err))
            else:
                loop.add_writer(sock.fileno(), on_writable)
                try:
                    end, err, info = await done
                finally:
                    loop.remove_writer(sock.fileno())
                if err:
                    raise OSError(err, os.strerror(err))
            return end - start, info
        finally:
            # A plain close (FIN, not an RST from SO_LINGER 0): servers then see an ordinary short connection.
            sock.close()

    async def aclose(self) -> None:
        """Nothing to release: each probe closes its own socket."""


__all__ = ["TcpProber", "TcpSpec", "read_tcp_info"]
