"""An in-memory DNS provider for the exporter tests: the Provider protocol, every call recorded, failures on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from latency_router.exporters.dns.errors import ProviderError
from latency_router.exporters.dns.model import Change, Key, RecordSet
from latency_router.exporters.dns.plan import key_label, weight_map

CALLS = ("list_keys", "current", "apply", "verify")


@dataclass
class _Failure:
    calls: tuple[str, ...]
    error: Callable[[], BaseException]
    left: int


class FakeProvider:
    """Holds record sets in a dict. `fail_next` makes the next calls raise; `mismatch_next` makes verify report a
    difference; `hold` (an Event) keeps apply() waiting until set; `on_apply` runs inside apply() before it writes;
    `listing=False` leaves out the optional list_keys(); `keep_deletes` makes apply() skip deletes (a broken server)."""

    def __init__(
        self,
        name: str = "fake",
        records: Mapping[Key, RecordSet] | None = None,
        *,
        representable: Callable[[RecordSet], RecordSet] | None = None,
        strict: bool = True,
        listing: bool = True,
    ) -> None:
        self.name = name
        self.records: dict[Key, RecordSet] = dict(records or {})
        self.strict = strict  # apply() checks that each change's old set is what it holds (as Route 53 does)
        self.calls: list[str] = []  # every call, in order: "list_keys", "current", "apply", "verify"
        self.listed: list[tuple[str, ...]] = []  # the names of every list_keys() call
        self.applied: list[tuple[Change, ...]] = []  # every apply() that wrote
        self.attempted: list[tuple[Change, ...]] = []  # every apply() call, failed ones too
        self.verified: list[tuple[RecordSet, ...]] = []
        self.hold: asyncio.Event | None = None
        self.on_apply: Callable[[Sequence[Change]], None] | None = None
        self.closed = False
        self.keep_deletes = False
        self._failures: list[_Failure] = []
        self._mismatches = 0
        if representable is not None:
            self.representable = representable
        if not listing:
            self.list_keys = None  # type: ignore[assignment]  # the runner looks it up with getattr(..., None)

    # --- failure injection ---------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        *,
        calls: Sequence[str] = CALLS,
        retryable: bool = True,
        error: Callable[[], BaseException] | None = None,
    ) -> None:
        """The next `count` calls among `calls` raise: a ProviderError (retryable or not) or error()."""
        unknown = set(calls) - set(CALLS)
        if unknown:
            raise ValueError(f"calls: unknown {sorted(unknown)}; known: {', '.join(CALLS)}")
        make = error or (lambda: ProviderError(self.name, "injected failure", retryable=retryable))
        self._failures.append(_Failure(tuple(calls), make, count))

    def mismatch_next(self, count: int = 1) -> None:
        """The next `count` verify() calls report a difference although the records match."""
        self._mismatches += count

    def _maybe_fail(self, call: str) -> None:
        self.calls.append(call)
        for failure in self._failures:
            if failure.left > 0 and call in failure.calls:
                failure.left -= 1
                raise failure.error()

    @property
    def writes(self) -> int:
        return len(self.applied)

    # --- Provider ------------------------------------------------------------------------------

    async def list_keys(self, names: Sequence[str]) -> list[Key]:
        """Every key held at these names (all are A or AAAA here), in key order."""
        self.listed.append(tuple(names))
        self._maybe_fail("list_keys")
        await asyncio.sleep(0)
        wanted = set(names)
        return sorted((k for k in self.records if k[0] in wanted), key=lambda k: (k[0], k[1], k[2] or ""))

    async def current(self, keys: Sequence[Key]) -> Mapping[Key, RecordSet]:
        self._maybe_fail("current")
        await asyncio.sleep(0)
        return {k: self.records[k] for k in keys if k in self.records}

    async def apply(self, changes: Sequence[Change]) -> None:
        changes = tuple(changes)
        self.attempted.append(changes)
        self._maybe_fail("apply")
        await asyncio.sleep(0)  # a real provider's write takes a while: let other tasks run meanwhile
        if self.hold is not None:
            await self.hold.wait()
        if self.on_apply is not None:
            self.on_apply(changes)
        if self.strict:
            for c in changes:
                if self.records.get(c.key) != c.old:
                    raise ProviderError(self.name, f"{key_label(c.key)}: not as planned (changed meanwhile)")
        for c in changes:
            if c.new is None:
                if not self.keep_deletes:
                    self.records.pop(c.key, None)
            else:
                self.records[c.key] = c.new
        self.applied.append(changes)

    async def verify(self, desired: Sequence[RecordSet]) -> list[str]:
        self.verified.append(tuple(desired))
        self._maybe_fail("verify")
        await asyncio.sleep(0)
        if self._mismatches > 0:
            self._mismatches -= 1
            return ["injected mismatch"]
        lines = []
        for want in desired:
            have = self.records.get(want.key)
            if have is None:
                lines.append(f"{key_label(want.key)}: missing")
            elif weight_map(have) != weight_map(want) or have.ttl != want.ttl:
                lines.append(f"{key_label(want.key)}: serves {weight_map(have)}, want {weight_map(want)}")
        return lines

    async def aclose(self) -> None:
        self.closed = True
