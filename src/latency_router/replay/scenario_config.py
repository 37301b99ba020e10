"""Write the config TOML that matches a generated scenario: its regions, two paths each with placeholder targets, its groups, a latency service."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from latency_router.durations import format_duration

DEFAULT_TIMEOUT_S = 0.5
# documentation ranges (RFC 5737): placeholders that never reach a real host
DIRECT_NET = "192.0.2"
ACCELERATOR_NET = "198.51.100"
PROBE_PORT = 7007
SERVICES = ({"name": "api", "policy": "latency"},)


def config_path_for(samples_csv: Path | str) -> Path:
    """Return the config TOML path for a samples CSV: samples.csv -> samples.toml."""
    return Path(samples_csv).with_suffix(".toml")


def _str(text: str) -> str:
    return json.dumps(text)  # a JSON string of these names is a valid TOML basic string


def scenario_config_text(sidecar: Mapping[str, Any], samples_name: str) -> str:
    """Return the TOML text of a config for the scenario described by a generate() sidecar."""
    params = sidecar["params"]
    regions = sidecar["regions"]
    if len(regions) > 254:
        raise ValueError(f"{len(regions)} regions: the placeholder answers hold at most 254")
    interval_s = float(params["interval_s"])
    lines = [
        f"# Written by `latency-router replay generate` for {samples_name}: replay it with",
        f"#   latency-router replay --config <this file> --samples {samples_name}",
        "# Probe targets and answers are placeholders from the documentation ranges (RFC 5737).",
        "# Latencies come from WonderNetwork/WonderProxy's public ping data.",
        "",
        "[probing]",
        f'interval = "{format_duration(interval_s)}"',
        f'timeout = "{format_duration(min(DEFAULT_TIMEOUT_S, interval_s))}"',
    ]
    for i, region in enumerate(regions, start=1):
        lines += ["", "[[regions]]", f"name = {_str(region['name'])}", f"lat = {float(region['lat'])!r}", f"lon = {float(region['lon'])!r}"]
        for path, net in (("direct", DIRECT_NET), ("accelerator", ACCELERATOR_NET)):
            lines += [
                "",
                "[[regions.paths]]",
                f'name = "{path}"',
                f'probe = "udp://{net}.{i}:{PROBE_PORT}"',
                f'answer = "{net}.{i}"',
            ]
    for client in sidecar["clients"]:
        lines += ["", "[[groups]]", f"name = {_str(client['name'])}", f"lat = {float(client['lat'])!r}", f"lon = {float(client['lon'])!r}"]
    for service in SERVICES:
        lines += ["", "[[services]]", *(f"{k} = {_str(v)}" for k, v in service.items())]
    return "\n".join(lines) + "\n"


def write_scenario_config(sidecar_path: Path | str, samples_csv: Path | str) -> Path:
    """Write `<csv stem>.toml` beside the samples CSV from its sidecar; return its path."""
    sidecar = json.loads(Path(sidecar_path).read_text())
    out = config_path_for(samples_csv)
    out.write_text(scenario_config_text(sidecar, Path(samples_csv).name))
    return out
