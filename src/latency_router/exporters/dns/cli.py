"""`latency-router dns plan|apply -c FILE`: what the DNS providers would be told, from a running daemon's decisions.

`plan` is a dry run: it reads each provider and prints the changes, the ones held back as churn and the ones refused
for safety. `apply` writes them (refused ones only with --force) and reads them back. The decisions come from the
daemon's HTTP API (`--from`, default the config's [api] listen address), so what is planned is what the daemon decides.
Exit codes: 0 done (or nothing to do), 1 a failure (daemon or provider unreachable, a write or read-back failed),
2 a bad config, 3 some changes were refused (plan: they would be; apply: they were not written).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from latency_router.config.models import Config


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `dns plan` and `dns apply` to the top-level sub-commands."""
    p = sub.add_parser("dns", help="plan or apply the DNS records of the config's [dns] providers")
    actions = p.add_subparsers(dest="dns_action", metavar="ACTION", required=True)
    for name, text in (("plan", "dry run: print what each provider would be told"),
                       ("apply", "write the plan to each provider and read it back")):
        a = actions.add_parser(name, help=text, description=__doc__)
        a.add_argument("-c", "--config", dest="config", required=True, metavar="FILE", help="TOML config file")
        a.add_argument("--from", dest="source", metavar="URL", help="the daemon's API (default: http://[api] listen)")
        a.add_argument("--provider", action="append", metavar="NAME", help="only this provider (repeatable)")
        if name == "apply":
            a.add_argument("--force", action="store_true", help="also write the changes the safety checks refuse")


def fetch_decisions(base: str, config: "Config", services: set[str]) -> dict[tuple[str, str], Any]:
    """Every (service, group) decision of these services from the daemon at `base`."""
    from latency_router.decider.decision import decision_from_json
    from latency_router.decider.engine import config_groups

    out = {}
    for service in sorted(services):
        for group in config_groups(config):
            query = urllib.parse.urlencode({"service": service, "group": group.name})
            try:
                with urllib.request.urlopen(f"{base}/v1/decision?{query}", timeout=10) as resp:
                    out[(service, group.name)] = decision_from_json(json.load(resp))
            except urllib.error.HTTPError as exc:
                if exc.code == 503:
                    continue  # no decision yet for this pair
                raise
    return out


async def _run(config: "Config", decisions: dict, names: list[str] | None, apply: bool, force: bool) -> int:
    from latency_router.exporters.dns.desired import DnsRecord, desired_record_sets
    from latency_router.exporters.dns.errors import ProviderError
    from latency_router.exporters.dns.plan import PlanSettings, format_plan, make_plan
    from latency_router.exporters.dns.setup import build_provider

    dns = config.dns
    assert dns is not None
    settings = PlanSettings(min_weight_change=dns.min_weight_change, max_weight_shift=dns.max_weight_shift)
    code = 0
    for i, p in enumerate(dns.providers):
        if names and p.name not in names:
            continue
        records = [DnsRecord(r.name, r.service, r.mode, None if r.ttl_s is None else int(-(-r.ttl_s // 1)))
                   for r in dns.records if r.provider == p.name]
        provider = build_provider(p, i)
        try:
            desired = desired_record_sets(decisions, config, records)
            keys = [rs.key for rs in desired]
            current = await provider.current(keys)
            plan = make_plan(p.name, current, desired, settings, force=force,
                             representable=getattr(provider, "representable", None))
            print(f"# {p.name} ({p.kind}, zone {p.zone})")
            print(format_plan(plan))
            if plan.refused:
                code = max(code, 3)
            if apply and plan.changes:
                await provider.apply(plan.changes)
                wanted = [c.new for c in plan.changes if c.new is not None]
                problems = await provider.verify(wanted)
                for line in problems:
                    print(f"read back: {line}", file=sys.stderr)
                if problems:
                    code = 1
                else:
                    print(f"applied {len(plan.changes)} change(s) to {p.name}; read back: ok")
        except (ProviderError, ValueError) as exc:
            print(f"{p.name}: {exc}", file=sys.stderr)
            code = 1
        finally:
            await provider.aclose()
    return code


def dns_main(args: argparse.Namespace) -> int:
    """Run `dns plan` or `dns apply`; see the module docstring for the exit codes."""
    from latency_router.aio import run_async
    from latency_router.config import ConfigError, load_config
    from latency_router.secrets import SecretError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems or [str(exc)]:
            print(problem, file=sys.stderr)
        return 2
    if config.dns is None or not config.dns.providers:
        print(f"{args.config}: no [[dns.providers]]: nothing to plan", file=sys.stderr)
        return 2
    base = (args.source or f"http://{config.api.listen}").rstrip("/")
    services = {r.service for r in config.dns.records}
    try:
        decisions = fetch_decisions(base, config, services)
    except (OSError, urllib.error.URLError, KeyError, TypeError, ValueError) as exc:
        print(f"cannot read the decisions from {base}: {exc}", file=sys.stderr)
        return 1
    try:
        return run_async(_run(config, decisions, args.provider, args.dns_action == "apply", getattr(args, "force", False)))
    except SecretError as exc:
        print(str(exc), file=sys.stderr)
        return 2
