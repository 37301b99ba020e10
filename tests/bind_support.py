"""A real BIND 9 for the RFC 2136 tests: named in the foreground on 127.0.0.1, every file in one temporary directory.

The zone is served by one view per group, selected by TSIG key (`match-clients { key K; }`), and a default view for
everything else; each view's copy of the zone takes updates signed with that view's key only. A `reader` key is known
to the server but may update nothing (for REFUSED).
"""

from __future__ import annotations

import base64
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig

from support import installed

from latency_router.secrets import Secret

ALGORITHM = "hmac-sha256"
MAIN_KEY = "main"
READER_KEY = "reader"
START_ATTEMPTS = 3  # a free port can be taken between choosing it and named binding it


def named_binary() -> str:
    """named's path; CI installs it (scripts/setup-system), so only a local run without it may skip."""
    return installed("named", "bind9", "/usr/sbin/named")


def make_secret(key_name: str) -> Secret:
    """A fresh random TSIG secret (base64 of 32 bytes, as tsig-keygen makes for hmac-sha256)."""
    return Secret(base64.b64encode(secrets.token_bytes(32)).decode(), f"test:{key_name}")


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (named listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1 after 50 tries")


def keyring(key_name: str, secret: Secret) -> dict[dns.name.Name, dns.tsig.Key]:
    """A dnspython keyring holding one key."""
    name = dns.name.from_text(key_name)
    return {name: dns.tsig.Key(name, secret.reveal(), ALGORITHM)}


class BindServer:
    """One running named: its address, zone, keys (main, reader, one per group) and files."""

    def __init__(self, workdir: Path, zone: str, groups: Sequence[str]) -> None:
        self.workdir = workdir
        self.zone = zone
        self.groups = tuple(groups)
        self.keys = {name: make_secret(name) for name in (MAIN_KEY, READER_KEY, *self.groups)}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "named.log"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def view_keys(self) -> dict[str, tuple[str, Secret]]:
        """group -> (key name, secret) of the view that serves it, as Rfc2136Provider takes them."""
        return {group: (group, self.keys[group]) for group in self.groups}

    def zone_file(self, view: str) -> Path:
        return self.workdir / view / f"{self.zone.rstrip('.')}.zone"

    def config(self) -> str:
        d = self.workdir
        lines = [
            "options {",
            f'  directory "{d}";',
            f"  listen-on port {self.port} {{ 127.0.0.1; }};",
            "  listen-on-v6 { none; };",
            f'  pid-file "{d}/named.pid";',
            f'  lock-file "{d}/named.lock";',
            f'  session-keyfile "{d}/session.key";',
            f'  managed-keys-directory "{d}";',
            f'  dump-file "{d}/named_dump.db";',
            f'  statistics-file "{d}/named.stats";',
            f'  memstatistics-file "{d}/named.memstats";',
            "  recursion no;",
            "  dnssec-validation no;",
            "  notify no;",
            "  empty-zones-enable no;",
            "  allow-transfer { none; };",
            "};",
            "controls { };",  # no rndc channel: nothing listens beyond the DNS port
        ]
        for name, secret in self.keys.items():
            lines.append(f'key "{name}" {{ algorithm {ALGORITHM}; secret "{secret.reveal()}"; }};')
        views = [(group, f"key {group};", group) for group in self.groups]
        views.append(("default", "any;", MAIN_KEY))  # last: views are matched in order
        for view, match, updater in views:
            lines += [
                f'view "{view}" {{',
                f"  match-clients {{ {match} }};",
                f'  zone "{self.zone.rstrip(".")}" {{',
                "    type primary;",
                f'    file "{self.zone_file(view)}";',
                f"    allow-update {{ key {updater}; }};",
                "  };",
                "};",
            ]
        return "\n".join(lines) + "\n"

    def write_files(self) -> Path:
        zone = self.zone
        for view in (*self.groups, "default"):
            path = self.zone_file(view)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                f"$ORIGIN {zone}\n$TTL 300\n"
                f"@ IN SOA ns.{zone} hostmaster.{zone} 1 3600 600 86400 60\n"
                f"@ IN NS ns.{zone}\nns IN A 127.0.0.1\n"
            )
        conf = self.workdir / "named.conf"
        conf.write_text(self.config())
        return conf

    def start(self, ready_timeout_s: float = 15.0) -> None:
        """Start named on a free port and wait until every view answers for the zone."""
        binary = named_binary()
        for attempt in range(START_ATTEMPTS):
            self.port = free_port()
            conf = self.write_files()
            log = self.log_path.open("wb")
            # -g: foreground, log to stderr; -4: IPv4 only; no -u: it keeps the user that runs the tests
            self.proc = subprocess.Popen([binary, "-g", "-4", "-n", "2", "-c", str(conf)], cwd=self.workdir,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            if self._wait_ready(ready_timeout_s):
                return
            self.stop()
            if "address in use" not in self.log() or attempt == START_ATTEMPTS - 1:
                raise RuntimeError(f"named did not start within {ready_timeout_s} s; its log:\n{self.log()[-3000:]}")

    def _wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        pending = [None, *self.groups]
        for _ in range(int(timeout_s / 0.05) + 1):
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                return False
            while pending:
                try:
                    response = self.query(self.zone, "SOA", key=pending[0], timeout_s=0.5)
                except (OSError, dns.exception.DNSException):
                    break
                if response.rcode() != dns.rcode.NOERROR or not response.answer:
                    break
                pending.pop(0)
            if not pending:
                return True
            time.sleep(0.05)
        return False

    def query(self, name: str, rtype: str = "A", *, key: str | None = None,
              timeout_s: float = 2.0) -> dns.message.Message:
        """One query over UDP, signed with one of the server's keys (which selects its view) or unsigned."""
        query = dns.message.make_query(name, rtype)
        query.flags &= ~dns.flags.RD
        if key is not None:
            query.use_tsig(keyring(key, self.keys[key]), keyname=key, algorithm=ALGORITHM)
        return dns.query.udp(query, "127.0.0.1", timeout=timeout_s, port=self.port)

    def answers(self, name: str, rtype: str = "A", *, key: str | None = None) -> set[str]:
        """The addresses served for name, as a client of the view `key` selects sees them (unsigned: default view)."""
        response = self.query(name, rtype, key=key)
        assert response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN), dns.rcode.to_text(response.rcode())
        assert response.flags & dns.flags.AA, "the answer is not authoritative"
        rrset = response.get_rrset(response.answer, dns.name.from_text(name), dns.rdataclass.IN,
                                   dns.rdatatype.from_text(rtype))
        return set() if rrset is None else {r.to_text() for r in rrset}

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, wait, then kill."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)


@contextmanager
def running_bind(workdir: Path, groups: Sequence[str] = ("eu", "us")) -> Iterator[BindServer]:
    """A started BindServer with a zone of its own (a fresh name per server), stopped on the way out."""
    server = BindServer(workdir, f"lr-{secrets.token_hex(4)}.test.", groups)
    try:
        server.start()
        yield server
    finally:
        server.stop()
