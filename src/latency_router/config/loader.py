"""Load a TOML config into a Config, collecting every problem at once; and the `check-config` command."""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from latency_router.config.checks import cross_reference_problems
from latency_router.config.errors import ConfigError, in_file_order, one_line, problem_lines, validation_problems
from latency_router.config.models import SKIP_CROSS_CHECK, Config


def parse_config(source: str | Mapping[str, Any]) -> Config:
    """Validate TOML text or an already-decoded mapping into a Config (ConfigError lists every problem)."""
    if isinstance(source, str):
        data = _decode_toml(source)
    else:
        data = dict(source)
    problems = cross_reference_problems(data)
    config = None
    try:
        config = Config.model_validate(data, context={SKIP_CROSS_CHECK: True})
    except ValidationError as exc:
        problems = validation_problems(exc) + problems
    if problems:
        raise ConfigError(problem_lines(in_file_order(problems, data)))
    assert config is not None
    return config


def _decode_toml(text: str) -> dict[str, Any]:
    """tomllib.loads, with every way it can fail turned into a one-line ConfigError."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([one_line(f"toml: {exc}")]) from None
    except ValueError as exc:  # tomllib lets int() refuse a literal of more than sys.get_int_max_str_digits() digits
        too_long = "digits" in str(exc)
        line = f"toml: an integer has more than {sys.get_int_max_str_digits()} digits" if too_long else f"toml: {exc}"
        raise ConfigError([one_line(line)]) from None
    except RecursionError:  # tomllib recurses once per level of nested arrays and inline tables
        raise ConfigError(["toml: arrays or inline tables are nested too deeply"]) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file; it raises nothing but ConfigError (one line per problem)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise ConfigError([one_line(f"{path!r}: cannot read ({exc})")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"toml: not UTF-8 text (byte {exc.start})"]) from None
    try:
        return parse_config(text)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 -- callers print ConfigError lines; a checker bug must not become a traceback
        raise ConfigError([one_line(f"{path}: internal error while checking: {type(exc).__name__}: {exc}")]) from exc


def summary(config: Config) -> str:
    """One line saying what a valid config holds."""
    paths = sum(len(r.paths) for r in config.regions)
    parts = [
        _count(len(config.regions), "region"),
        _count(paths, "path"),
        _count(len(config.groups), "group"),
        _count(len(config.services), "service"),
    ]
    if config.lab is not None:
        parts.append(f"lab with {_count(len(config.lab.events), 'event')}")
    return ", ".join(parts)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def check_config_main(path: str | Path) -> int:
    """`latency-router check-config FILE`: 0 and a summary on stdout, or 2 and one line per problem on stderr."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    print(f"{path}: ok ({summary(config)})")
    return 0
