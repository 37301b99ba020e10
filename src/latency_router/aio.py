"""The one way this program starts an event loop: uvloop where it is installed, else asyncio's own."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run coro to completion on a fresh event loop (uvloop when available) and return its result."""
    try:
        import uvloop
    except ImportError:  # the standard loop works too, only with coarser timers
        return asyncio.run(coro)
    return uvloop.run(coro)


__all__ = ["run_async"]
