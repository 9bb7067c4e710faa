"""Mappings directory -> model, in one call: `load_fleet(root)`.

The parsers are netmap/load/parse.py; a large directory's files are kept parsed in a
store private to the load (netmap/load/store.py), used only where it cannot be stale.
The other names here are the parsers' lookups that commands share.
"""

from __future__ import annotations

import os

from netmap.load.parse import mappings_dir, require_guest, require_host
from netmap.model.fleet import Fleet

__all__ = ["load_fleet", "mappings_dir", "require_guest", "require_host"]


def load_fleet(root: str | os.PathLike[str] | None = None) -> Fleet:
    """The mappings directory `root` (else $NETMAP_MAPPINGS, /etc/netmap, ./mappings) as
    a Fleet. A broken networks.toml raises InputError (everything names it); a broken host
    or guest file lands in `Fleet.problems` and the rest loads."""
    from netmap.load.fleet import load  # sqlite3 and the worker pool only for a load

    return load(mappings_dir(root))
