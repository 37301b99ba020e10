"""A running `latency-router run` for integration tests: a config from the lab example, a free port, bounded waits."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LAB_EXAMPLE = (ROOT / "examples" / "lab.toml").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_config(port: int, *, extra_top: str = "", events: str | None = None, services: str | None = None,
               token_env: str | None = None) -> str:
    """The lab example listening on `port`; `extra_top` goes before the first table, `events` replaces its lab events,
    `services` its [[services]] tables; `token_env` turns the admin endpoints on with the token in that variable."""
    token = f'\ntoken = "env:{token_env}"' if token_env else ""
    text = LAB_EXAMPLE.replace('listen = "127.0.0.1:9180"', f'listen = "127.0.0.1:{port}"{token}')
    assert f"127.0.0.1:{port}" in text
    if events is not None:
        text = re.sub(r"\n# us-east-1's direct path.*?end = \"90s\"\n", "\n" + events + "\n", text, flags=re.S)
    if services is not None:
        text = text[: text.index("[[services]]")] + services
    return extra_top + text


def outages(paths, start_s: float, end_s: float = 600.0) -> str:
    """[[lab.events]] tables for lab_config(events=...): each (region, path) dark from start_s to end_s (lab time)."""
    return "".join(f'[[lab.events]]\nregion = "{r}"\npath = "{p}"\nkind = "outage"\nstart = "{start_s:g}s"\n'
                   f'end = "{end_s:g}s"\n\n' for r, p in paths)


class Daemon:
    """`latency-router run -c CONFIG` in a subprocess; stdout and stderr go to files in `workdir`. `log_level` (e.g.
    "DEBUG") is passed as `run --log-level`; None keeps the daemon's default (info)."""

    def __init__(self, workdir: Path, config: str, env: dict[str, str] | None = None,
                 log_level: str | None = None) -> None:
        self.workdir = workdir
        self.config_path = workdir / "config.toml"
        self.config_path.write_text(config)
        self.port = int(re.search(r'listen = "127\.0\.0\.1:(\d+)"', config).group(1))  # type: ignore[union-attr]
        self.out = (workdir / "stdout.txt").open("w+")
        self.err = (workdir / "stderr.txt").open("w+")
        level = [] if log_level is None else ["--log-level", log_level]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "latency_router", "run", "-c", str(self.config_path), *level],
            stdout=self.out, stderr=self.err, cwd=workdir, env={**os.environ, **(env or {})},
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, path: str, *, method: str = "GET", body: Any = None, token: str | None = None,
                timeout: float = 5.0) -> tuple[int, Any]:
        """(status, decoded JSON or text) of one request."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url(path), data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, raw, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        return status, json.loads(raw) if "json" in ctype else raw.decode()

    def wait_until(self, check, timeout_s: float, what: str, poll_s: float = 0.1):
        """Poll check() (a falsy result or a connection error: not yet) until it returns something truthy."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) while waiting for {what}: {self.stderr()[-3000:]}")
            try:
                last = check()
            except (OSError, urllib.error.URLError) as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(poll_s)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last: {last!r}; stderr: {self.stderr()[-3000:]}")

    def wait_serving(self, timeout_s: float = 20.0) -> None:
        self.wait_until(lambda: self.request("/healthz", timeout=1.0)[0] == 200, timeout_s, "/healthz")

    def stdout(self) -> str:
        """Everything the daemon wrote to stdout so far (also after close())."""
        if not self.out.closed:
            self.out.flush()
        return Path(self.out.name).read_text(errors="replace")

    def stderr(self) -> str:
        """Everything the daemon wrote to stderr so far (also after close())."""
        if not self.err.closed:
            self.err.flush()
        return Path(self.err.name).read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not exit in time (and say so)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"daemon did not stop within {timeout_s} s of SIGTERM")
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        self.out.close()
        self.err.close()
