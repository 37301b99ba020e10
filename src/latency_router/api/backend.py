"""What the HTTP API reads and asks of the daemon: one small interface, so the handlers know nothing of the wiring.

The daemon implements it (`latency_router.daemon.Daemon`); tests may implement it over a real table and Decider.
Every method is synchronous and cheap: it reads the latest published snapshot or decisions, never waits on I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Protocol

if TYPE_CHECKING:
    from latency_router.config.models import Config
    from latency_router.decider.decision import Decision
    from latency_router.decider.table import TableSnapshot


class AdminError(ValueError):
    """An admin request that names something unknown (a region, service, group or path); the message says which."""


class Backend(Protocol):
    """The daemon as the API sees it."""

    @property
    def config(self) -> "Config":
        """The config in force (it changes on reload)."""

    def group_of(self, client: str) -> str:
        """The client's group: longest-prefix match over the groups' CIDRs, else the default group.

        `client` is an IPv4 or IPv6 address in text; ValueError for anything else.
        """

    def decision(self, service: str, group: str) -> "Decision | None":
        """The latest decision for (service, group), pins applied; None when the pair is unknown."""

    def decisions(self) -> "Mapping[tuple[str, str], Decision]":
        """Every latest decision, by (service, group), pins applied."""

    def table(self) -> "TableSnapshot":
        """The latest table snapshot."""

    def regions(self) -> list[dict[str, Any]]:
        """Every region: name, lat, lon, drained, and its paths (name, answer, probe, health of the local vantage's row)."""

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): ready once every target has finished a round, or the start-up grace has passed."""

    def liveness(self) -> tuple[bool, str]:
        """(alive, why): the daemon's loops are running."""

    def drain(self, region: str) -> None:
        """Take a region out of every decision until undrain (AdminError for an unknown region)."""

    def undrain(self, region: str) -> None:
        """Give a drained region back (AdminError for an unknown region)."""

    def pin(self, service: str, group: str, region: str, path: str | None) -> None:
        """Pin (service, group) to a region (and path; None: the region's primary path) until unpinned."""

    def unpin(self, service: str, group: str) -> None:
        """Remove a pin (AdminError for an unknown service or group)."""

    def admin_state(self) -> dict[str, Any]:
        """{"drained": [region, ...], "pins": [{service, group, region, path}, ...]}."""

    def exporters(self) -> list[dict[str, Any]]:
        """Every DNS exporter's status (provider, state, last success and error, counts); [] without [dns]."""

    def metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition (body, content type)."""
