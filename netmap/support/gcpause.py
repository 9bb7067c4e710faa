"""Pausing Python's cyclic garbage collector around work that only builds objects.

Loading a large fleet, building its graph and answering a query over it create hundreds of
thousands of objects that all survive; the collector would re-walk the growing heap every
few hundred allocations for nothing.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused(*, freeze: bool = False) -> Iterator[None]:
    """Collector off inside the block. One walk over what was built remains, at the first
    allocation after it; a caller keeping the objects until exit
    (the command line) passes freeze=True to move them to the permanent generation
    (gc.freeze, process-wide, hence off for libraries). Only the outermost pause resumes."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if was_enabled:
            gc.enable()
