"""A real PowerDNS Authoritative server for tests: pdns_server with a fresh SQLite database, on 127.0.0.1 free ports."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping

import dns.exception
import dns.message
import dns.query

from support import installed

SCHEMA_PATHS = (  # where Debian's pdns-backend-sqlite3 ships the schema, newest layout first
    Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql"),
    Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql"),
)
START_TIMEOUT_S = 20.0


def pdns_binary() -> str:
    """pdns_server's path; CI installs it (scripts/setup-system), so only a local run without it may skip."""
    return installed("pdns_server", "pdns-server", "/usr/sbin/pdns_server")


def schema_path() -> Path:
    for path in SCHEMA_PATHS:
        if path.is_file():
            return path
    raise RuntimeError("the gsqlite3 schema is missing: scripts/setup-system installs pdns-backend-sqlite3")


def free_ports() -> tuple[int, int]:
    """A port free for both UDP and TCP on 127.0.0.1 (DNS), and a free TCP port (the API)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        with socket.socket() as api:
            api.bind(("127.0.0.1", 0))
            if api.getsockname()[1] != port:
                return port, api.getsockname()[1]
    raise RuntimeError("no free port pair found on 127.0.0.1")


class PowerDNS:
    """One pdns_server in `workdir` (its config, database, control socket and log), stopped by stop()."""

    def __init__(self, workdir: Path, api_key: str, settings: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.api_key = api_key
        self.settings = dict(settings or {})  # pdns.conf lines over the defaults: {"edns-subnet-processing": "no"}
        self.dns_port, self.api_port = 0, 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def dns_server(self) -> tuple[str, int]:
        return ("127.0.0.1", self.dns_port)

    def start(self) -> None:
        binary, schema = pdns_binary(), schema_path()
        database = self.workdir / "pdns.sqlite3"
        with sqlite3.connect(database) as db:
            db.executescript(schema.read_text())
        for attempt in range(3):  # a port taken between choosing and binding: choose again
            self.dns_port, self.api_port = free_ports()
            conf = {
                "launch": "gsqlite3",
                "gsqlite3-database": str(database),
                "local-address": "127.0.0.1",
                "local-port": str(self.dns_port),
                "api": "yes",
                "api-key": self.api_key,
                "webserver": "yes",
                "webserver-address": "127.0.0.1",
                "webserver-port": str(self.api_port),
                "webserver-allow-from": "127.0.0.0/8",
                "enable-lua-records": "yes",
                "edns-subnet-processing": "yes",
                "socket-dir": str(self.workdir),
                "daemon": "no",
                "guardian": "no",
                "disable-syslog": "yes",
                "security-poll-suffix": "",  # no query to the outside world for security status
                "loglevel": "4",
                **self.settings,
            }
            (self.workdir / "pdns.conf").write_text("".join(f"{k}={v}\n" for k, v in conf.items()))
            log = (self.workdir / "pdns.log").open("ab")
            self.proc = subprocess.Popen(
                [binary, f"--config-dir={self.workdir}"], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
            log.close()
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError(f"pdns_server did not start; its log:\n{self.log()[-3000:]}")

    def restart(self) -> None:
        """Start the stopped server again with the same config, ports and database (a DNS server coming back)."""
        log = (self.workdir / "pdns.log").open("ab")
        self.proc = subprocess.Popen(
            [pdns_binary(), f"--config-dir={self.workdir}"], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        log.close()
        if not self._wait_ready():
            raise RuntimeError(f"pdns_server did not come back; its log:\n{self.log()[-3000:]}")

    def _wait_ready(self) -> bool:
        """True once the API and DNS both answer; False when the server exits or START_TIMEOUT_S passes."""
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                self.api("GET", "/api/v1/servers/localhost")
                query = dns.message.make_query("ready.invalid.", "A")
                dns.query.udp(query, "127.0.0.1", port=self.dns_port, timeout=0.5)
                return True
            except (OSError, urllib.error.URLError, dns.exception.DNSException, RuntimeError):
                time.sleep(0.1)
        return False

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """One API call with the right key; its JSON answer, None for an empty one; RuntimeError for an HTTP error."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.api_url + path, data=data, method=method)
        request.add_header("X-API-Key", self.api_key)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None
        return json.loads(text) if text.strip() else None

    def create_zone(self, zone: str) -> None:
        """A native zone with its SOA and one NS record."""
        self.api("POST", "/api/v1/servers/localhost/zones", {
            "name": zone,
            "kind": "Native",
            "nameservers": [f"ns1.{zone}"],
            "rrsets": [{
                "name": zone, "type": "SOA", "ttl": 3600, "changetype": "REPLACE",
                "records": [{"content": f"ns1.{zone} hostmaster.{zone} 1 10800 3600 604800 60", "disabled": False}],
            }],
        })

    def patch(self, zone: str, rrsets: list[dict[str, Any]]) -> None:
        """Write rrsets straight through the API (as an operator, or a broken tool, would)."""
        self.api("PATCH", f"/api/v1/servers/localhost/zones/{zone}", {"rrsets": rrsets})

    def rrsets(self, zone: str) -> list[dict[str, Any]]:
        return self.api("GET", f"/api/v1/servers/localhost/zones/{zone}")["rrsets"]

    def log(self) -> str:
        path = self.workdir / "pdns.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


def dns_toml(pdns: PowerDNS, zone: str, record: str, *, dns_table: bool = True, key_env: str = "LR_PDNS_KEY") -> str:
    """The [dns] tables of a daemon config that keeps `record` (service "api", weighted) in this PowerDNS's `zone`."""
    head = '[dns]\nmin_write_interval = "0s"\n\n' if dns_table else ""
    return f"""
{head}[[dns.providers]]
name = "pdns"
kind = "powerdns"
zone = "{zone}"
api_url = "{pdns.api_url}"
api_key = "env:{key_env}"
dns_server = "127.0.0.1:{pdns.dns_port}"

[[dns.records]]
name = "{record}"
service = "api"
provider = "pdns"
"""
