"""Config loading: the shipped examples load, every bad-*.toml fixture gives exactly its expected lines, durations parse."""

from __future__ import annotations

import copy
import ipaddress
import math
import re
import subprocess
import sys
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from latency_router.config import POLICY_NAMES, Config, ConfigError, load_config, parse_config
from latency_router.config.countries import COUNTRY_CODES
from latency_router.durations import MAX_DURATION_S, MAX_DURATION_TEXT, format_duration, parse_duration
from support import MINIMAL_CONFIG

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "config"
BAD = sorted(FIXTURES.glob("bad-*.toml"))
CLI = Path(sys.executable).parent / "latency-router"

MINIMAL = MINIMAL_CONFIG


def expected_lines(fixture: Path) -> list[str]:
    return fixture.with_suffix(".expected").read_text().splitlines()


def check_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "check-config", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def run_daemon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "run", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


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


@pytest.mark.parametrize(
    "name", ["bad-toml-nested-too-deep", "bad-toml-integer-too-long", "bad-region-name-array", "bad-duration-overflow"]
)
def test_run_exits_2_with_the_expected_lines_and_no_traceback(name):
    fixture = FIXTURES / f"{name}.toml"
    result = run_daemon("-c", str(fixture))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == expected_lines(fixture)
    assert "Traceback" not in result.stderr


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


ZONE_ID_SERVICE = '\n[[services]]\nname = "api"\npolicy = "latency"\nall_down = "static"\nfallback = ["192.0.2.9", "{a}"]\n'
ZONE_ID_FENCE = ZONE_ID_SERVICE.replace('"{a}"]\n', '"192.0.2.8"]\n[[services.fences]]\ncidrs = ["{c}"]\nregions = ["eu-west-1"]\n')


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        pytest.param(ZONE_ID_SERVICE.format(a="fe80::1%eth0"), "services[0].fallback[1]", id="fallback"),
        pytest.param(ZONE_ID_SERVICE.format(a="2001:db8::1%x'y z"), "services[0].fallback[1]", id="fallback-quote"),
        pytest.param(ZONE_ID_FENCE.format(c="fe80::%eth0/64"), "services[0].fences[0].cidrs[0]", id="fence-cidr"),
        pytest.param('\n[[groups]]\nname = "g"\ncidrs = ["fe80::1%a/64"]\n', "groups[0].cidrs[0]", id="loose-cidr"),
    ],
)
def test_an_address_or_network_with_a_zone_id_is_refused_naming_the_field(extra, where):
    # ipaddress keeps any text after '%' (quotes, spaces) as the zone id: none may reach a DNS record or LUA program
    (line,) = problems_of(MINIMAL + extra)
    assert line.startswith(f"{where}: ") and "has a zone id (the part after '%')" in line, line


@pytest.mark.parametrize("answer", ["eu.example.net", "eu.example.net.", "a-1.b2.example"])
def test_host_name_answers_stay_allowed_when_plain(answer):
    config = parse_config(MINIMAL.replace('answer = "203.0.113.10"', f'answer = "{answer}"'))
    assert config.regions[0].paths[0].answer == answer


@pytest.mark.parametrize("answer", ["eu.example.net'", "eu example.net", "eu_1.example.net", 'a".example', "a%b.example"])
def test_host_name_answers_with_other_characters_are_refused(answer):
    text = MINIMAL.replace('answer = "203.0.113.10"', f"answer = '{answer}'" if '"' in answer else f'answer = "{answer}"')
    (line,) = problems_of(text)
    assert line.startswith("regions[0].paths[0].answer: ") and "is not an IP address or a host name" in line, line


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
        extra = 'geolocation = {"*" = "eu-west-1"}\n' if policy == "geolocation" else ""
        config = parse_config(MINIMAL + f'\n[[services]]\nname = "s"\npolicy = "{policy}"\n{extra}')
        assert config.services[0].policy_name == policy


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
EXACT_UNIT_S = {
    unit: Decimal(text)
    for unit, text in [("ns", "1e-9"), ("us", "1e-6"), ("µs", "1e-6"), ("ms", "1e-3"), ("s", "1"), ("m", "60"), ("h", "3600")]
}
# the documented grammar, written independently of the parser: ASCII digits, an optional fraction, a unit
GRAMMAR = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ns|us|µs|ms|s|m|h)\s*", re.ASCII)


def _written(whole: int, frac: str, unit: str) -> str:
    return f"{whole}{'.' + frac if frac else ''}{unit}"


fractions = st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=3))
# durations within the maximum: the whole part stays below it, so any fraction keeps it there
durations = st.sampled_from(sorted(UNIT_S)).flatmap(
    lambda unit: st.builds(
        _written, st.integers(min_value=0, max_value=min(10**9, round(MAX_DURATION_S / UNIT_S[unit]) - 1)), fractions, st.just(unit)
    )
)
too_long = st.sampled_from(sorted(UNIT_S)).flatmap(
    lambda unit: st.builds(
        _written, st.integers(min_value=round(MAX_DURATION_S / UNIT_S[unit]) + 1, max_value=10**500), fractions, st.just(unit)
    )
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
    match = GRAMMAR.fullmatch(text)
    if match and Decimal(match.group(1)) * EXACT_UNIT_S[match.group(2)] > 86400:
        with pytest.raises(ValueError, match=r"longer than the maximum of 24h"):
            parse_duration(text)
    elif match:
        value = parse_duration(text)
        assert math.isfinite(value) and 0 <= value <= MAX_DURATION_S
    else:
        with pytest.raises(ValueError, match=r"invalid duration"):
            parse_duration(text)


def test_the_maximum_duration_is_named_as_it_parses():
    assert parse_duration(MAX_DURATION_TEXT) == MAX_DURATION_S == 86400.0


@pytest.mark.parametrize("text", ["24h", "1440m", "86400s", "86400000ms", "86400000000us", "86400000000000ns", "23.9999h"])
def test_durations_up_to_the_maximum_are_accepted(text):
    assert 0 < parse_duration(text) <= MAX_DURATION_S


@given(too_long)
@example("9" * 400 + "s")  # float() of this is inf
@example("1" + "0" * 400 + "ns")
@example("24.000001h")
def test_a_duration_above_the_maximum_or_infinite_is_refused_naming_the_maximum(text):
    with pytest.raises(ValueError, match=r"^duration '.*'( \(\d+ characters\))? is longer than the maximum of 24h$"):
        parse_duration(text)


def test_a_very_long_duration_is_shown_cut_in_its_message():
    with pytest.raises(ValueError) as info:
        parse_duration("9" * 400 + "s")
    assert str(info.value) == f"duration '{'9' * 39}...{'9' * 10}s' (401 characters) is longer than the maximum of 24h"


@pytest.mark.parametrize(
    "text", ["5 sec", "-1s", "1", "ms", "1.s", ".5s", "1e3ms", "1s500ms", "inf s", "nan", "1_000ms", "１s", "1S", "1s\x00", "infs"]
)
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


# --- cross-references and ranges ------------------------------------------------------------------


def test_a_group_measured_by_the_local_agent_by_default_or_by_name():
    text = '[agent]\nname = "lab"\n' + MINIMAL + '\n[[groups]]\nname = "a"\n[[groups]]\nname = "b"\nvantage = "lab"\n'
    assert [g.vantage for g in parse_config(text).groups] == ["lab", "lab"]


def test_an_unknown_vantage_is_named_with_the_known_ones_and_the_default_agent_counts():
    assert problems_of(MINIMAL + '\n[[groups]]\nname = "g"\nvantage = "fra1"\n') == [
        "groups[0].vantage: unknown vantage 'fra1' (known: local)"
    ]


def test_an_invalid_agent_name_is_reported_once_not_again_at_each_group():
    assert problems_of('[agent]\nname = "a b"\n' + MINIMAL + '\n[[groups]]\nname = "g"\n[[groups]]\nname = "h"\n') == [
        "agent.name: invalid name 'a b': use letters, digits, '_', '.', '-'"
    ]


def test_building_a_config_in_python_checks_vantages_and_repeated_regions_too():
    region = {"name": "a", "lat": 1.0, "lon": 2.0, "paths": [{"name": "d", "probe": "udp://192.0.2.1:7007", "answer": "192.0.2.1"}]}
    with pytest.raises(ValidationError, match=r"groups\[0\]\.vantage: unknown vantage 'x' \(known: local\)"):
        Config(regions=[region], groups=[{"name": "g", "vantage": "x"}])
    with pytest.raises(ValidationError, match=r"services\[0\]\.regions\[1\]: region 'a' is listed twice"):
        Config(regions=[region], services=[{"name": "s", "policy": "latency", "regions": ["a", "a"]}])


def test_repeated_region_names_are_reported_at_the_region_only_not_at_a_service_using_all_regions():
    text = MINIMAL + MINIMAL + '\n[[services]]\nname = "api"\npolicy = "latency"\n'
    assert problems_of(text) == ["regions[1].name: duplicate region name 'eu-west-1'"]


def test_country_codes_are_the_249_iso_3166_1_codes_and_kosovo():
    assert len(COUNTRY_CODES) == 250
    assert all(re.fullmatch(r"[A-Z]{2}", code) for code in COUNTRY_CODES)
    assert {"GB", "US", "DE", "SG", "SS", "CW", "XK"} <= COUNTRY_CODES
    assert not {"UK", "EU", "XX", "ZZ", "AN", "YU"} & COUNTRY_CODES  # AN and YU were withdrawn


def test_country_codes_are_taken_in_any_case_and_kept_upper_case():
    config = parse_config(MINIMAL + '\n[[groups]]\nname = "g"\ncountries = ["gb", "De", "xk"]\n')
    assert config.groups[0].countries == ("GB", "DE", "XK")


@pytest.mark.parametrize(
    ("listen", "port"), [("127.0.0.1:1", 1), ("127.0.0.1:65535", 65535), ("[::1]:080", 80), ("localhost:9180", 9180)]
)
def test_api_listen_takes_ports_1_to_65535(listen, port):
    assert parse_config(f'[api]\nlisten = "{listen}"\n' + MINIMAL).api.port == port


@pytest.mark.parametrize("digits", ["0", "65536", "00000", "9" * 5000])
def test_api_listen_refuses_other_ports_with_the_range_the_lab_ports_use(digits):
    (line,) = problems_of(f'[api]\nlisten = "127.0.0.1:{digits}"\n' + MINIMAL)
    assert line.startswith("api.listen: port must be within 1..65535, got ")
    assert len(line) < 120
    lab = '[lab]\ntcp_port = 0\n' + MINIMAL.replace('answer = "203.0.113.10"', 'answer = "203.0.113.10"\nlab = {delay = "1ms"}')
    assert problems_of(lab) == ["lab.tcp_port: port must be within 1..65535, got 0"]


# --- robustness: any input gives a Config or one line per problem, each naming its key path ---------------

LAB = tomllib.loads((ROOT / "examples" / "lab.toml").read_text())
_KEY = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*")'
PROBLEM_LINE = re.compile(rf"(?P<path>{_KEY}(?:\[[0-9]+\]|\.{_KEY})*): (?P<message>\S.*)")
DELETE = object()


def _locations(value, loc=()):
    """Every key path in the decoded TOML, as tuples of keys and indexes."""
    if loc:
        yield loc
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _locations(child, (*loc, key))


LOCATIONS = sorted(_locations(LAB), key=str)
KEYS = sorted({part for loc in LOCATIONS for part in loc if isinstance(part, str)})
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.datetimes(),
    st.dates(),
    st.times(),
    st.sampled_from(["", "x", "1s", "0ms", "25h", "9" * 400 + "s", "udp://127.0.0.1:7", "127.0.0.1:0", "eu-west-1", "direct",
                     "lab", "outage", "step", "latency", "GB", "xx", "192.0.2.0/24", "\x00", "é" * 300, "a\nb"]),
)
raw_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
mutations = st.lists(st.tuples(st.sampled_from(LOCATIONS), st.just(DELETE) | raw_values), min_size=1, max_size=3)


def _mutated(mutations) -> dict:
    data = copy.deepcopy(LAB)
    for loc, value in mutations:
        parent = data
        try:
            for part in loc[:-1]:
                parent = parent[part]
            if value is DELETE:
                del parent[loc[-1]]
            else:
                parent[loc[-1]] = value
        except (KeyError, IndexError, TypeError):  # an earlier mutation replaced or removed the way there
            pass
    return data


def _parts(path: str) -> list[str | int]:
    """'regions[0]."a b"' -> ['regions', 0, 'a b']."""
    parts: list[str | int] = []
    for index, key in re.findall(rf"\[([0-9]+)\]|\.?({_KEY})", path):
        parts.append(int(index) if index else tomllib.loads(f"k = {key}")["k"] if key.startswith('"') else key)
    return parts


def assert_problem_lines_name_their_keys(problems: list[str], data) -> None:
    """Each problem is one line `key.path: message` whose key exists in the data, or is missing from a table that does."""
    assert problems
    for line in problems:
        match = PROBLEM_LINE.fullmatch(line)
        assert match, line
        if data is None:
            continue
        *parents, last = _parts(match["path"])
        node = data
        for part in parents:
            assert isinstance(node, (dict, list)), line
            node = node[part]
        assert isinstance(node, dict) or (isinstance(node, list) and isinstance(last, int) and last < len(node)), line


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations)
@example([(("regions", 0, "name"), ["x"])])  # was: TypeError unhashable type 'list' in the cross-table checks
@example([(("lab", "events", 0, "region"), ["x"])])
@example([(("probing", "interval"), "9" * 400 + "s")])
@example([(("agent",), DELETE), (("groups", 0, "vantage"), "fra1")])
def test_a_mutated_lab_example_is_a_config_or_config_error_lines_naming_their_keys(mutations):
    data = _mutated(mutations)
    try:
        config = parse_config(data)
    except ConfigError as exc:
        assert_problem_lines_name_their_keys(exc.problems, data)
    else:
        assert isinstance(config, Config)


LAB_TEXT = (ROOT / "examples" / "lab.toml").read_text()


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(LAB_TEXT)), st.integers(min_value=0, max_value=8), st.text(max_size=8))
@example(0, 0, "x = " + "[" * 3000)
@example(LAB_TEXT.index("samples = 5") + 10, 1, "9" * 5000)
def test_edited_lab_example_text_is_a_config_or_config_error_lines(at, cut, insert):
    text = LAB_TEXT[:at] + insert + LAB_TEXT[at + cut :]
    try:
        config = parse_config(text)
    except ConfigError as exc:
        assert_problem_lines_name_their_keys(exc.problems, None)
    else:
        assert isinstance(config, Config)


def test_load_config_turns_a_nul_in_the_path_into_a_config_error():
    with pytest.raises(ConfigError) as info:
        load_config("lab\x00.toml")
    assert info.value.problems == ["'lab\\x00.toml': cannot read (embedded null byte)"]


def test_load_config_turns_a_checker_bug_into_one_config_error_line(monkeypatch, tmp_path):
    import latency_router.config.loader as loader

    def broken(text):
        raise TypeError("unhashable type: 'list'\nsecond line")

    monkeypatch.setattr(loader, "parse_config", broken)
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: internal error while checking: TypeError: unhashable type: 'list'\\nsecond line"]
