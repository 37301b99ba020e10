"""`latency-router replay` and `replay generate` end to end: outputs, exit codes, the generated config."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from latency_router.cli import main

REGIONS = "Frankfurt,Washington,Tokyo,SaoPaulo"
CLIENTS, DURATION_S = 5, 120


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated scenario with an outage: 5 clients, 4 regions, 120 s."""
    out = tmp_path_factory.mktemp("scenario") / "small.csv"
    code = main([
        "replay", "generate", "--out", str(out), "--seed", "3", "--clients", str(CLIENTS), "--regions", REGIONS,
        "--duration", f"{DURATION_S}s", "--outage", "Frankfurt,40s,70s",
    ])
    assert code == 0
    return out


def test_generate_writes_samples_sidecar_and_a_config_that_checks(scenario: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = scenario.with_suffix(".toml")
    assert scenario.with_suffix(".params.json").is_file()
    assert main(["check-config", str(toml)]) == 0
    assert "4 regions, 8 paths, 5 groups, 1 service" in capsys.readouterr().out
    text = toml.read_text()
    # placeholder answers: unique per region, direct from 192.0.2.0/24, accelerator from 198.51.100.0/24
    answers = [line.split('"')[1] for line in text.splitlines() if line.startswith("answer")]
    assert len(answers) == len(set(answers)) == 8
    assert sorted(a.rsplit(".", 1)[0] for a in answers) == ["192.0.2"] * 4 + ["198.51.100"] * 4


def test_replay_writes_decisions_report_and_png(scenario: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["replay", "-c", str(scenario.with_suffix(".toml")), "--samples", str(scenario), "--out", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "optimal %" in table and "route53-like" in table
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"scenario", "definitions", "policies", "wall_s"}
    assert report["scenario"]["rows"] == CLIENTS * 4 * 2 * DURATION_S
    assert report["scenario"]["steps"] == DURATION_S
    assert report["scenario"]["params"]["n_clients"] == CLIENTS
    assert [o["region"] for o in report["scenario"]["outages"]] == ["Frankfurt"]
    policies = report["policies"]
    assert list(policies) == ["api", "always-accelerator", "always-direct", "nearest", "round-robin", "route53-like"]
    for name, p in policies.items():
        for key in ("optimal_pct", "within_5ms_pct", "within_10ms_pct", "within_20ms_pct", "regret_ms", "dead_choices",
                    "no_answer", "flips_per_group_hour", "flips_per_group_hour_outside_events", "outages"):
            assert key in p, (name, key)
        assert set(p["regret_ms"]) == {"mean", "p50", "p95", "p99"}
    with (out / "decisions.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["t_s", "service", "group", "region", "path"]
    assert len(rows) - 1 == len(policies) * CLIENTS * DURATION_S
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replay_json_prints_the_report(scenario: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--config", str(scenario.with_suffix(".toml")), "--samples", str(scenario), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["policies"]["api"]["kind"] == "service"
    assert report["policies"]["nearest"]["kind"] == "baseline"


def test_bad_row_exits_2_naming_the_line(scenario: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = scenario.read_text().splitlines()
    fields = lines[7].split(",")
    fields[4] = "fast"
    lines[7] = ",".join(fields)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    code = main(["replay", "-c", str(scenario.with_suffix(".toml")), "--samples", str(bad)])
    assert code == 2
    assert "line 8: rtt_ms: expected a number, got 'fast'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "--samples", "x.csv"], "give --config"),
        (["replay", "generate", "--acceptance", "--seed", "3"], "--acceptance is a fixed scenario; drop --seed"),
        (["replay", "generate", "--outage", "Frankfurt,10s"], "expected REGION,START,END"),
        (["replay", "generate", "--clients", "0"], "n_clients: must be at least 1"),
    ],
    ids=["no-config", "acceptance-plus-seed", "bad-outage", "zero-clients"],
)
def test_bad_arguments_exit_2(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if argv[1] == "generate":
        argv = [*argv, "--out", str(tmp_path / "s.csv")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_help_credits_wonderproxy(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["replay", "--help"], ["replay", "generate", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "WonderNetwork/WonderProxy" in " ".join(capsys.readouterr().out.split())
