"""The region-side UDP echo reflector (RFC 862): every datagram goes back to its sender exactly as it came."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from collections.abc import Callable

import asyncio_dgram

from latency_router.aio import run_async
from latency_router.probes.udp import DEFAULT_RCVBUF, parse_udp_url, set_rcvbuf

PROG = "latency-router responder"
MODES = ("fast", "dgram")
# fast (add_reader draining recvfrom_into/sendto) costs ~10 us of CPU per echo against asyncio-dgram's ~18 us (a task wake-up
# and a bytes object per datagram): 39 % of a core at 40,000/s against 72 %, and only dgram overflowed under load.
DEFAULT_MODE = "fast"
_BUFFER = 65536  # more than any UDP payload, so nothing is ever truncated
_DRAIN_MAX = 4096  # datagrams echoed per wake-up before other callbacks get their turn


def format_address(address: tuple) -> str:
    """A bound address as udp://HOST:PORT, IPv6 in brackets."""
    host, port = address[0], address[1]
    return f"udp://[{host}]:{port}" if ":" in host else f"udp://{host}:{port}"


def _bind(host: str, port: int, rcvbuf_bytes: int) -> socket.socket:
    """A non-blocking UDP socket bound to host:port (a name resolves once, here), with a receive buffer for bursts."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        set_rcvbuf(sock, rcvbuf_bytes)
        sock.bind(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


class EchoResponder:
    """A UDP echo server on host:port (0 picks a free port): start() binds and returns the address, stop() closes."""

    def __init__(self, host: str, port: int, *, mode: str = DEFAULT_MODE, rcvbuf_bytes: int = DEFAULT_RCVBUF) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown responder mode {mode!r} (expected one of: {', '.join(MODES)})")
        self.host, self.port, self.mode, self.rcvbuf_bytes = host, port, mode, rcvbuf_bytes
        self.address: tuple | None = None
        self.echoed = 0
        self.errors = 0  # receive errors and echoes the kernel would not send (a full buffer: dropped, as UDP may)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._stream: asyncio_dgram.DatagramServer | None = None
        self._buf = bytearray(_BUFFER)
        self._view = memoryview(self._buf)

    @property
    def url(self) -> str:
        """Where it listens, as udp://HOST:PORT (after start)."""
        if self.address is None:
            raise RuntimeError("the responder is not started")
        return format_address(self.address)

    async def start(self) -> tuple:
        """Bind and start echoing; returns the bound (host, port, ...) address."""
        loop = asyncio.get_running_loop()
        sock = _bind(self.host, self.port, self.rcvbuf_bytes)
        self.address = sock.getsockname()
        self._loop = loop
        if self.mode == "fast":
            self._sock = sock
            loop.add_reader(sock.fileno(), self._on_readable)
        else:
            self._stream = await asyncio_dgram.from_socket(sock)
            self._task = loop.create_task(self._echo_dgram(self._stream, sock), name=f"echo {format_address(self.address)}")
        return self.address

    async def stop(self) -> None:
        """Stop echoing and close the socket."""
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    async def __aenter__(self) -> "EchoResponder":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _on_readable(self) -> None:
        """Echo everything queued, until EAGAIN (bounded); no allocation beyond the sender's address."""
        sock = self._sock
        if sock is None:
            return
        recv, send, buf, view = sock.recvfrom_into, sock.sendto, self._buf, self._view
        echoed = 0
        for _ in range(_DRAIN_MAX):
            try:
                n, peer = recv(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.errors += 1
                continue
            try:
                send(view[:n], peer)
                echoed += 1
            except OSError:
                self.errors += 1
        self.echoed += echoed

    async def _echo_dgram(self, stream: asyncio_dgram.DatagramServer, sock: socket.socket) -> None:
        """The asyncio-dgram path: one await per datagram in, one per datagram out."""
        while True:
            try:
                data, peer = await stream.recv()
                if data:
                    await stream.send(data, peer)
                else:
                    sock.sendto(data, peer)  # asyncio transports silently skip zero-length datagrams; RFC 862 echoes them
                self.echoed += 1
            except asyncio_dgram.TransportClosed:
                return
            except OSError:
                self.errors += 1


async def serve_echo(host: str, port: int, *, ready: asyncio.Event | None = None, mode: str = DEFAULT_MODE,
                     on_listening: Callable[[tuple], None] | None = None) -> None:
    """Echo on host:port until cancelled; ready is set (and on_listening called with the address) once bound."""
    responder = EchoResponder(host, port, mode=mode)
    address = await responder.start()
    try:
        if on_listening is not None:
            on_listening(address)
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        await responder.stop()


async def _run(host: str, port: int, listen_url: str, mode: str) -> int:
    responder = EchoResponder(host, port, mode=mode)
    try:
        address = await responder.start()
    except OSError as exc:
        print(f"{PROG}: cannot listen on {listen_url}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"{PROG}: listening on {format_address(address)} (RFC 862 echo, {mode} mode)", flush=True)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await responder.stop()
    print(f"{PROG}: stopped after echoing {responder.echoed} datagrams ({responder.errors} errors)", file=sys.stderr)
    return 0


def responder_main(listen_url: str, mode: str = DEFAULT_MODE) -> int:
    """Run `latency-router responder --listen udp://HOST:PORT` until SIGINT or SIGTERM; 2 for a bad URL, 1 if it cannot bind."""
    try:
        host, port, query = parse_udp_url(listen_url, allow_port_zero=True)
        if query:
            raise ValueError(f"{listen_url!r}: --listen takes no options")
    except ValueError as exc:
        print(f"{PROG}: --listen {exc}", file=sys.stderr)
        return 2
    return run_async(_run(host, port, listen_url, mode))


def main(argv: list[str] | None = None) -> int:
    """`python -m latency_router.probes.responder`: the same responder, with the mode selectable (for benchmarks)."""
    parser = argparse.ArgumentParser(prog="python -m latency_router.probes.responder", description=__doc__)
    parser.add_argument("--listen", default="udp://0.0.0.0:7007", metavar="udp://HOST:PORT")
    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE)
    args = parser.parse_args(argv)
    return responder_main(args.listen, args.mode)


__all__ = ["DEFAULT_MODE", "MODES", "EchoResponder", "format_address", "responder_main", "serve_echo"]


if __name__ == "__main__":
    sys.exit(main())
