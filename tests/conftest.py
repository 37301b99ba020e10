"""Shared fixtures."""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import os
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

_CLONE_NEWNET = 0x40000000
LoopFactory = Callable[[], asyncio.AbstractEventLoop]
_netns_ids = itertools.count()


class NetNs:
    """A network namespace of its own: its loopback, its sysctls, sockets opened inside it by run()."""

    def __init__(self, name: str) -> None:
        self.name = name

    def sh(self, script: str) -> None:
        """Run a shell script inside the namespace (e.g. to write /proc/sys/net values)."""
        subprocess.run(["ip", "netns", "exec", self.name, "sh", "-ec", script], check=True, timeout=10)

    def run(self, fn: Callable[[], Awaitable[Any]], loop_factory: LoopFactory | None = None) -> Any:
        """Run an async function on a fresh event loop in a thread that has entered the namespace."""
        outcome: dict[str, Any] = {}

        def inside() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
                try:
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    outcome["value"] = runner.run(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome["error"] = exc

        thread = threading.Thread(target=inside, name=f"netns-{self.name}")
        thread.start()
        thread.join(timeout=60)
        if thread.is_alive():
            raise TimeoutError(f"code in network namespace {self.name} did not finish within 60 s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]


@pytest.fixture
def netns() -> Iterator[NetNs]:
    """A fresh network namespace with its loopback down (needs root and iproute2); deleted afterwards."""
    name = f"lr-test-{os.getpid()}-{next(_netns_ids)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield NetNs(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)
