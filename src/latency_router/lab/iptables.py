"""The lab's iptables rules: two NFQUEUE rules per path address, tagged so that leftovers can always be found.

TCP replies are queued on INPUT, where the kernel stamps each queued packet with the time it was queued, so
the delayer can hold a SYN-ACK from that moment and not from when it got around to reading it. Everything
else is queued on OUTPUT: a UDP or ICMP reply held on INPUT would already carry its receive stamp, and a client
reading kernel receive timestamps would then see the reply as having arrived before it was held.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

TAG_PREFIX = "latency-router-lab:"
TABLE = "mangle"
# (chain, protocol match) per address; TCP's kernel stamps keep the client's receive stamps right (see above)
CHAINS = (("INPUT", ["-p", "tcp"]), ("OUTPUT", ["!", "-p", "tcp"]))


def tag_for(owner_pid: int, queue_num: int) -> str:
    """The comment that marks one lab instance's rules: its owner's pid and queue number."""
    return f"{TAG_PREFIX}{owner_pid}:{queue_num}"


CAP_NET_ADMIN = 12


def _has_net_admin() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def available() -> str | None:
    """None when iptables can be used here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "not root"
    if not _has_net_admin():
        return "no CAP_NET_ADMIN"
    if shutil.which("iptables-restore") is None or shutil.which("iptables-save") is None:
        return "iptables not installed"
    return None


def _rule(address: str, match: list[str], queue_num: int, tag: str) -> list[str]:
    # --queue-bypass: when no delayer is bound (crashed or stopped) packets pass instead of being dropped
    return ["-s", f"{address}/32", *match, "-m", "comment", "--comment", tag,
            "-j", "NFQUEUE", "--queue-num", str(queue_num), "--queue-bypass"]


def _restore(lines: list[str]) -> None:
    if not lines:
        return
    text = f"*{TABLE}\n" + "\n".join(lines) + "\nCOMMIT\n"
    proc = subprocess.run(["iptables-restore", "-w", "5", "--noflush"], input=text, text=True,
                          capture_output=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"iptables-restore failed: {proc.stderr.strip() or proc.returncode}")


def add_rules(addresses: list[str], queue_num: int, tag: str) -> None:
    """Insert the rules of every address at the top of mangle INPUT (TCP) and OUTPUT (the rest), all at once."""
    _restore([f"-I {chain} " + _join(_rule(a, match, queue_num, tag)) for a in addresses for chain, match in CHAINS])


def _join(words: list[str]) -> str:
    # iptables-restore reads a quoted "!" as an argument, not as the negation
    return " ".join(w if w == "!" else shlex.quote(w) for w in words)


def _saved_rules() -> list[str]:
    proc = subprocess.run(["iptables-save", "-t", TABLE], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"iptables-save failed: {proc.stderr.strip() or proc.returncode}")
    return [line for line in proc.stdout.splitlines() if line.startswith("-A ")]


def _tag_of(rule: str) -> str | None:
    try:
        words = shlex.split(rule)
    except ValueError:
        return None
    for i, w in enumerate(words[:-1]):
        if w == "--comment" and words[i + 1].startswith(TAG_PREFIX):
            return words[i + 1]
    return None


def remove_rules(tag: str) -> int:
    """Delete every rule carrying this tag; returns how many were removed."""
    doomed = [r for r in _saved_rules() if _tag_of(r) == tag]
    _delete(doomed)
    return len(doomed)


def _delete(rules: list[str]) -> None:
    try:
        _restore(["-D" + r[2:] for r in rules])
    except RuntimeError:
        # another lab may have removed one of them meanwhile: delete the rest one by one
        for r in rules:
            try:
                _restore(["-D" + r[2:]])
            except RuntimeError:
                pass


def list_tags() -> list[str]:
    """Tags of every lab rule present now (for tests and for cleanup)."""
    return [t for t in (_tag_of(r) for r in _saved_rules()) if t is not None]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> int:
    """Delete rules left by labs whose owner process is gone (a crash or SIGKILL); returns how many."""
    doomed = []
    for rule in _saved_rules():
        tag = _tag_of(rule)
        if tag is None:
            continue
        try:
            pid = int(tag[len(TAG_PREFIX):].split(":")[0])
        except ValueError:
            pid = -1
        if pid <= 0 or not _alive(pid):
            doomed.append(rule)
    _delete(doomed)
    return len(doomed)
