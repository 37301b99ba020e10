"""ConfigError, and pydantic's errors rewritten into short `key.path: message` lines in file order."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from latency_router.config.checks import Loc, Problem, key_path
from latency_router.config.fields import show


class ConfigError(Exception):
    """A config that cannot be used; `.problems` holds one `key.path: message` line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def _bound(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _wording(error: Mapping[str, Any]) -> str:
    """Pydantic's wording ("Input should be ...") as a short plain message."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    match kind:
        case "extra_forbidden":
            return "unknown key"
        case "missing":
            return "required key is missing"
        case "int_type" | "int_parsing" | "int_from_float":
            return f"expected an integer, got {show(value)}"
        case "float_type" | "float_parsing":
            return f"expected a number, got {show(value)}"
        case "finite_number":
            return f"must be a finite number, got {show(value)}"
        case "string_type":
            return f"expected a string, got {show(value)}"
        case "bool_type" | "bool_parsing":
            return f"expected true or false, got {show(value)}"
        case "model_type" | "model_attributes_type" | "dict_type":
            return f"expected a table, got {show(value)}"
        case "tuple_type" | "list_type":
            return f"expected an array, got {show(value)}"
        case "greater_than_equal":
            return f"must be at least {_bound(ctx['ge'])}"
        case "greater_than":
            return f"must be greater than {_bound(ctx['gt'])}"
        case "less_than_equal":
            return f"must be at most {_bound(ctx['le'])}"
        case "less_than":
            return f"must be less than {_bound(ctx['lt'])}"
        case "too_short":
            return "must not be empty" if ctx.get("min_length") == 1 else f"needs at least {ctx['min_length']} items"
        case "too_long":
            return f"takes at most {ctx['max_length']} items"
        case "value_error" | "assertion_error":
            return str(ctx.get("error", error["msg"]))
        case "config_rule":
            return str(ctx["message"])
    return str(error["msg"])


def _is_echo(error: Mapping[str, Any]) -> bool:
    """A too_short that only repeats that the items failed (they are reported one by one)."""
    value = error.get("input")
    return error["type"] == "too_short" and isinstance(value, (list, tuple)) and len(value) > error["ctx"]["actual_length"]


def validation_problems(exc: ValidationError) -> list[Problem]:
    """The problems in a pydantic ValidationError, as (key path, message)."""
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(error["loc"])
        if _is_echo(error):
            continue
        if error["type"] == "config_cross":
            problems.extend((tuple(p[0]), p[1]) for p in error["ctx"]["problems"])
            continue
        if error["type"] == "config_rule":
            loc = (*loc, error["ctx"]["key"])
        problems.append((loc, _wording(error)))
    return problems


def _positions(data: Any) -> dict[Loc, tuple[int, int]]:
    """Each key path in the raw data -> (its index in document order, the index after its last descendant)."""
    order: dict[Loc, tuple[int, int]] = {}
    counter = 0

    def walk(loc: Loc, value: Any) -> None:
        nonlocal counter
        start = counter
        counter += 1
        children: Iterable[tuple[str | int, Any]] = ()
        if isinstance(value, Mapping):
            children = value.items()
        elif isinstance(value, (list, tuple)):
            children = enumerate(value)
        for key, child in children:
            walk((*loc, key), child)
        order[loc] = (start, counter)

    walk((), data)
    return order


def in_file_order(problems: list[Problem], data: Any) -> list[Problem]:
    """Sort problems by where their key is in the document (tomllib keeps document order); a missing key goes after its table."""
    positions = _positions(data)

    def rank(problem: Problem) -> tuple[int, int]:
        loc = problem[0]
        if loc in positions:
            return positions[loc][0], 0
        for cut in range(len(loc) - 1, -1, -1):
            if loc[:cut] in positions:
                return positions[loc[:cut]][1], 1
        return 0, 0

    return sorted(problems, key=rank)


def one_line(text: str) -> str:
    """The text with every unprintable character (a newline, a lone surrogate) escaped, so a problem stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def problem_lines(problems: list[Problem]) -> list[str]:
    """`key.path: message` lines, each problem once."""
    lines: list[str] = []
    for loc, message in problems:
        line = one_line(f"{key_path(loc)}: {message}" if loc else message)
        if line not in lines:
            lines.append(line)
    return lines
