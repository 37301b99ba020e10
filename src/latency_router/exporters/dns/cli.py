"""`latency-router dns plan|apply -c FILE`: what the DNS providers would be told, from a running daemon's decisions.

`plan` is a dry run: it reads each provider (the desired record sets, and every A/AAAA set it holds at their names,
so that sets no longer wanted show as deletes) and prints the changes, the ones held back as churn and the ones refused
for safety. `apply` writes them (refused ones only with --force) and reads them back, deleted sets included. Both
run the daemon's exporter round (runner.ExporterRunner.once), so they plan what the daemon would. The decisions come
from the daemon's HTTP API (`--from`, default the config's [api] listen address). Decisions the daemon made while
warming up (basis "provisional") are refused like an unsafe change: `apply` writes nothing from them without --force.
Exit codes: 0 done (or nothing to do), 1 a failure (daemon or provider unreachable, a write or read-back failed),
2 a bad config, 3 some changes were refused (plan: they would be; apply: they were not written); 1 wins over 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from latency_router.exporters.dns.errors import ProviderError

if TYPE_CHECKING:
    from latency_router.config.models import Config, DnsProviderConfig
    from latency_router.decider.decision import Decision

OK, FAILED, BAD_CONFIG, REFUSED = 0, 1, 2, 3


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `dns plan` and `dns apply` to the top-level sub-commands."""
    p = sub.add_parser("dns", help="plan or apply the DNS records of the config's [dns] providers")
    actions = p.add_subparsers(dest="dns_action", metavar="ACTION", required=True)
    for name, text, force in (
        ("plan", "dry run: print what each provider would be told", "plan as `apply --force` would write"),
        ("apply", "write the plan to each provider and read it back",
         "also write the changes the safety checks refuse, and decisions made while the daemon warms up"),
    ):
        a = actions.add_parser(name, help=text, description=__doc__)
        a.add_argument("-c", "--config", dest="config", required=True, metavar="FILE", help="TOML config file")
        a.add_argument("--from", dest="source", metavar="URL", help="the daemon's API (default: http://[api] listen)")
        a.add_argument("--provider", action="append", metavar="NAME", help="only this provider (repeatable)")
        a.add_argument("--force", action="store_true", help=force)


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


def provisional(decisions: Mapping[tuple[str, str], "Decision"], services: set[str]) -> list[str]:
    """"service/group" of each decision of these services made while the daemon warmed up (on part of the picture)."""
    return sorted(f"{s}/{g}" for (s, g), d in decisions.items() if s in services and d.basis == "provisional")


async def run_dns(
    config: "Config",
    decisions: Mapping[tuple[str, str], "Decision"],
    *,
    write: bool,
    force: bool = False,
    only: Sequence[str] | None = None,
    build: Callable[["DnsProviderConfig", int], Any] | None = None,
) -> int:
    """Plan (with `write`: apply and read back) for each [[dns.providers]] table, or those named in `only`; the plans
    go to stdout, failures to stderr; returns the exit code. `build` makes a table's provider (default build_provider;
    its SecretError is raised)."""
    from latency_router.exporters.dns.desired import DnsRecord, desired_record_sets
    from latency_router.exporters.dns.plan import PlanSettings, format_plan
    from latency_router.exporters.dns.runner import ExporterRunner, RunnerSettings
    from latency_router.exporters.dns.setup import build_provider
    from latency_router.secrets import SecretError

    dns = config.dns
    assert dns is not None
    build = build or build_provider
    settings = RunnerSettings(plan=PlanSettings(min_weight_change=dns.min_weight_change,
                                                max_weight_shift=dns.max_weight_shift))
    codes = {OK}
    for i, p in enumerate(dns.providers):
        if only and p.name not in only:
            continue
        records = [DnsRecord(r.name, r.service, r.mode, None if r.ttl_s is None else int(-(-r.ttl_s // 1)))
                   for r in dns.records if r.provider == p.name]
        warming = provisional(decisions, {r.service for r in records})
        held_back = bool(warming) and not force
        try:
            desired = desired_record_sets(decisions, config, records)
            provider = build(p, i)
        except SecretError:
            raise
        except (ProviderError, ValueError) as exc:
            print(_named(p.name, exc), file=sys.stderr)
            codes.add(FAILED)
            continue
        try:
            runner = ExporterRunner(provider, settings)
            runner.desire(desired)
            outcome = await runner.once(write=write and not held_back, force=force)
            print(f"# {p.name} ({p.kind}, zone {p.zone})")
            print(format_plan(outcome.plan))
            if outcome.plan.refused:
                codes.add(REFUSED)
            if held_back:
                done = "nothing was written" if write else "`dns apply` would write nothing"
                print(f"! refused: provisional decisions {', '.join(warming)} (made while the daemon warms up, before "
                      f"every target has been probed): {done}; --force writes them anyway")
                codes.add(REFUSED)
            elif outcome.written:
                for line in outcome.differences:
                    print(f"read back: {line}", file=sys.stderr)
                if outcome.differences:
                    codes.add(FAILED)
                else:
                    print(f"applied {len(outcome.plan.changes)} change(s) to {p.name}; read back: ok")
            elif write:
                print(f"nothing written to {p.name}")
        except (ProviderError, ValueError) as exc:
            print(_named(p.name, exc), file=sys.stderr)
            codes.add(FAILED)
        except Exception as exc:  # a provider bug: its text may hold anything (a URL, a header), so only its type
            print(f"{p.name}: failed with {type(exc).__name__}", file=sys.stderr)
            codes.add(FAILED)
        finally:
            await provider.aclose()
    return FAILED if FAILED in codes else max(codes)


def _named(provider: str, exc: Exception) -> str:
    """The error's text, starting with the provider's name once (a ProviderError's text starts with it already)."""
    return str(exc) if isinstance(exc, ProviderError) else f"{provider}: {exc}"


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
        return BAD_CONFIG
    if config.dns is None or not config.dns.providers:
        print(f"{args.config}: no [[dns.providers]]: nothing to plan", file=sys.stderr)
        return BAD_CONFIG
    base = (args.source or f"http://{config.api.listen}").rstrip("/")
    services = {r.service for r in config.dns.records}
    try:
        decisions = fetch_decisions(base, config, services)
    except (OSError, urllib.error.URLError, KeyError, TypeError, ValueError) as exc:
        print(f"cannot read the decisions from {base}: {exc}", file=sys.stderr)
        return FAILED
    try:
        return run_async(run_dns(config, decisions, write=args.dns_action == "apply", force=args.force,
                                 only=args.provider))
    except SecretError as exc:
        print(str(exc), file=sys.stderr)
        return BAD_CONFIG
