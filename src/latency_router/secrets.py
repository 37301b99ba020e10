"""Secrets by reference: 'env:NAME' reads an environment variable, 'file:PATH' a file's first line.

A resolved secret is a `Secret`: its repr and str never show the value, so it cannot leak into a log line,
a metric or an API answer by accident; `.reveal()` is the one way to read it.
"""

from __future__ import annotations

import os
from pathlib import Path


class SecretError(ValueError):
    """A secret reference that cannot be resolved; the message names the field and the reference, never a value."""


class Secret:
    """A secret value that does not print itself."""

    __slots__ = ("_value", "ref")

    def __init__(self, value: str, ref: str) -> None:
        self._value = value
        self.ref = ref

    def reveal(self) -> str:
        """The secret itself."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.ref!r})"

    __str__ = __repr__


def resolve_secret(ref: str, field: str) -> Secret:
    """Read the secret that `ref` ('env:NAME' or 'file:PATH') points at; an empty one is an error."""
    kind, _, rest = ref.partition(":")
    if kind == "env":
        value = os.environ.get(rest)
        if value is None:
            raise SecretError(f"{field}: environment variable {rest} is not set")
    elif kind == "file":
        try:
            text = Path(rest).read_text(encoding="utf-8")
        except OSError as exc:
            raise SecretError(f"{field}: cannot read {rest}: {exc.strerror or exc}") from None
        value = text.splitlines()[0] if text else ""
    else:
        raise SecretError(f"{field}: write 'env:NAME' or 'file:PATH'")
    value = value.strip()
    if not value:
        raise SecretError(f"{field}: the secret in {ref} is empty")
    return Secret(value, ref)
