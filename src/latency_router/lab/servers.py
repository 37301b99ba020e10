"""The lab's TCP and HTTP listeners, in their own process so that a busy prober never slows their replies.

In nfqueue mode they answer at once (the kernel path adds the delay, handshakes included). In userspace
mode they hold each reply themselves: the TCP listener delays the data it echoes (its handshake cannot be
delayed from user space) and the HTTP handler waits before answering.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import sys
import time
from typing import Any

from aiohttp import web

from latency_router.lab.spec import Impairment

TERM_GRACE_S = 2.0
# listen backlog: 1,000 connects in flight overflow the default 100-128 (the kernel caps it at somaxconn)
BACKLOG = 4096
LOST_HOLD_S = 30.0  # a "lost" user-space reply is never sent; the connection is closed after this long


class Servers:
    """Every path's TCP echo listener and HTTP server, with user-space holds when asked."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.userspace = cfg["mode"] == "userspace"
        self.paths: list[dict[str, Any]] = cfg["paths"]
        self.imp = {p["address"]: Impairment.from_json(p["impairment"]) for p in self.paths}
        self.rng = random.Random(cfg.get("seed"))
        self.t0_ns: int | None = None
        self.counts = {"tcp_accepted": 0, "http_requests": 0, "held": 0, "not_answered": 0}
        self.tcp_servers: list[asyncio.base_events.Server] = []
        self.runner: web.AppRunner | None = None
        self.done = asyncio.Event()

    async def open(self) -> None:
        for p in self.paths:
            try:
                self.tcp_servers.append(
                    await asyncio.start_server(self._tcp_client, p["address"], p["tcp_port"], reuse_address=True,
                                               backlog=BACKLOG)
                )
            except OSError as exc:
                raise RuntimeError(f"{p['key']}: cannot listen on tcp {p['address']}:{p['tcp_port']}: {exc.strerror}") from None
        app = web.Application()
        app.router.add_get("/", self._http_root)
        app.router.add_get("/{tail:.*}", self._http_root)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        for p in self.paths:
            site = web.TCPSite(self.runner, p["address"], p["http_port"], reuse_address=True, backlog=BACKLOG)
            try:
                await site.start()
            except OSError as exc:
                raise RuntimeError(f"{p['key']}: cannot listen on http {p['address']}:{p['http_port']}: {exc.strerror}") from None

    async def close(self) -> None:
        for s in self.tcp_servers:
            s.close()
        if self.runner is not None:
            await self.runner.cleanup()

    def _hold_s(self, address: str, rx_ns: int) -> float | None:
        """Seconds still to wait before answering a request received at rx_ns; None when it is never answered."""
        imp = self.imp.get(address)
        if not self.userspace or imp is None or self.t0_ns is None:
            return 0.0
        t_s = (rx_ns - self.t0_ns) / 1e9
        if imp.down(t_s) or (imp.loss and self.rng.random() < imp.loss):
            return None
        delay = imp.delay_at(t_s)
        if imp.jitter_s:
            delay += self.rng.uniform(-imp.jitter_s, imp.jitter_s)
        return max(0.0, delay - (time.perf_counter_ns() - rx_ns) / 1e9)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Keep the connection and echo what arrives (held in userspace mode); close when the peer does."""
        self.counts["tcp_accepted"] += 1
        address = writer.get_extra_info("sockname")[0]
        try:
            while True:
                data = await reader.read(65536)
                rx_ns = time.perf_counter_ns()
                if not data:
                    break
                hold = self._hold_s(address, rx_ns)
                if hold is None:
                    self.counts["not_answered"] += 1
                    continue
                if hold > 0:
                    self.counts["held"] += 1
                    await asyncio.sleep(hold)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _http_root(self, request: web.Request) -> web.Response:
        rx_ns = time.perf_counter_ns()
        self.counts["http_requests"] += 1
        address = request.transport.get_extra_info("sockname")[0] if request.transport else ""
        hold = self._hold_s(address, rx_ns)
        if hold is None:
            self.counts["not_answered"] += 1
            await asyncio.sleep(LOST_HOLD_S)
            raise web.HTTPServiceUnavailable(text="lost")
        if hold > 0:
            self.counts["held"] += 1
            await asyncio.sleep(hold)
        return web.Response(text="ok")

    def command(self, msg: dict[str, Any]) -> dict[str, Any]:
        cmd = msg.get("cmd")
        if cmd == "go":
            self.t0_ns = int(msg["t0_ns"])
            return {"ok": True}
        if cmd == "stats":
            return dict(self.counts)
        if cmd == "stop":
            self.done.set()
            return {"ok": True}
        return {"error": f"unknown command {cmd!r}"}


async def _serve(ctrl: socket.socket, cfg: dict[str, Any]) -> int:
    loop = asyncio.get_running_loop()
    servers = Servers(cfg)
    try:
        try:
            await servers.open()
        except RuntimeError as exc:
            await loop.sock_sendall(ctrl, json.dumps({"ready": False, "error": str(exc)}).encode())
            return 1
        await loop.sock_sendall(ctrl, json.dumps({"ready": True}).encode())
        # SIGTERM often reaches the whole group: let the parent stop us in order, or leave after a grace period
        loop.add_signal_handler(signal.SIGTERM, lambda: loop.call_later(TERM_GRACE_S, servers.done.set))
        while not servers.done.is_set():
            recv = asyncio.ensure_future(loop.sock_recv(ctrl, 1 << 20))
            stop = asyncio.ensure_future(servers.done.wait())
            await asyncio.wait({recv, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not recv.done():
                recv.cancel()
                break
            data = recv.result()
            if not data:
                break  # the parent went away
            msg = json.loads(data)
            await loop.sock_sendall(ctrl, json.dumps({**servers.command(msg), "id": msg.get("id")}).encode())
    finally:
        await servers.close()
    return 0


def main(argv: list[str]) -> int:
    """Entry point of the listeners' process: `python -m latency_router.lab.servers CTRL_FD`."""
    ctrl = socket.socket(fileno=int(argv[1]))
    # Ctrl-C reaches the whole process group; the parent decides when the lab stops (EOF on ctrl if it dies)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cfg = json.loads(ctrl.recv(1 << 20))
    except (OSError, ValueError):
        return 2
    ctrl.setblocking(False)
    loop_factory = None
    if cfg["mode"] != "userspace":
        # the kernel path holds every reply, so these listeners only answer, at once: uvloop answers a request
        # in about two thirds of asyncio's time; user-space holds keep asyncio, whose timers are not rounded
        # to milliseconds as uvloop's are
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(ctrl, cfg))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
