"""How the fleet cache (netmap/cache.py) and the parsing child (netmap/cache_child.py)
pickle what they keep and send."""

from __future__ import annotations

import pickle
from typing import Any


def pickled(value: Any) -> bytes:
    """`value` pickled alone. Model objects pickle as calls of their constructors
    (model.frozen), the TOML loader's lazy sources too (tomlcheck.LazySource)."""
    return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
