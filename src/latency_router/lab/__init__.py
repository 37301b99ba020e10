"""Emulated regions with real, injected network delay, loss and scheduled events (NFQUEUE, or user space)."""

from latency_router.lab.lab import Lab, LabError
from latency_router.lab.spec import MODES, LabEventSpec, LabPathSpec

__all__ = ["MODES", "Lab", "LabError", "LabEventSpec", "LabPathSpec"]
