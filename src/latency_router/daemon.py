"""`latency-router run`: the daemon. It wires probes, the latency table, the Decider, the HTTP API, Prometheus metrics
and the snapshot store, owns every task, reloads on SIGHUP and shuts down in a fixed order on SIGTERM or SIGINT.

Start-up: load the config (done by the caller) -> resolve the admin token -> start the lab (when configured) ->
restore the table from the store -> decide once -> listen -> probe, decide every interval, save every store interval.

Shutdown, under SHUTDOWN_TIMEOUT_S in all: stop probing (probes in flight are cancelled) -> a last decision ->
a last snapshot save -> stop the HTTP API -> stop the lab. Past the timeout the daemon exits 1 and says which step hung.

Reload (SIGHUP): the new config is validated whole; a config that fails, or that changes what needs a restart
([api] listen, [lab], [store] path), is refused, logged and counted while the old one keeps running. Otherwise
rows of targets that did not change keep their history (and health), the policies' state carries over for every
(service, group) whose plan did not change, and drains and pins stay where they still name something.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping
from urllib.parse import urlsplit

from latency_router import __version__
from latency_router.aio import run_async
from latency_router.api.backend import AdminError
from latency_router.config import ConfigError, load_config
from latency_router.decider.engine import Decider
from latency_router.decider.groups import GroupIndex
from latency_router.decider.table import HealthState, LatencyTable, RowKey, TableConfig, TableSnapshot
from latency_router.durations import format_duration
from latency_router.probes import EngineCounters, make_prober
from latency_router.probes.scheduler import Round, Scheduler
from latency_router.secrets import Secret, SecretError, resolve_secret
from latency_router.sdnotify import notify, reloading

if TYPE_CHECKING:
    from latency_router.config.models import Config
    from latency_router.decider.decision import Decision

log = logging.getLogger("latency_router.daemon")

REPORT_EVERY_S = 5.0
SHUTDOWN_TIMEOUT_S = 10.0
DNS_STOP_S = 3.0  # how long a DNS write in flight may take to finish at shutdown
LIVE_AFTER_INTERVALS = 5  # /healthz fails when no evaluation ran for this many probing intervals


def table_config(cfg: "Config") -> TableConfig:
    """The table's settings from a config."""
    return TableConfig.from_settings(cfg.probing, cfg.health, cfg.table)


def probe_targets(cfg: "Config") -> dict[str, tuple[str, str, str]]:
    """Every probe target of a config: its scheduler key 'region/path' -> (region, path, probe URL)."""
    return {f"{r.name}/{p.name}": (r.name, p.name, p.probe) for r in cfg.regions for p in r.paths}


def public_url(url: str) -> str:
    """A probe URL as the API shows it: no user info and no query (either may carry a credential)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def restart_only_changes(old: "Config", new: "Config") -> list[str]:
    """What a reload cannot apply: one line per changed setting that needs a restart."""
    problems = []
    if old.api.listen != new.api.listen:
        problems.append(f"api.listen: changed from {old.api.listen} to {new.api.listen}; a listen address needs a restart")
    def emulated(cfg: "Config") -> set[tuple[str, str, str, Any]]:
        return {(r.name, p.name, p.probe, p.lab) for r in cfg.regions for p in r.paths}

    if old.lab != new.lab or (old.lab is not None and emulated(old) != emulated(new)):
        problems.append("lab: the emulated regions changed; the lab needs a restart")
    for key in ("token", "max_body_bytes", "max_batch"):
        if getattr(old.api, key) != getattr(new.api, key):
            # the HTTP application holds these from its start: a reload that changed them would claim what is not so
            problems.append(f"api.{key.removesuffix('_bytes')}: changed; the HTTP API needs a restart to apply it")
    if old.dns != new.dns:
        problems.append("dns: changed; the DNS exporters need a restart to apply it")
    if (old.store and old.store.path) != (new.store and new.store.path):
        problems.append("store.path: changed; the snapshot store needs a restart")
    return problems


class Daemon:
    """One running daemon: the parts it wires and the Backend (HTTP API) and MetricsSource (Prometheus) it offers."""

    def __init__(self, cfg: "Config", config_path: str | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self._cfg = cfg
        self.config_path = config_path
        self.clock = clock
        self.token: Secret | None = resolve_secret(cfg.api.token, "api.token") if cfg.api.token else None
        self.counters = EngineCounters()
        self.latency_table = LatencyTable(table_config(cfg))
        self.decider = Decider(cfg)
        self.groups = GroupIndex.from_config(cfg)
        self._targets = probe_targets(cfg)
        self._scheduler = self._new_scheduler(cfg, self._targets)
        self._ensure_rows()
        self._snapshot: TableSnapshot = self.latency_table.snapshot(clock())
        self._published: Mapping[tuple[str, str], tuple[Any, ...]] = MappingProxyType({})
        self._rounds_done: set[str] = set()
        self._ready_at: float | None = None
        self._started_mono = time.monotonic()
        self._last_eval_mono: float | None = None
        self._running = False
        self._hung = False
        self._evaluate_soon: asyncio.Event | None = None  # set by a failed round: decide now, not at the next tick
        self.lab: Any = None
        self.store: Any = None
        if cfg.store is not None:
            from latency_router.store import SnapshotStore

            self.store = SnapshotStore(cfg.store.path)
        from latency_router.exporters.prometheus import Metrics

        self.metrics_registry = Metrics(self, version=__version__)
        self.dns_runners: dict[str, Any] = {}
        self._dns_records: dict[str, list[Any]] = {}
        if cfg.dns is not None and cfg.dns.providers:
            self._build_dns(cfg)

    # ---- wiring ----------------------------------------------------------------------------------------------

    def _build_dns(self, cfg: "Config") -> None:
        """One exporter runner per [[dns.providers]] table, fed with the records that name it."""
        from latency_router.exporters.dns.desired import DnsRecord
        from latency_router.exporters.dns.plan import PlanSettings
        from latency_router.exporters.dns.runner import ExporterRunner, RunnerSettings
        from latency_router.exporters.dns.setup import build_provider

        dns = cfg.dns
        settings = RunnerSettings(
            min_interval_s=dns.min_write_interval_s, retry_max_s=dns.retry_max_s, recheck_s=dns.recheck_s,
            plan=PlanSettings(min_weight_change=dns.min_weight_change, max_weight_shift=dns.max_weight_shift),
        )
        for i, p in enumerate(dns.providers):
            self.dns_runners[p.name] = ExporterRunner(build_provider(p, i), settings)
            self._dns_records[p.name] = [
                DnsRecord(r.name, r.service, r.mode, None if r.ttl_s is None else math.ceil(r.ttl_s))
                for r in dns.records if r.provider == p.name
            ]

    def _push_dns(self, decisions: Mapping[tuple[str, str], "Decision"]) -> None:
        """Hand each DNS exporter the record sets these decisions want (it writes only what changed, in its own task)."""
        if not self.dns_runners or self._ready_at is None:
            return  # provisional decisions of the start-up are not worth a DNS write
        from latency_router.exporters.dns.desired import desired_record_sets

        for name, runner in self.dns_runners.items():
            try:
                desired = desired_record_sets(decisions, self._cfg, self._dns_records[name])
            except ValueError as exc:  # the exporter says "failed" (logged and counted once) and keeps its last good state
                runner.reject_desired(str(exc))
                continue
            runner.desire(desired)

    def _new_scheduler(self, cfg: "Config", targets_by_key: dict[str, tuple[str, str, str]]) -> Scheduler:
        targets = [(key, make_prober(url, self.counters)) for key, (_, _, url) in targets_by_key.items()]
        p = cfg.probing
        return Scheduler(targets, interval_s=p.interval_s, timeout_s=p.timeout_s, samples=p.samples,
                         max_in_flight=p.max_in_flight, on_round=self._on_round)

    def _ensure_rows(self) -> None:
        """A row (unknown) for every target: until each has an RTT, decisions say they are provisional."""
        for region, path, _ in self._targets.values():
            self.latency_table.ensure(RowKey(self._cfg.agent.name, region, path))

    def _on_round(self, rnd: Round) -> None:
        """A finished round: into the table and the metrics (a round of a target that a reload removed is dropped)."""
        spec = self._targets.get(rnd.target)
        if spec is None:
            return
        region, path, url = spec
        key = RowKey(self._cfg.agent.name, region, path)
        table = self.latency_table
        was = table.health(key)
        table.add_round_result(key, rnd, self.clock())
        self.metrics_registry.observe_round(region, path, urlsplit(url).scheme, rnd)
        if was is not HealthState.DOWN and table.health(key) is HealthState.DOWN and self._evaluate_soon is not None:
            # this round took the row down: leave a dead region now, not up to an interval later (only then, so
            # that hysteresis still counts one evaluation per interval)
            self._evaluate_soon.set()
        if self._ready_at is None:
            self._rounds_done.add(rnd.target)
            if self._rounds_done >= self._targets.keys():
                self._ready_at = time.monotonic()

    def evaluate(self) -> Mapping[tuple[str, str], "Decision"]:
        """Snapshot the table and decide every (service, group); log and count each decision that changed."""
        now = self.clock()
        self._snapshot = self.latency_table.snapshot(now)
        # until every target has finished a round since start, decisions are provisional: a restart restores older
        # rows, and a first fresh round of one path must not become an incumbent that hysteresis then defends
        decisions = self.decider.evaluate(self._snapshot, now, warming=self._ready_at is None)
        self._after_decisions(decisions)
        self._push_dns(decisions)
        self._last_eval_mono = time.monotonic()
        return decisions

    def _after_decisions(self, decisions: Mapping[tuple[str, str], "Decision"]) -> None:
        published = {}
        before = self._published
        for key, d in decisions.items():
            target = (d.region, d.path, d.answers)
            published[key] = target
            old = before.get(key)
            if old is not None and old != target:
                self.metrics_registry.decision_changed(*key)
                log.info("decision %s/%s: %s -> %s via %s: %s", key[0], key[1],
                         f"{old[0]} via {old[1]}" if old[0] else "no answer", d.region, d.path, d.reason)
        self._published = MappingProxyType(published)

    # ---- Backend (HTTP API) and MetricsSource (Prometheus) ---------------------------------------------------

    @property
    def config(self) -> "Config":
        return self._cfg

    def group_of(self, client: str) -> str:
        return self.groups.lookup(client)

    def decision(self, service: str, group: str) -> "Decision | None":
        return self.decider.lookup(service, group)

    def decisions(self) -> Mapping[tuple[str, str], "Decision"]:
        return self.decider.decisions

    def table(self) -> TableSnapshot:
        return self._snapshot

    def regions(self) -> list[dict[str, Any]]:
        agent = self._cfg.agent.name
        drained = self.decider.drained
        out = []
        for r in self._cfg.regions:
            paths = []
            for p in r.paths:
                row = self._snapshot.get(agent, r.name, p.name)
                paths.append({"name": p.name, "answer": p.answer, "probe": public_url(p.probe),
                              "health": "none" if row is None else str(row.health)})
            out.append({"name": r.name, "lat": r.lat, "lon": r.lon, "drained": r.name in drained, "paths": paths})
        return out

    def readiness(self) -> tuple[bool, str]:
        if self._ready_at is not None:
            return True, "every target has finished a round"
        waited = time.monotonic() - self._started_mono
        if waited >= self._cfg.api.ready_grace_s:
            return True, f"start-up grace of {format_duration(self._cfg.api.ready_grace_s)} has passed"
        missing = sorted(self._targets.keys() - self._rounds_done)
        return False, f"waiting for a first round from {len(missing)} target(s): {', '.join(missing[:5])}"

    def liveness(self) -> tuple[bool, str]:
        if not self._running:
            return False, "the daemon is not running"
        limit = LIVE_AFTER_INTERVALS * self._cfg.probing.interval_s
        if self._last_eval_mono is None:
            return True, "starting"
        age = time.monotonic() - self._last_eval_mono
        if age > limit:
            return False, f"no evaluation for {age:.1f} s (limit {limit:g} s)"
        return True, "ok"

    def _region_or_error(self, region: str) -> None:
        if not any(r.name == region for r in self._cfg.regions):
            raise AdminError(f"region: unknown region {region!r} (known: {', '.join(r.name for r in self._cfg.regions)})")

    def drain(self, region: str) -> None:
        self._region_or_error(region)
        self.decider.set_drained(self.decider.drained | {region})
        log.warning("admin: region %s drained", region)
        self.evaluate()

    def undrain(self, region: str) -> None:
        self._region_or_error(region)
        self.decider.set_drained(self.decider.drained - {region})
        log.warning("admin: region %s undrained", region)
        self.evaluate()

    def pin(self, service: str, group: str, region: str, path: str | None) -> None:
        if not any(s.name == service for s in self._cfg.services):
            raise AdminError(f"service: unknown service {service!r}")
        if (service, group) not in self.decider.plans:
            raise AdminError(f"group: unknown group {group!r}")
        self._region_or_error(region)
        plan = self.decider.plans[(service, group)]
        path = path or plan.primary.get(region)
        if path is None or (region, path) not in plan.answers:
            raise AdminError(f"path: service {service} has no path {path!r} in region {region}")
        self.decider.pin(service, group, region, path)
        log.warning("admin: %s/%s pinned to %s via %s", service, group, region, path)
        self._after_decisions(self.decider.decisions)
        self._push_dns(self.decider.decisions)

    def unpin(self, service: str, group: str) -> None:
        if (service, group) not in self.decider.plans:
            raise AdminError(f"service, group: unknown pair ({service}, {group})")
        if self.decider.unpin(service, group):
            log.warning("admin: %s/%s unpinned", service, group)
        self._after_decisions(self.decider.decisions)
        self._push_dns(self.decider.decisions)

    def admin_state(self) -> dict[str, Any]:
        return {
            "drained": sorted(self.decider.drained),
            "pins": [{"service": s, "group": g, "region": p.region, "path": p.path}
                     for (s, g), p in sorted(self.decider.pins.items())],
        }

    def exporters(self) -> list[dict[str, Any]]:
        return [runner.status() for runner in self.dns_runners.values()]

    def metrics(self) -> tuple[bytes, str]:
        return self.metrics_registry.render()

    def engine_stats(self) -> dict[str, Any]:
        stats = self._scheduler.stats()
        stats["socket_drops"] = self.counters.socket_drops
        stats["late_replies"] = self.counters.late_replies
        return stats

    # ---- reload --------------------------------------------------------------------------------------------

    def reload(self) -> bool:
        """Load the config file again and swap it in whole; False (and the old config running) when it is refused."""
        reloading()
        try:
            return self._reload()
        finally:
            notify("READY=1")

    def _refuse(self, problems: list[str]) -> bool:
        for problem in problems:
            log.error("reload refused: %s", problem)
        log.error("reload refused: the previous config keeps running")
        self.metrics_registry.reload(False, self.clock())
        return False

    def _reload(self) -> bool:
        if self.config_path is None:
            return self._refuse(["no config file to reload from"])
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            return self._refuse(exc.problems or [str(exc)])
        problems = restart_only_changes(self._cfg, new)
        token = None
        if new.api.token:
            try:
                token = resolve_secret(new.api.token, "api.token")
            except SecretError as exc:
                problems.append(str(exc))
        if problems:
            return self._refuse(problems)
        old = self._cfg
        old_targets, new_targets = self._targets, probe_targets(new)
        same_vantage = old.agent.name == new.agent.name
        kept = {(new.agent.name, region, path) for key, (region, path, url) in new_targets.items()
                if same_vantage and old_targets.get(key) == (region, path, url)}
        table = LatencyTable(table_config(new))
        table.restore_state(self.latency_table.export_state(), keep=lambda k: tuple(k) in kept)
        decider = Decider(new)
        decider.adopt(self.decider)
        probing_changed = old.probing != new.probing or old_targets != new_targets
        # everything is built before anything is swapped: a failure above leaves the old config whole
        scheduler = self._new_scheduler(new, new_targets) if probing_changed else None
        self._targets = new_targets
        self._cfg, self.token, self.latency_table, self.decider = new, token, table, decider
        self.groups = GroupIndex.from_config(new)
        self._ensure_rows()
        if scheduler is not None:
            scheduler, self._scheduler = self._scheduler, scheduler
            scheduler.stop()  # _probing() runs the new one as soon as the old one returns
        self.evaluate()
        self.metrics_registry.retain(paths={(r, p) for r, p, _ in new_targets.values()}, decisions=set(decider.plans))
        self.metrics_registry.reload(True, self.clock())
        log.info("reload: config %s in force: %d targets (%d kept their history), %d services, %d groups",
                 self.config_path, len(new_targets), len(kept), len(new.services), len(self.decider.groups))
        return True

    # ---- the run -------------------------------------------------------------------------------------------

    async def _probing(self) -> None:
        while self._running:
            scheduler = self._scheduler
            await scheduler.run()
            if scheduler is self._scheduler:
                return  # stopped for shutdown, not swapped by a reload

    async def _evaluating(self) -> None:
        soon = self._evaluate_soon = asyncio.Event()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(soon.wait(), timeout=self._cfg.probing.interval_s)
            soon.clear()
            try:
                self.evaluate()
            except Exception:  # noqa: BLE001 - a bug in one evaluation must not stop the daemon deciding
                log.exception("evaluation failed; the previous decisions stand")

    async def _saving(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.store.interval_s if self._cfg.store else 5.0)
            await self.save()

    async def save(self) -> None:
        """One snapshot of the table into the store (the write runs in a thread)."""
        if self.store is None:
            return
        try:
            # the probe URL of every row's target: a restart keeps a row only while its target is the same
            meta = {"vantage": self._cfg.agent.name, "targets": {k: url for k, (_, _, url) in self._targets.items()}}
            prepared = self.store.prepare(self.latency_table, wall_time=self.clock(), meta=meta)
            await asyncio.to_thread(self.store.write, prepared)
        except Exception:  # noqa: BLE001 - a failed save is reported; the next one tries again
            log.exception("snapshot save to %s failed", self._cfg.store.path if self._cfg.store else "?")

    async def _reloads(self, hup: asyncio.Event) -> None:
        while True:
            await hup.wait()
            hup.clear()
            log.info("SIGHUP: reloading %s", self.config_path)
            try:
                self.reload()
            except Exception:  # noqa: BLE001 - a reload bug must not take the running config down
                log.exception("reload failed; the previous config keeps running")
                self.metrics_registry.reload(False, self.clock())

    async def _reporting(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            try:
                print("\n".join(self.report_lines()), flush=True)
            except Exception:  # noqa: BLE001 - a closed stdout (or a report bug) must not take the daemon down
                log.exception("the live view failed")

    def report_lines(self) -> list[str]:
        """The live view: each path's p50 and minimum beside the lab's truth, then every decision."""
        agent = self._cfg.agent.name
        lines = [f"{'region/path':<28} {'p50 ms':>9} {'min ms':>9} {'truth ms':>9} {'loss':>6}  target"]
        for region, path, url in self._targets.values():
            row = self._snapshot.get(agent, region, path)
            p50 = f"{row.p50_ms:9.3f}" if row is not None and row.p50_ms is not None else f"{'-':>9}"
            mn = f"{row.min_ms:9.3f}" if row is not None and row.min_ms is not None else f"{'-':>9}"
            loss = f"{row.loss:6.0%}" if row is not None and row.loss is not None else f"{'-':>6}"
            truth = f"{'-':>9}"
            if self.lab is not None:
                with contextlib.suppress(KeyError):
                    t = self.lab.truth(region, path)
                    truth = f"{'down':>9}" if math.isinf(t) else f"{t * 1e3:9.3f}"
            lines.append(f"{region + '/' + path:<28} {p50} {mn} {truth} {loss}  {url}")
        for (service, group), d in sorted(self.decider.decisions.items()):
            where = f"{d.region} via {d.path} ({d.answer})" if d.region else "no answer"
            lines.append(f"decision {service}/{group}: {where}: {d.reason}")
        stats = self._scheduler.stats()
        lag = stats["loop_lag_ms"]["p99"]
        lines.append(f"engine: loop lag p99 {'-' if lag is None else f'{lag:.2f}'} ms, late replies "
                     f"{self.counters.late_replies}, socket drops {self.counters.socket_drops}")
        return lines

    async def run(self, duration_s: float | None = None) -> int:
        """Run until SIGINT/SIGTERM or the duration; returns the exit code."""
        loop = asyncio.get_running_loop()
        stop, hup = asyncio.Event(), asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, hup.set)
        cfg = self._cfg
        if cfg.lab is not None:
            from latency_router.lab import Lab, LabError

            self.lab = Lab.from_config(cfg)
            try:
                await self.lab.start()
            except (LabError, OSError) as exc:
                print(f"lab: cannot start: {exc}", file=sys.stderr)
                return 1
            print(f"lab: {self.lab.mode} mode ({self.lab.why}); {len(self.lab.paths)} emulated paths; "
                  f"event clock started at {self.lab.started_wall:.3f} (unix time)", flush=True)
        runner = None
        try:
            if self.store is not None:
                self._restore()
            self.evaluate()
            from latency_router.api.app import make_app, start_api

            app = make_app(self, token=self.token, max_body_bytes=cfg.api.max_body_bytes, max_batch=cfg.api.max_batch)
            try:
                runner = await start_api(app, cfg.api.host, cfg.api.port)
            except OSError as exc:
                print(f"api: cannot listen on {cfg.api.listen}: {exc.strerror or exc}", file=sys.stderr)
                return 1
            print(f"api: listening on http://{cfg.api.listen} (admin endpoints {'on' if self.token else 'off'})", flush=True)
            p = cfg.probing
            print(f"probing {len(self._targets)} paths: {p.samples} samples per {format_duration(p.interval_s)}, "
                  f"timeout {format_duration(p.timeout_s)}", flush=True)
            self._running = True
            notify("READY=1", f"STATUS=probing {len(self._targets)} paths")
            return await self._run_tasks(stop, hup, duration_s, runner)
        finally:
            self._running = False
            if self.lab is not None:
                await self.lab.stop()
            if self._hung:
                logging.shutdown()
                os._exit(1)

    async def _run_tasks(self, stop: asyncio.Event, hup: asyncio.Event, duration_s: float | None, runner: Any) -> int:
        async with asyncio.TaskGroup() as tg:
            probing = tg.create_task(self._probing(), name="probing")
            helpers = [
                tg.create_task(self._evaluating(), name="evaluating"),
                tg.create_task(self._reloads(hup), name="reloads"),
                tg.create_task(self._reporting(), name="report"),
            ]
            if self.store is not None:
                helpers.append(tg.create_task(self._saving(), name="saving"))
            exporters = [tg.create_task(r.run(), name=f"dns:{n}") for n, r in self.dns_runners.items()]
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=duration_s)
            notify("STOPPING=1")
            log.info("stopping: probes, then a last decision, a last snapshot, the API, the lab")
            for task in helpers:
                task.cancel()
            step = "stopping the probes"
            try:
                async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
                    self._running = False
                    self._scheduler.stop()
                    await probing
                    step = "the last decision"
                    self.evaluate()
                    step = "the last snapshot save"
                    await self.save()
                    step = "stopping the DNS exporters"
                    for exporter in self.dns_runners.values():
                        exporter.stop()  # a write in flight finishes; a backoff wait ends at once
                    if exporters:
                        _, late = await asyncio.wait(exporters, timeout=DNS_STOP_S)
                        for task in late:
                            task.cancel()  # a provider that hangs must not hold the shutdown
                        await asyncio.gather(*exporters, return_exceptions=True)
                    for exporter in self.dns_runners.values():
                        await exporter.provider.aclose()
                    step = "stopping the API"
                    await runner.cleanup()
            except TimeoutError:
                log.error("shutdown: %s took longer than %g s; exiting anyway", step, SHUTDOWN_TIMEOUT_S)
                probing.cancel()
                self._hung = True  # run() stops the lab, then exits at once: a hung thread must not hold the exit
                return 1
        print("\n".join(self.report_lines()), flush=True)
        return 0

    def _restore(self) -> None:
        """Restore the rows of targets that are the same as when they were saved (vantage, region, path, probe URL)."""
        scratch = LatencyTable(table_config(self._cfg))
        result = self.store.load(scratch, keep=None)
        if result.problem:
            log.error("snapshot store: %s", result.problem)
            return
        saved = result.meta.get("targets", {}) if result.meta.get("vantage") == self._cfg.agent.name else {}
        agent = self._cfg.agent.name
        same = {(agent, region, path) for key, (region, path, url) in self._targets.items() if saved.get(key) == url}
        restored = self.latency_table.restore_state(scratch.export_state(), keep=lambda k: tuple(k) in same)
        if result.restored:
            log.info("snapshot store: restored %d rows, %.1f s old (%d of other or changed targets left out)",
                     restored, result.age_s or 0.0, result.restored - restored)
            self._ensure_rows()


def run_main(cfg: "Config", duration_s: float | None, config_path: str | None = None, log_level: str = "info") -> int:
    """Run the daemon on a loaded config until a signal or the duration; returns the exit code."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.debug("logging at %s", log_level)
    try:
        daemon = Daemon(cfg, config_path)
    except SecretError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return run_async(daemon.run(duration_s))
