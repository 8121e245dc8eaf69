"""Python's cyclic garbage collector paused while a trace, a plan or a surgery runs.

Why: tracing and planning allocate many small container objects (fx nodes and their metadata,
networkx dicts, index arrays) and keep them alive to the end. Each allocation burst triggers a
collection, and the older generations' collections walk every live object, so their cost grows with
the model: on a residual net of 200 concatenating blocks (``benchmarks/prune_speed.py``) plan +
apply took 2.03 s with the collector on and 1.38 s with it paused (1 thread), and doubling the
depth from 100 to 200 blocks cost 2.24x instead of 2.04x. Nothing these steps allocate needs the
collector (reference counting frees it), so it is paused for their duration and resumed after,
only if it was running: a caller that disabled it keeps it disabled. Whatever cyclic garbage the
step leaves (fx graphs are cyclic) is collected at the next ordinary collection.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator

__all__ = ["gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic collector off inside, back to its previous state on exit (exceptions included)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
