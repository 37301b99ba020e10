"""The `latency-router` command line: one sub-command per job, each in the module that owns it."""

from __future__ import annotations

import argparse
import sys


def _add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("-c", "--config", dest="config", required=required, metavar="FILE", help="TOML config file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latency-router",
        description="Measure client-to-region latency over direct and accelerator paths, and decide where clients go.",
    )
    from latency_router import __version__

    parser.add_argument("--version", action="version", version=f"latency-router {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the daemon (starts the built-in lab when the config has a [lab] section)")
    _add_config(p)
    p.add_argument("--duration", default=None, metavar="D", help="stop after this long (e.g. 30s); default: until a signal")
    p.add_argument("--log-level", default="info", type=str.lower, choices=("debug", "info", "warning", "error"),
                   help="log level (default info; debug logs every write and request, never a secret)")

    p = sub.add_parser("check-config", help="validate a config: exit 0, or 2 with one line per problem on stderr")
    p.add_argument("file", nargs="?", metavar="FILE")
    _add_config(p, required=False)

    p = sub.add_parser("probe", help="one-off measurement of a target URL, fping-like")
    p.add_argument("url", help="udp://HOST:PORT, tcp://HOST:PORT, http(s)://HOST[:PORT]/PATH, icmp://HOST, dns://SERVER[:PORT]/NAME")
    p.add_argument("--count", "-n", type=int, default=5, metavar="N", help="probes to send (default 5)")
    p.add_argument("--interval", "-i", default="1s", metavar="D", help="time between probes (default 1s)")
    p.add_argument("--timeout", "-t", default="1s", metavar="D", help="how long to wait for each reply (default 1s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    p = sub.add_parser("lab", help="run the emulated regions of a config, with injected delay, loss and events")
    _add_config(p)
    p.add_argument("--duration", default=None, metavar="D", help="stop after this long; default: until a signal")

    p = sub.add_parser("responder", help="region-side UDP echo reflector (RFC 862-compatible)")
    p.add_argument("--listen", default="udp://0.0.0.0:7007", metavar="udp://HOST:PORT")

    from latency_router.replay.cli import add_parser as add_replay_parser

    add_replay_parser(sub)
    from latency_router.exporters.dns.cli import add_parser as add_dns_parser

    add_dns_parser(sub)
    return parser


def _config_and_duration(config_path: str, duration: str | None):
    """Load the config and parse --duration for `run` and `lab`; on a problem, print it and return the exit code 2."""
    from latency_router.config import ConfigError, load_config
    from latency_router.durations import parse_duration

    duration_s = None
    if duration is not None:
        try:
            duration_s = parse_duration(duration)
        except ValueError as exc:
            print(f"--duration: {exc}", file=sys.stderr)
            return 2
        if duration_s <= 0:
            print("--duration: must be more than 0", file=sys.stderr)
            return 2
    try:
        return load_config(config_path), duration_s
    except ConfigError as exc:
        for problem in exc.problems or [str(exc)]:
            print(problem, file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        from latency_router.config import check_config_main

        path = args.file or args.config
        if not path:
            print("check-config: give the config file (FILE or -c FILE)", file=sys.stderr)
            return 2
        return check_config_main(path)
    if args.command == "probe":
        from latency_router.probes.cli import probe_main

        return probe_main(args)
    if args.command == "responder":
        from latency_router.probes.responder import responder_main

        return responder_main(args.listen)
    if args.command == "replay":
        from latency_router.replay.cli import replay_main

        return replay_main(args)
    if args.command == "dns":
        from latency_router.exporters.dns.cli import dns_main

        return dns_main(args)
    if args.command in ("lab", "run"):
        loaded = _config_and_duration(args.config, args.duration)
        if isinstance(loaded, int):
            return loaded
        if args.command == "lab":
            from latency_router.lab.cli import lab_main

            return lab_main(*loaded)
        from latency_router.daemon import run_main

        return run_main(*loaded, config_path=args.config, log_level=args.log_level)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
