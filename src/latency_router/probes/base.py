"""What every probe kind shares: the Sample it returns, the reasons a probe is lost, the Prober interface."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable


class LossReason(enum.StrEnum):
    """Why a probe brought back no RTT; a lost probe is never an RTT of 0."""

    TIMEOUT = "timeout"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    RESET = "reset"
    BAD_STATUS = "bad_status"
    BODY_MISMATCH = "body_mismatch"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Sample:
    """One probe result: an RTT in milliseconds, or a loss with its reason."""

    target: str
    kind: str
    sent_at: float  # wall-clock seconds since the epoch, when the probe left
    rtt_ms: float | None = None
    loss: LossReason | None = None
    detail: str = ""  # words for a loss (the error text) or what the RTT means
    phases_ms: dict[str, float] | None = None  # tcp/http: connect, tls, ttfb, ...
    seq: int | None = None

    def __post_init__(self) -> None:
        if (self.rtt_ms is None) == (self.loss is None):
            raise ValueError("a Sample is either an RTT or a loss, exactly one of them")

    @property
    def ok(self) -> bool:
        return self.loss is None

    @classmethod
    def lost(cls, target: str, kind: str, sent_at: float, reason: LossReason, detail: str = "", **kw) -> "Sample":
        return cls(target=target, kind=kind, sent_at=sent_at, loss=reason, detail=detail, **kw)


@runtime_checkable
class Prober(Protocol):
    """One target of one kind; built once from its URL (parsed at load), probed many times.

    A kind whose samples carry phases (tcp, http) also sets `phased: ClassVar[bool] = True`; the summaries read it.
    """

    kind: ClassVar[str]
    url: str

    async def probe(self, timeout_s: float) -> Sample:
        """Send one probe and return its Sample; never raises for a network failure."""
        ...

    async def aclose(self) -> None:
        """Release sockets and sessions."""
        ...


def wall_now() -> float:
    return time.time()


@dataclass(slots=True)
class EngineCounters:
    """The engine's own health, shared by probers and the scheduler."""

    late_replies: int = 0
    duplicate_replies: int = 0
    stray_replies: int = 0
    socket_drops: int = 0  # SO_RXQ_OVFL / kernel receive-buffer drops seen by our sockets
    extra: dict[str, int] = field(default_factory=dict)
