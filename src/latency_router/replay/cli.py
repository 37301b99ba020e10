"""`latency-router replay`: score policies on a samples CSV; `latency-router replay generate`: write a scenario to score."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CREDIT = "Scenario latencies come from WonderNetwork/WonderProxy's public ping data set (wonderproxy.com)."


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `replay` (and its `generate` action) to the top-level sub-commands."""
    p = sub.add_parser(
        "replay",
        help="offline evaluation of the config's policies and baselines on a samples CSV (or `replay generate`)",
        description="Replay a samples CSV (t_s,group,region,path,rtt_ms[,truth_ms]) through every service of the "
        "config and the baselines nearest, round-robin, always-accelerator, always-direct and route53-like; "
        "report regret, flips and failover times. " + CREDIT,
    )
    p.add_argument("-c", "--config", dest="config", metavar="FILE", help="TOML config file (its services are evaluated)")
    p.add_argument("--samples", metavar="CSV", help="samples CSV; a <name>.params.json beside it adds the event windows")
    p.add_argument("--json", action="store_true", help="print report.json's object instead of the table")
    p.add_argument("--out", metavar="DIR", help="write decisions.csv, report.json and report.png into DIR")
    p.add_argument("--settle", default="60s", metavar="D", help="time after an event whose flips count as caused by it (default 60s)")
    p.add_argument("--r53-refresh", default="300s", metavar="D", help="how often the route53-like baseline refreshes its latency data (default 300s)")
    actions = p.add_subparsers(dest="replay_action", metavar="ACTION")
    g = actions.add_parser(
        "generate",
        help="write a scenario: samples CSV, its .params.json sidecar and a matching config TOML",
        description="Write a samples CSV, its <name>.params.json sidecar and a matching <name>.toml config. " + CREDIT,
    )
    g.add_argument("--out", dest="gen_out", default="scenario.csv", metavar="CSV", help="samples CSV to write (default scenario.csv)")
    g.add_argument("--acceptance", action="store_true", help="DESIGN.md's acceptance scenario (50 clients, seed 7, 600 s, an outage and a step)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default 7)")
    g.add_argument("--clients", type=int, default=None, metavar="N", help="client groups (default 50)")
    g.add_argument("--regions", default=None, metavar="A,B,...", help="region cities (default: all of regions.txt)")
    g.add_argument("--duration", default=None, metavar="D", help="scenario length (default 600s)")
    g.add_argument("--interval", default=None, metavar="D", help="time between samples of a key (default 1s)")
    g.add_argument("--noise", type=float, default=None, metavar="FRAC", help="gaussian noise as a fraction of the RTT (default 0.03)")
    g.add_argument("--loss", type=float, default=None, metavar="RATIO", help="probe loss ratio (default 0.005)")
    g.add_argument("--outage", action="append", default=[], metavar="REGION,START,END", help="a region down, e.g. Frankfurt,200s,320s (repeatable)")
    g.add_argument("--step", action="append", default=[], metavar="REGION,PATH,AT,DELTA", help="a latency step, e.g. Washington,direct,400s,40ms (repeatable)")
    g.add_argument("--data-dir", default=None, metavar="DIR", help="folder holding wonderproxy/ (default: the shared data folder)")


def _scenario_params(args: argparse.Namespace):
    from latency_router.durations import parse_duration
    from latency_router.replay.generate import Outage, ScenarioParams, Step, acceptance_params

    given = [f"--{n}" for n in ("seed", "clients", "regions", "duration", "interval", "noise", "loss") if getattr(args, n) is not None]
    given += ["--outage"] * bool(args.outage) + ["--step"] * bool(args.step)
    if args.acceptance:
        if given:
            raise ValueError(f"--acceptance is a fixed scenario; drop {', '.join(given)}")
        return acceptance_params()
    events: list = []
    for text in args.outage:
        parts = text.split(",")
        if len(parts) != 3:
            raise ValueError(f"--outage {text!r}: expected REGION,START,END such as Frankfurt,200s,320s")
        events.append(Outage(parts[0], parse_duration(parts[1]), parse_duration(parts[2])))
    for text in args.step:
        parts = text.split(",")
        if len(parts) != 4:
            raise ValueError(f"--step {text!r}: expected REGION,PATH,AT,DELTA such as Washington,direct,400s,40ms")
        events.append(Step(parts[0], parts[1], parse_duration(parts[2]), parse_duration(parts[3]) * 1e3))
    values: dict = {"events": tuple(events)}
    if args.seed is not None:
        values["seed"] = args.seed
    if args.clients is not None:
        values["n_clients"] = args.clients
    if args.regions is not None:
        values["regions"] = tuple(r.strip() for r in args.regions.split(",") if r.strip())
    if args.duration is not None:
        values["duration_s"] = parse_duration(args.duration)
    if args.interval is not None:
        values["interval_s"] = parse_duration(args.interval)
    if args.noise is not None:
        values["noise_frac"] = args.noise
    if args.loss is not None:
        values["loss"] = args.loss
    return ScenarioParams(**values)


def generate_main(args: argparse.Namespace) -> int:
    """`replay generate`: samples CSV, sidecar and config TOML; exit 2 on bad parameters or missing data."""
    from latency_router.replay.generate import generate
    from latency_router.replay.scenario_config import write_scenario_config

    try:
        params = _scenario_params(args)
        sidecar = generate(params, args.gen_out, args.data_dir)
        config = write_scenario_config(sidecar, args.gen_out)
    except (ValueError, OSError) as exc:
        print(f"replay generate: {exc}", file=sys.stderr)
        return 2
    rows = json.loads(sidecar.read_text())["rows"]
    print(f"wrote {args.gen_out} ({rows} rows), {sidecar} and {config}")
    return 0


def replay_main(args: argparse.Namespace) -> int:
    """`replay`: load the config, replay the samples, print the table (or JSON) and write the outputs; exit 2 on bad input."""
    if args.replay_action == "generate":
        return generate_main(args)
    missing = [flag for flag, value in (("--config", args.config), ("--samples", args.samples)) if not value]
    if missing:
        print(f"replay: give {' and '.join(missing)} (or `replay generate` to write a scenario)", file=sys.stderr)
        return 2
    from latency_router.config import ConfigError, load_config
    from latency_router.durations import parse_duration
    from latency_router.replay.report import text_table, write_json, write_png
    from latency_router.replay.run import ReplaySettings, replay
    from latency_router.replay.samples import SamplesError

    try:
        settings = ReplaySettings(settle_s=parse_duration(args.settle), r53_refresh_s=parse_duration(args.r53_refresh))
    except ValueError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.problems or [str(exc)]:
            print(line, file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else None
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"replay: --out {out}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    try:
        result = replay(
            config,
            args.samples,
            config_name=Path(args.config).name,
            settings=settings,
            decisions_csv=out / "decisions.csv" if out is not None else None,
        )
    except SamplesError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    if out is not None:
        write_json(result.report, out / "report.json")
        write_png(out / "report.png", result.scores, result.times, result.windows, f"replay of {Path(args.samples).name}")
    if args.json:
        print(json.dumps(result.report, indent=2))
    else:
        print(text_table(result.report))
        if out is not None:
            print(f"wrote {out / 'decisions.csv'}, {out / 'report.json'} and {out / 'report.png'}")
    return 0
