"""systemd's notify protocol (sd_notify): READY=1, RELOADING=1, STOPPING=1 and STATUS= to $NOTIFY_SOCKET, if set."""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("latency_router.sdnotify")


def notify(*fields: str) -> bool:
    """Send the fields (e.g. "READY=1") to the service manager; False when there is none or it cannot be reached."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def reloading() -> bool:
    """RELOADING=1 with the monotonic time systemd's Type=notify-reload asks for."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
