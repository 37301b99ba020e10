"""A pause of Python's cyclic garbage collector around bulk work that allocates many objects and creates no cycles."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector inside the block (reference counting still frees everything), then restore it.

    A table snapshot or a full recompute allocates hundreds of thousands of tuples; each allocation burst would
    otherwise trigger collections that walk the whole (large, long-lived) heap, which costs more than the work itself.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
