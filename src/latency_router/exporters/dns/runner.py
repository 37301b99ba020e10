"""One provider's exporter loop: the latest desired state, planned against what the provider holds, written safely.

Each attempt takes the newest desired state (an older one not yet written is dropped, never written after a newer
one), reads the provider, plans (shared churn threshold and safety refusals), writes the changes at most once per
`min_interval_s`, and reads them back (`verify`, and deleted sets must be gone). A failure is retried with exponential
backoff and full jitter, capped at `retry_max_s`, each retry planning again from the latest desired state; a
ProviderError that is not retryable, and a refused plan, wait for a new desired state, `force_next`, or the re-check.
An idle runner plans again from the same desired state every `recheck_s` (reads, writes only what differs, reads
back), so that a record changed or lost behind its back is repaired. What it reads: the desired keys, the keys it
wrote or wanted before, and, once per name, every A/AAAA set the provider holds there (the optional
`list_keys(names)` of a provider), so that sets written by an earlier run and no longer wanted are deleted too.
Nothing here raises out of `run()`, and `desire()` never waits: a provider that is down never holds up probing or
deciding. `once()` is the same round for a one-shot caller (`dns plan|apply`), with errors raised.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

from latency_router.exporters.dns.errors import ProviderError
from latency_router.exporters.dns.model import Key, Plan, Provider, RecordSet
from latency_router.exporters.dns.plan import PlanSettings, key_label, make_plan, plan_counts

log = logging.getLogger(__name__)

STATES: tuple[str, ...] = ("ok", "pending", "retrying", "failed", "refused")


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """Seconds between writes to one provider, the retry backoff's base and cap, the idle re-check interval (0: none),
    and the plan's settings."""

    min_interval_s: float = 1.0
    retry_base_s: float = 0.2
    retry_max_s: float = 5.0
    recheck_s: float = 60.0
    plan: PlanSettings = field(default_factory=PlanSettings)

    def __post_init__(self) -> None:
        for name in ("min_interval_s", "retry_base_s", "retry_max_s", "recheck_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"{name}: expected a finite number of seconds >= 0, got {value!r}")
        if self.retry_base_s <= 0:
            raise ValueError(f"retry_base_s: must be above 0, got {self.retry_base_s!r}")
        if self.retry_max_s < self.retry_base_s:
            raise ValueError(f"retry_max_s: must be at least retry_base_s ({self.retry_base_s}), got {self.retry_max_s!r}")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What once() did: the plan, whether its changes were written, and the read-back differences ([]: all match)."""

    plan: Plan
    written: bool = False
    differences: tuple[str, ...] = ()


class ExporterRunner:
    """Keeps one provider in step with the latest desired record sets; status() tells how it goes."""

    def __init__(
        self,
        provider: Provider,
        settings: RunnerSettings = RunnerSettings(),
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.settings = settings
        self._clock, self._sleep, self._wall = clock, sleep, wall
        self._rng = rng if rng is not None else random.Random()
        self._desired: tuple[RecordSet, ...] | None = None
        self._generation = 0  # bumped by every desire()
        self._handled = 0  # the newest generation with a final outcome: written, refused, or failed for good
        self._retry_due = False
        self._force = False
        self._unverified = False  # a write (or a failed one) not yet read back as expected
        self._managed: set[Key] = set()  # keys written or desired before: read again so that the plan can delete them
        self._names: set[str] = set()  # every name a desired state held: its A/AAAA sets are this runner's to keep
        self._listed: set[str] = set()  # the names list_keys() answered for (once per name and runner)
        self._rejected: str | None = None  # why the latest desired state could not be built, until a good one comes
        self._recheck_due = False
        self._checked_at: float | None = None  # clock() at the start of the last attempt
        self._last_write_at: float | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._state = "pending"
        self._last_success_at: float | None = None
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._consecutive_failures = 0
        self._writes_total = 0
        self._failures_total = 0
        self._last_plan: dict[str, int] | None = None
        self._refused: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.provider.name

    @property
    def idle(self) -> bool:
        """True when there is nothing to do until a new desired state, force_next, or the next re-check."""
        return not self._work_due()

    # --- the caller's side: never waits ----------------------------------------------------------

    def desire(self, record_sets: Iterable[RecordSet]) -> None:
        """Make these record sets the state to reach; it replaces any older one not written yet.

        The same state again changes nothing (but it ends a reject_desired()): the daemon calls this after every
        evaluation, and an unchanged state must neither read the provider again nor cut a backoff short (a permanent
        error is not retried every second).
        """
        desired = tuple(record_sets)
        if self._rejected is not None:  # a good state again, even an unchanged one: the problem is over
            log.info("dns exporter %s: the desired state can be built again", self.provider.name)
            self._rejected = None
        if desired == self._desired:
            return
        self._desired = desired
        self._names.update(rs.name for rs in desired)
        self._generation += 1
        if self._state != "retrying":
            self._state = "pending"
        self._wake.set()

    def reject_desired(self, problem: str) -> None:
        """The caller could not build the desired state (`problem` says why): state "failed" with that error until the
        next desire(); the last good desired state stays the one kept, so nothing of the bad one is written. Counted
        and logged once per distinct problem (the daemon reports it after every evaluation)."""
        text = f"{self.provider.name}: cannot build the desired record sets: {problem}"
        if text == self._rejected:
            return
        self._rejected = text
        self._failures_total += 1
        self._last_error, self._last_error_at = text, self._wall()
        log.error("dns exporter %s: %s (the last good desired state is kept)", self.provider.name, text)

    def force_next(self) -> None:
        """Make the next plan with force (safety refusals lifted), and plan again now if the last one was refused."""
        self._force = True
        self._wake.set()

    def stop(self) -> None:
        """End run() at its next step (a backoff or rate-limit wait ends at once)."""
        self._stopping.set()
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """The exporter's state for GET /v1/exporters and the metrics: no secret, only names, counts and messages."""
        return {
            "provider": self.provider.name,
            "state": "failed" if self._rejected is not None else self._state,
            "last_success_at": self._last_success_at,
            "last_error": self._rejected if self._rejected is not None else self._last_error,
            "last_error_at": self._last_error_at,
            "consecutive_failures": self._consecutive_failures,
            "writes_total": self._writes_total,
            "failures_total": self._failures_total,
            "last_plan": dict(self._last_plan) if self._last_plan is not None else None,
            "refused": list(self._refused),
            "record_sets": len(self._desired) if self._desired is not None else 0,
        }

    # --- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Apply desired states until stop(); errors are logged, counted and retried, never raised."""
        while not self._stopping.is_set():
            try:
                if not self._work_due():
                    self._wake.clear()  # no await since the check: a desire() in between is not missed
                    wait = self._recheck_wait()
                    if wait is None:
                        await self._wake.wait()
                    elif await self._race(wait, self._wake):
                        self._recheck_due = True  # idle for recheck_s: plan again from the same desired state
                    continue
                await self._pause(self._rate_limit_wait())
                if self._stopping.is_set():
                    break
                if await self._attempt():
                    await self._pause(self._backoff())
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug of ours must not end the exporter: count it and go on after a backoff
                log.exception("dns exporter %s: unexpected error in the exporter loop", self.provider.name)
                self._failure(f"{self.provider.name}: internal error in the exporter loop", retryable=True)
                await self._pause(self._backoff())

    def _work_due(self) -> bool:
        if self._desired is None:
            return False
        return self._generation != self._handled or self._retry_due or self._force or self._recheck_due

    def _recheck_wait(self) -> float | None:
        """Seconds until the next re-check; None when there is none to wait for (off, or nothing desired or tried yet)."""
        if self.settings.recheck_s <= 0 or self._desired is None or self._checked_at is None:
            return None
        return max(0.0, self._checked_at + self.settings.recheck_s - self._clock())

    def _rate_limit_wait(self) -> float:
        if self._last_write_at is None:
            return 0.0
        return max(0.0, self._last_write_at + self.settings.min_interval_s - self._clock())

    def backoff_cap(self, failures: int) -> float:
        """The most a retry waits after this many failures in a row: base x 2^(failures-1), at most retry_max_s."""
        s = self.settings
        return min(s.retry_max_s, s.retry_base_s * 2.0 ** min(max(failures, 1) - 1, 64))

    def _backoff(self) -> float:
        """Full jitter: uniform between 0 and the cap."""
        return self._rng.uniform(0.0, self.backoff_cap(self._consecutive_failures))

    async def _pause(self, delay: float) -> None:
        """sleep(delay), ended early by stop()."""
        await self._race(delay)

    async def _race(self, delay: float, *events: asyncio.Event) -> bool:
        """sleep(delay), ended early by stop() or any of the events; True when the whole delay passed."""
        if delay <= 0:
            return True
        sleeper = asyncio.ensure_future(self._sleep(delay))
        others = [asyncio.ensure_future(e.wait()) for e in (self._stopping, *events)]
        try:
            await asyncio.wait({sleeper, *others}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, *others):
                task.cancel()
            await asyncio.gather(sleeper, *others, return_exceptions=True)
        return sleeper.done() and not sleeper.cancelled() and not self._stopping.is_set()

    async def once(self, *, write: bool, force: bool = False) -> Outcome:
        """One round from the desired state for a one-shot caller (`dns plan|apply`): read (the desired keys, and every
        A/AAAA set list_keys() finds at their names), plan, and with `write` write the changes and read them back
        (deleted sets must be gone). Errors are raised (ProviderError, ValueError for a bad desired state), not retried."""
        desired = self._desired or ()
        await self._list_new_names()
        current = dict(await self.provider.current(self._keys(desired)))
        plan = self._plan(current, desired, force)
        desired_keys = [rs.key for rs in desired]
        if not write or not plan.changes:
            self._managed = self._still_managed(desired_keys, current, Plan(plan.provider))  # nothing was deleted
            return Outcome(plan)
        self._last_write_at = self._clock()
        await self.provider.apply(plan.changes)
        self._writes_total += 1
        self._managed = self._still_managed(desired_keys, current, plan)
        return Outcome(plan, True, tuple(await self._read_back(desired_keys, current, plan)))

    async def _attempt(self) -> bool:
        """One plan-write-verify round from the latest desired state; True when it should be retried."""
        desired, generation, force, recheck = self._desired or (), self._generation, self._force, self._recheck_due
        self._retry_due = self._recheck_due = False
        self._checked_at = self._clock()
        provider = self.provider
        desired_keys = [rs.key for rs in desired]

        try:
            await self._list_new_names()
        except Exception as exc:
            return self._provider_failure(exc, "list_keys", generation)
        try:
            current = dict(await provider.current(self._keys(desired)))
        except Exception as exc:
            return self._provider_failure(exc, "current", generation)

        try:
            plan = self._plan(current, desired, force)
        except ProviderError as exc:
            return self._provider_failure(exc, "plan", generation)
        except Exception as exc:  # the desired state or representable() is wrong: planning again will not help
            detail = f": {exc}" if isinstance(exc, ValueError) else ""
            return self._failure(f"{provider.name}: plan failed with {type(exc).__name__}{detail}", False, generation)

        if plan.changes:
            self._last_write_at = self._clock()
            self._unverified = True  # even a failed write may have written part of it
            try:
                await provider.apply(plan.changes)
            except Exception as exc:
                self._managed |= set(desired_keys)
                return self._provider_failure(exc, "apply", generation)
            self._writes_total += 1
            log.info("dns exporter %s: wrote %s", provider.name, _summary(plan))
        self._managed = self._still_managed(desired_keys, current, plan)

        if self._unverified or recheck:  # a re-check reads back too: an answer may be broken where the API looks right
            try:
                differences = await self._read_back(desired_keys, current, plan)
            except Exception as exc:
                differences = exc
            if differences:
                self._unverified = True
                self._managed |= {c.key for c in plan.changes if c.new is None}  # read again: a delete may not be done
                if isinstance(differences, Exception):
                    return self._provider_failure(differences, "verify", generation)
                more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
                error = ProviderError(provider.name, f"verify: read back differs: {differences[0]}{more}")
                return self._provider_failure(error, "verify", generation)
            self._unverified = False

        self._consecutive_failures = 0
        self._last_success_at = self._wall()
        self._handled = generation
        if force:
            self._force = False
        if generation == self._generation:
            self._state = "refused" if plan.refused else "ok"
        else:
            self._state = "pending"  # a newer desired state came in meanwhile: the loop goes on with it
        return False

    async def _list_new_names(self) -> None:
        """Ask list_keys() (when the provider has it) once per name for the A/AAAA sets held there: sets an earlier run
        wrote and this one no longer wants are then read, and deleted by the plan like any other unwanted managed set."""
        lister = getattr(self.provider, "list_keys", None)
        names = sorted(self._names - self._listed)
        if lister is None or not names or not self.settings.plan.manage_deletes:
            return
        asked = set(names)
        for key in await lister(names):
            name, rtype, scope = key
            if name in asked and rtype in ("A", "AAAA") and (scope is None or isinstance(scope, str)):
                self._managed.add((name, rtype, scope))
        self._listed |= asked

    def _keys(self, desired: Iterable[RecordSet]) -> list[Key]:
        """The desired keys, then the other managed ones (the plan deletes those it may)."""
        desired_keys = [rs.key for rs in desired]
        return list(dict.fromkeys([*desired_keys, *sorted(self._managed - set(desired_keys), key=_key_order)]))

    def _plan(self, current: dict[Key, RecordSet], desired: tuple[RecordSet, ...], force: bool) -> Plan:
        provider = self.provider
        plan = make_plan(provider.name, current, desired, self.settings.plan,
                         force=force, representable=getattr(provider, "representable", None))
        if plan.refused != self._refused:  # said once, not at every evaluation while it stands
            for line in plan.refused:
                log.warning("dns exporter %s: %s", provider.name, line)
        self._last_plan, self._refused = plan_counts(plan), plan.refused
        return plan

    async def _read_back(self, desired_keys: list[Key], current: dict[Key, RecordSet], plan: Plan) -> list[str]:
        """verify() of what the desired keys should serve after the plan, and a read showing its deleted sets gone."""
        differences = list(await self.provider.verify(_expected(desired_keys, current, plan)))
        deleted = [c.key for c in plan.changes if c.new is None]
        if deleted:
            left = await self.provider.current(deleted)
            differences += [f"{key_label(k)}: still there after its delete" for k in deleted if k in left]
        return differences

    def _still_managed(self, desired_keys: list[Key], current: dict[Key, RecordSet], plan: Plan) -> set[Key]:
        """Desired keys, and keys the provider still holds that a later plan should delete (refused deletes)."""
        managed = set(desired_keys)
        if self.settings.plan.manage_deletes:
            deleted = {c.key for c in plan.changes if c.new is None}
            managed |= {k for k in current if k not in deleted}
        return managed

    def _provider_failure(self, exc: Exception, call: str, generation: int) -> bool:
        if isinstance(exc, ProviderError):
            return self._failure(str(exc), exc.retryable, generation)
        # an unexpected exception's text may hold anything (a URL, a header): status and log name only its type, and the
        # log shows where it was raised (the frames, without the message)
        frames = "".join(traceback.format_tb(exc.__traceback__))
        log.error("dns exporter %s: %s raised %s at\n%s", self.provider.name, call, type(exc).__name__, frames)
        return self._failure(f"{self.provider.name}: {call} raised {type(exc).__name__}", True, generation)

    def _failure(self, text: str, retryable: bool, generation: int | None = None) -> bool:
        self._failures_total += 1
        self._consecutive_failures += 1
        self._last_error, self._last_error_at = text, self._wall()
        if retryable:
            self._state = "retrying"
            self._retry_due = True
            log.warning("dns exporter %s: %s (failure %d in a row; retrying)", self.provider.name, text,
                        self._consecutive_failures)
            return True
        self._state = "failed"
        self._retry_due = False
        if generation is not None:
            self._handled = generation  # wait for a newer desired state (or force_next)
        log.error("dns exporter %s: %s (not retried until the desired state changes)", self.provider.name, text)
        return False


def _key_order(key: Key) -> tuple[str, str, str]:
    return (key[0], key[1], key[2] or "")


def _expected(desired_keys: list[Key], current: dict[Key, RecordSet], plan: Plan) -> list[RecordSet]:
    """What the provider should serve for the desired keys after the plan: its writes, and the current sets it kept."""
    after = dict(current)
    for change in plan.changes:
        if change.new is None:
            after.pop(change.key, None)
        else:
            after[change.key] = change.new
    return [after[k] for k in desired_keys if k in after]


def _summary(plan: Plan) -> str:
    counts = plan_counts(plan)
    keys = ", ".join(f"{c.action} {key_label(c.key)}" for c in plan.changes[:5])
    more = f" (+{len(plan.changes) - 5} more)" if len(plan.changes) > 5 else ""
    return f"{counts['create']} created, {counts['update']} updated, {counts['delete']} deleted: {keys}{more}"
