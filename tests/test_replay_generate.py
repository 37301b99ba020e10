"""The replay scenario generator: WonderProxy-based samples CSVs with noise, loss and events at known times."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest

from latency_router.replay.generate import (
    DEFAULT_DATA_DIR,
    PATHS,
    Oscillation,
    Outage,
    ScenarioParams,
    Server,
    Step,
    WonderProxyData,
    acceptance_params,
    build_scenario,
    event_from_dict,
    event_to_dict,
    fibre_floor_ms,
    generate,
    load_wonderproxy,
    params_path_for,
    regenerate,
    write_samples,
)

SMALL_REGIONS = ("Frankfurt", "Washington", "Tokyo", "SaoPaulo")


@pytest.fixture(scope="module")
def data() -> WonderProxyData:
    return load_wonderproxy(DEFAULT_DATA_DIR)


def small(**overrides: object) -> ScenarioParams:
    values: dict[object, object] = dict(seed=3, n_clients=4, regions=SMALL_REGIONS, duration_s=30.0)
    values.update(overrides)
    return ScenarioParams(**values)  # type: ignore[arg-type]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_loader_skips_ids_absent_from_servers(data: WonderProxyData) -> None:
    known = {s.id for s in data.servers.values()}
    assert len(data.region_names) == 21
    assert all(src in known and dst in known for src, dst in data.avg_ms)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    generate(small(), tmp_path / "a.csv")
    generate(small(), tmp_path / "b.csv")
    generate(small(seed=4), tmp_path / "c.csv")
    a = (tmp_path / "a.csv").read_bytes()
    assert a == (tmp_path / "b.csv").read_bytes()
    assert a != (tmp_path / "c.csv").read_bytes()


def test_header_row_count_and_order(tmp_path: Path) -> None:
    generate(small(duration_s=5.0), tmp_path / "s.csv")
    rows = read_rows(tmp_path / "s.csv")
    assert list(rows[0]) == ["t_s", "group", "region", "path", "rtt_ms", "truth_ms"]
    assert len(rows) == 4 * len(SMALL_REGIONS) * 2 * 5
    assert [r["t_s"] for r in rows[:: 4 * len(SMALL_REGIONS) * 2]] == ["0", "1", "2", "3", "4"]
    sidecar = json.loads(params_path_for(tmp_path / "s.csv").read_text())
    assert sidecar["rows"] == len(rows)
    assert [r["name"] for r in sidecar["regions"]] == list(SMALL_REGIONS)


def test_lost_rows_have_empty_rtt_and_a_truth(tmp_path: Path) -> None:
    generate(small(loss=0.2), tmp_path / "s.csv")
    rows = read_rows(tmp_path / "s.csv")
    lost = [r for r in rows if r["rtt_ms"] == ""]
    assert all(float(r["truth_ms"]) > 0 for r in lost)
    assert all(float(r["rtt_ms"]) > 0 for r in rows if r["rtt_ms"] != "")
    # 960 rows at 20 %: 192 expected, sd about 12.4
    assert 0.14 < len(lost) / len(rows) < 0.26


def test_truth_is_never_below_the_fibre_floor(tmp_path: Path) -> None:
    generate(ScenarioParams(seed=11, n_clients=30, duration_s=1.0), tmp_path / "s.csv")
    sidecar = json.loads(params_path_for(tmp_path / "s.csv").read_text())
    where = {s["name"]: Server(**s) for s in sidecar["clients"] + sidecar["regions"]}
    rows = read_rows(tmp_path / "s.csv")
    assert len(rows) == 30 * 21 * 2
    for r in rows:
        floor = fibre_floor_ms(where[r["group"]], where[r["region"]])
        truth = float(r["truth_ms"])
        assert truth >= floor - 0.0005
        if r["path"] == "accelerator":
            # 1.7x the floor plus a positive edge hop: strictly above the floor
            assert truth >= 1.7 * floor + 2.0 - 0.0005


@pytest.mark.parametrize(
    ("outage", "down_paths"),
    [
        (Outage(region="Tokyo", t_start_s=10.0, t_end_s=20.0), {"direct", "accelerator"}),
        (Outage(region="Tokyo", t_start_s=10.0, t_end_s=20.0, path="accelerator"), {"accelerator"}),
    ],
    ids=["whole-region", "one-path"],
)
def test_outage_loses_every_sample_in_its_window(tmp_path: Path, outage: Outage, down_paths: set[str]) -> None:
    generate(small(loss=0.0, events=(outage,)), tmp_path / "s.csv")
    for r in read_rows(tmp_path / "s.csv"):
        inside = r["region"] == "Tokyo" and r["path"] in down_paths and 10 <= int(r["t_s"]) < 20
        if inside:
            assert (r["rtt_ms"], r["truth_ms"]) == ("", "")
        else:
            assert r["rtt_ms"] != "" and r["truth_ms"] != ""


def test_step_adds_delta_to_truth_from_its_time(tmp_path: Path) -> None:
    step = Step(region="Washington", path="direct", t_s=12.0, delta_ms=40.0)
    generate(small(events=(step,)), tmp_path / "s.csv")
    truth = {(r["t_s"], r["group"], r["region"], r["path"]): float(r["truth_ms"]) for r in read_rows(tmp_path / "s.csv")}
    groups = {g for _, g, _, _ in truth}
    for g in groups:
        for region in SMALL_REGIONS:
            for path in PATHS:
                before = truth[("11", g, region, path)]
                expected = 40.0 if (region, path) == ("Washington", "direct") else 0.0
                assert truth[("0", g, region, path)] == before
                for t in ("12", "29"):
                    assert truth[(t, g, region, path)] - before == pytest.approx(expected, abs=0.002)


def test_oscillation_is_a_square_wave(tmp_path: Path) -> None:
    osc = Oscillation(region="Frankfurt", path="accelerator", period_s=10.0, amplitude_ms=25.0, t_start_s=5.0)
    generate(small(events=(osc,)), tmp_path / "s.csv")
    rows = [r for r in read_rows(tmp_path / "s.csv") if (r["region"], r["path"]) == ("Frankfurt", "accelerator")]
    group = rows[0]["group"]
    truth = {int(r["t_s"]): float(r["truth_ms"]) for r in rows if r["group"] == group}
    base = truth[0]
    for t in range(30):
        high = t >= 5 and (t - 5) % 10 < 5
        assert truth[t] - base == pytest.approx(25.0 if high else 0.0, abs=0.002), t


def test_noise_relative_std_is_about_the_configured_value(tmp_path: Path) -> None:
    generate(small(noise_frac=0.05, duration_s=100.0, loss=0.0), tmp_path / "s.csv")
    errors = [float(r["rtt_ms"]) / float(r["truth_ms"]) - 1.0 for r in read_rows(tmp_path / "s.csv")]
    assert len(errors) == 3200
    # standard error of the std at n=3200 is about 1.3 % of it: 10 % is a wide bound
    assert statistics.pstdev(errors) == pytest.approx(0.05, rel=0.10)
    assert abs(statistics.fmean(errors)) < 0.005


def test_zero_noise_gives_rtt_equal_to_truth(tmp_path: Path) -> None:
    generate(small(noise_frac=0.0, loss=0.0, duration_s=3.0), tmp_path / "s.csv")
    assert all(r["rtt_ms"] == r["truth_ms"] for r in read_rows(tmp_path / "s.csv"))


def test_params_json_regenerates_the_same_file(tmp_path: Path) -> None:
    params = small(
        events=(
            Outage(region="Frankfurt", t_start_s=3.0, t_end_s=9.0),
            Step(region="Tokyo", path="accelerator", t_s=7.0, delta_ms=-5.0),
            Oscillation(region="SaoPaulo", path="direct", period_s=4.0, amplitude_ms=10.0, t_end_s=20.0),
        )
    )
    sidecar_path = generate(params, tmp_path / "first" / "samples.csv")
    assert sidecar_path == tmp_path / "first" / "samples.params.json"
    regenerate(sidecar_path, tmp_path / "second" / "samples.csv")
    assert (tmp_path / "first" / "samples.csv").read_bytes() == (tmp_path / "second" / "samples.csv").read_bytes()
    assert sidecar_path.read_text() == (tmp_path / "second" / "samples.params.json").read_text()
    assert ScenarioParams.from_dict(json.loads(sidecar_path.read_text())["params"]) == params


def test_regenerate_refuses_other_data(tmp_path: Path) -> None:
    sidecar_path = generate(small(duration_s=2.0), tmp_path / "s.csv")
    other = tmp_path / "data"
    shutil.copytree(DEFAULT_DATA_DIR / "wonderproxy", other / "wonderproxy")
    servers = other / "wonderproxy" / "servers.csv"
    servers.chmod(0o644)
    servers.write_text(servers.read_text() + "\n")
    with pytest.raises(ValueError, match="data files differ"):
        regenerate(sidecar_path, tmp_path / "again.csv", data_dir=other)


def test_acceptance_scenario_shape(tmp_path: Path, data: WonderProxyData) -> None:
    params = acceptance_params()
    assert (params.seed, params.n_clients, params.duration_s, params.noise_frac, params.loss) == (7, 50, 600.0, 0.03, 0.005)
    scenario = build_scenario(params, data)
    assert len(scenario.clients) == 50 and len(scenario.regions) == 21
    assert len(scenario.base_ms) == 50 * 21 * 2
    short = ScenarioParams.from_dict({**params.to_dict(), "duration_s": 2.0})
    generate(short, tmp_path / "s.csv")
    assert len(read_rows(tmp_path / "s.csv")) == 50 * 21 * 2 * 2


def _toy_data() -> WonderProxyData:
    servers = {
        "R1": Server("1", "R1", 50.0, 8.0),
        "R2": Server("2", "R2", 40.0, -74.0),
        "A": Server("10", "A", 48.0, 2.0),
        "B": Server("11", "B", 52.0, 0.0),
    }
    avg_ms = {("10", "1"): 12.0, ("2", "10"): 90.0, ("11", "1"): 15.0}  # A-R2 only in reverse; B-R2 not at all
    return WonderProxyData(servers, avg_ms, ("R1", "R2"), "toy")


def test_reverse_direction_fallback_and_unmeasured_client_skipped() -> None:
    scenario = build_scenario(ScenarioParams(n_clients=1), _toy_data())
    assert [c.name for c in scenario.clients] == ["A"]
    assert scenario.base_ms[("A", "R2", "direct")] == 90.0
    assert scenario.reverse_pairs == (("A", "R2"),)
    with pytest.raises(ValueError, match="only 1 eligible"):
        build_scenario(ScenarioParams(n_clients=2), _toy_data())
    # with R1 only, B becomes eligible
    assert len(build_scenario(ScenarioParams(n_clients=2, regions=("R1",)), _toy_data()).clients) == 2


def test_direct_truth_is_clamped_at_the_fibre_floor() -> None:
    toy = _toy_data()
    toy.avg_ms[("10", "1")] = 0.5  # faster than light in fibre over ~450 km: a measurement artefact
    scenario = build_scenario(ScenarioParams(n_clients=1), toy)
    floor = fibre_floor_ms(toy.servers["A"], toy.servers["R1"])
    assert floor > 4.0
    assert scenario.base_ms[("A", "R1", "direct")] == floor


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (lambda: small(events=(Outage(region="Dublin", t_start_s=1.0, t_end_s=2.0),)), "not among the scenario's regions"),
        (lambda: small(regions=("Atlantis",)), "must be distinct cities"),
        (lambda: small(n_clients=1000), "eligible clients"),
        (lambda: small(events=(Step(region="Tokyo", path="carrier-pigeon", t_s=1.0, delta_ms=1.0),)), "path 'carrier-pigeon'"),
        (lambda: small(events=(Outage(region="Tokyo", t_start_s=5.0, t_end_s=5.0),)), "t_end_s must be after"),
        (lambda: small(noise_frac=-0.1), "noise_frac"),
        (lambda: ScenarioParams.from_dict({"seed": 1, "colour": "blue"}), "unknown scenario parameters"),
        (lambda: event_from_dict({"kind": "meteor", "region": "Tokyo"}), "event kind 'meteor'"),
    ],
    ids=["event-region", "unknown-region", "too-many-clients", "bad-path", "empty-outage", "noise", "unknown-key", "bad-kind"],
)
def test_bad_parameters_are_refused(tmp_path: Path, data: WonderProxyData, params: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        built = params()  # type: ignore[operator]
        if isinstance(built, ScenarioParams):
            build_scenario(built, data)


def test_event_dicts_round_trip() -> None:
    for ev in (
        Outage(region="Tokyo", t_start_s=1.0, t_end_s=2.0, path="direct"),
        Step(region="Tokyo", path="direct", t_s=3.0, delta_ms=40.0),
        Oscillation(region="Tokyo", path="accelerator", period_s=6.0, amplitude_ms=9.0),
    ):
        assert event_from_dict(json.loads(json.dumps(event_to_dict(ev)))) == ev



def test_a_negative_step_stops_at_the_fibre_floor(tmp_path: Path) -> None:
    toy = _toy_data()
    # 12 ms - 9 ms = 3 ms: still positive, but under A-R1's floor of about 4.7 ms
    step = Step(region="R1", path="direct", t_s=1.0, delta_ms=-9.0)
    scenario = build_scenario(ScenarioParams(n_clients=1, regions=("R1",), duration_s=2.0, events=(step,)), toy)
    write_samples(scenario, tmp_path / "s.csv")
    truth = {r["t_s"]: float(r["truth_ms"]) for r in read_rows(tmp_path / "s.csv") if r["path"] == "direct"}
    floor = fibre_floor_ms(toy.servers["A"], toy.servers["R1"])
    assert 3.0 < floor < 12.0
    assert truth == {"0": 12.0, "1": pytest.approx(floor, abs=0.0006)}
