"""Build the lab's path and event specs from a loaded latency_router Config."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from latency_router.lab.spec import LabEventSpec, LabPathSpec

# the probe URL's own port wins for its scheme; other listeners use the [lab] ports
_PORT_FIELD = {"udp": "udp_port", "tcp": "tcp_port", "http": "http_port"}


def path_specs(cfg: Any) -> list[LabPathSpec]:
    """One LabPathSpec per configured path that has a `lab` table, on its probe URL's host."""
    lab = cfg.lab
    out = []
    for region in cfg.regions:
        for path in region.paths:
            if path.lab is None:
                continue
            url = urlsplit(str(path.probe))
            ports = {"udp_port": lab.udp_port, "tcp_port": lab.tcp_port, "http_port": lab.http_port}
            field = _PORT_FIELD.get(url.scheme.lower())
            if field is not None and url.port is not None:
                ports[field] = url.port
            out.append(LabPathSpec(
                region=region.name, path=path.name, address=url.hostname or "",
                delay_s=path.lab.delay_s, jitter_s=path.lab.jitter_s, loss=path.lab.loss, **ports,
            ))
    return out


def event_specs(cfg: Any) -> list[LabEventSpec]:
    """The [[lab.events]] as LabEventSpecs."""
    return [
        LabEventSpec(region=e.region, path=e.path, kind=e.kind, start_s=e.start_s,
                     end_s=getattr(e, "end_s", None), delay_s=getattr(e, "delay_s", None))
        for e in cfg.lab.events
    ]


def lab_arguments(cfg: Any) -> dict[str, Any]:
    """Keyword arguments for Lab(...) from a Config with a [lab] table (ValueError when it has none)."""
    if cfg.lab is None:
        raise ValueError("the config has no [lab] section")
    paths = path_specs(cfg)
    if not paths:
        raise ValueError("no path has a lab table (e.g. lab = {delay = \"20ms\"})")
    return {"paths": paths, "events": event_specs(cfg), "mode": cfg.lab.mode, "queue_num": cfg.lab.queue_num}
