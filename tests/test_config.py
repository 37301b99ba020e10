"""Config loading: the shipped examples load, every bad-*.toml fixture gives exactly its expected lines, durations parse."""

from __future__ import annotations

import ipaddress
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from latency_router.config import POLICY_NAMES, Config, ConfigError, load_config, parse_config
from latency_router.durations import format_duration, parse_duration

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "config"
BAD = sorted(FIXTURES.glob("bad-*.toml"))
CLI = Path(sys.executable).parent / "latency-router"

MINIMAL = """
[[regions]]
name = "eu-west-1"
lat = 53.35
lon = -6.26

[[regions.paths]]
name = "direct"
probe = "udp://203.0.113.10:7007"
answer = "203.0.113.10"
"""


def expected_lines(fixture: Path) -> list[str]:
    return fixture.with_suffix(".expected").read_text().splitlines()


def check_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "check-config", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def problems_of(source) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(source)
    return info.value.problems


# --- fixtures ---------------------------------------------------------------------------------


def test_there_are_enough_bad_fixtures_each_with_its_expected_lines():
    assert len(BAD) >= 20
    for fixture in BAD:
        assert fixture.with_suffix(".expected").is_file(), fixture.name
        assert expected_lines(fixture), fixture.name


@pytest.mark.parametrize("fixture", BAD, ids=lambda p: p.stem)
def test_bad_fixture_gives_exactly_its_expected_lines(fixture):
    with pytest.raises(ConfigError) as info:
        load_config(fixture)
    assert info.value.problems == expected_lines(fixture)
    assert str(info.value) == "\n".join(expected_lines(fixture))


@pytest.mark.parametrize("fixture", BAD, ids=lambda p: p.stem)
def test_check_config_cli_exits_2_with_the_expected_lines_and_no_traceback(fixture):
    result = check_config(str(fixture))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == expected_lines(fixture)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# --- the shipped examples -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lab.toml", "minimal.toml"])
def test_check_config_cli_accepts_the_examples(name):
    result = check_config(f"examples/{name}")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"examples/{name}: ok (")
    assert len(result.stdout.splitlines()) == 1


def test_check_config_cli_takes_dash_c_too():
    result = check_config("-c", "examples/minimal.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "examples/minimal.toml: ok (2 regions, 4 paths, 1 group, 1 service)\n"


def test_check_config_cli_reports_a_missing_file_in_one_line():
    result = check_config("no-such-dir/nope.toml")
    assert result.returncode == 2
    assert result.stderr == "no-such-dir/nope.toml: no such file\n"


def test_lab_example_has_three_regions_of_two_lab_paths_on_loopback_and_one_outage():
    config = load_config(ROOT / "examples" / "lab.toml")
    assert [r.name for r in config.regions] == ["eu-west-1", "us-east-1", "ap-southeast-1"]
    for x, region in enumerate(config.regions, start=1):
        assert [p.name for p in region.paths] == ["direct", "accelerator"]
        for y, path in enumerate(region.paths, start=1):
            assert path.probe == f"udp://127.0.{x}.{y}:7007"
            assert path.lab is not None and 0 <= path.lab.jitter_s <= path.lab.delay_s
    assert config.lab is not None and config.lab.udp_port == 7007
    (event,) = config.lab.events
    assert (event.region, event.path, event.kind, event.start_s, event.end_s) == ("us-east-1", "direct", "outage", 60.0, 90.0)
    assert len(config.groups) >= 2 and len(config.services) == 1


def test_minimal_example_has_no_lab_and_uses_documentation_addresses():
    config = load_config(ROOT / "examples" / "minimal.toml")
    assert config.lab is None
    docs = [ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("198.51.100.0/24")]
    for region in config.regions:
        for path in region.paths:
            assert any(ipaddress.ip_address(path.answer) in net for net in docs)


# --- the model ----------------------------------------------------------------------------------


def test_defaults_and_derived_values():
    config = parse_config("[agent]\nname = \"fra1\"\n[[groups]]\nname = \"eu\"\n[[services]]\nname = \"api\"\npolicy = \"latency\"\n" + MINIMAL)
    assert (config.api.host, config.api.port) == ("127.0.0.1", 9180)
    assert (config.probing.interval_s, config.probing.timeout_s, config.probing.samples) == (1.0, 0.5, 5)
    assert (config.health.fail_after, config.health.recover_after) == (3, 3)
    assert config.groups[0].vantage == "fra1"  # a group's vantage defaults to the local agent
    assert config.services[0].regions == ("eu-west-1",)  # a service may use every region by default
    assert config.default_group == "default" and config.lab is None


def test_ipv6_listen_and_ipv6_answers():
    config = parse_config('[api]\nlisten = "[::1]:9181"\n' + MINIMAL.replace('answer = "203.0.113.10"', 'answer = "2001:DB8::10"'))
    assert (config.api.host, config.api.port) == ("::1", 9181)
    assert config.regions[0].paths[0].answer == "2001:db8::10"


def test_models_are_frozen():
    config = parse_config(MINIMAL)
    with pytest.raises(ValidationError):
        config.probing.samples = 7  # type: ignore[misc]


def test_parse_config_takes_a_mapping_too():
    import tomllib

    data = tomllib.loads(MINIMAL)
    assert parse_config(data).regions[0].name == "eu-west-1"
    data["regions"][0]["lat"] = -91.0
    assert problems_of(data) == ["regions[0].lat: must be at least -90"]


def test_policy_names_are_the_documented_set():
    assert POLICY_NAMES == ("latency", "failover", "weighted", "geolocation", "geoproximity", "multivalue")
    for policy in POLICY_NAMES:
        parse_config(MINIMAL + f'\n[[services]]\nname = "s"\npolicy = "{policy}"\n')


def test_building_a_config_in_python_checks_cross_references_too():
    region = {"name": "a", "lat": 1.0, "lon": 2.0, "paths": [{"name": "d", "probe": "udp://192.0.2.1:7007", "answer": "192.0.2.1"}]}
    with pytest.raises(ValidationError, match=r"services\[0\]\.regions\[0\]: unknown region 'b'"):
        Config(regions=[region], services=[{"name": "s", "policy": "latency", "regions": ["b"]}])


def test_problems_follow_file_order_not_schema_order():
    text = (
        '[[services]]\nname = "api"\npolicy = "nearest"\n\n'
        + MINIMAL.replace("lat = 53.35", "lat = 100.0")
        + '\n[probing]\nsamples = 0\n\n[agent]\nname = ""\nshade = 1\n'
    )
    assert problems_of(text) == [
        "services[0].policy: unknown policy 'nearest' (expected one of: latency, failover, weighted, geolocation, geoproximity, multivalue)",
        "regions[0].lat: must be at most 90",
        "probing.samples: must be at least 1",
        "agent.name: must not be empty",
        "agent.shade: unknown key",
    ]


def test_a_missing_key_is_reported_after_the_rest_of_its_table():
    text = MINIMAL.replace('answer = "203.0.113.10"\n', "") + '\n[[groups]]\nname = "x y"\n'
    assert problems_of(text) == [
        "regions[0].paths[0].answer: required key is missing",
        "groups[0].name: invalid name 'x y': use letters, digits, '_', '.', '-'",
    ]


def test_a_table_where_an_array_of_tables_belongs():
    assert problems_of('regions = "eu-west-1"\n[agent]\nname = 5\n') == [
        "regions: expected an array, got 'eu-west-1'",
        "agent.name: expected a name (string), got 5",
    ]


# --- durations ----------------------------------------------------------------------------------

UNIT_S = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# the documented grammar, written independently of the parser: ASCII digits, an optional fraction, a unit
GRAMMAR = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ns|us|µs|ms|s|m|h)\s*", re.ASCII)

durations = st.builds(
    lambda whole, frac, unit: f"{whole}{'.' + frac if frac else ''}{unit}",
    st.integers(min_value=0, max_value=10**9),
    st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=3)),
    st.sampled_from(sorted(UNIT_S)),
)


@given(durations)
def test_parse_duration_reads_the_number_in_its_unit(text):
    number, unit = GRAMMAR.fullmatch(text).groups()
    assert parse_duration(text) == pytest.approx(float(number) * UNIT_S[unit], rel=1e-12)


@given(durations)
def test_format_duration_round_trips_through_parse_duration(text):
    seconds = parse_duration(text)
    written = format_duration(seconds)
    assert GRAMMAR.fullmatch(written), written
    assert parse_duration(written) == pytest.approx(seconds, rel=1e-9, abs=1e-18)


@given(st.text(max_size=12))
def test_parse_duration_accepts_only_the_grammar(text):
    if GRAMMAR.fullmatch(text):
        value = parse_duration(text)
        assert math.isfinite(value) and value >= 0
    else:
        with pytest.raises(ValueError, match=r"invalid duration"):
            parse_duration(text)


@pytest.mark.parametrize("text", ["5 sec", "-1s", "1", "ms", "1.s", ".5s", "1e3ms", "1s500ms", "inf s", "nan", "1_000ms", "１s", "1S"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(ValueError, match=r"invalid duration"):
        parse_duration(text)


@given(st.one_of(st.integers(), st.floats(), st.none(), st.booleans(), st.lists(st.text(), max_size=2)))
def test_parse_duration_rejects_non_strings(value):
    with pytest.raises(ValueError, match=r"expected a duration string"):
        parse_duration(value)


@given(st.text(max_size=12).filter(lambda t: not GRAMMAR.fullmatch(t)))
def test_a_bad_duration_in_a_config_is_one_line_naming_its_key(text):
    source = f"[probing]\ninterval = {_toml_string(text)}\n" + MINIMAL
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert problems_of(source) == [f"probing.interval: {info.value}"]


def _toml_string(text: str) -> str:
    """A TOML basic string for any text (control characters escaped)."""
    escaped = "".join(c if c.isprintable() and c not in '"\\' else f"\\U{ord(c):08x}" for c in text)
    return f'"{escaped}"'
