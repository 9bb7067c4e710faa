"""How the fleet cache (netmap/cache.py) pickles model objects, each entry alone: as calls
of their constructors, and the lazy sources of the TOML loader as their instance dicts."""

from __future__ import annotations

import copyreg
import dataclasses
import functools
import io
import pickle
from collections.abc import Callable
from typing import Any

from netmap import model
from netmap.tomlcheck import LazySource


def pickled(value: Any) -> bytes:
    """Pickle model objects as constructor calls, not instance dicts: as fast to load, but
    they keep the compact attribute layout, and hosts-for on 10k warm hosts ran 0.44 s ->
    0.29 s on them."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _dispatch_table()
    pickler.dump(value)
    return buffer.getvalue()


@functools.lru_cache(maxsize=1)
def _dispatch_table() -> dict[type, Callable[[Any], tuple[Any, ...]]]:
    table: dict[type, Callable[[Any], tuple[Any, ...]]] = dict(copyreg.dispatch_table)
    for value in vars(model).values():
        if isinstance(value, type) and dataclasses.is_dataclass(value):
            fields = dataclasses.fields(value)
            # only where the constructor takes every field and does nothing else with it
            if all(field.init for field in fields) and not hasattr(value, "__post_init__"):
                table[value] = _constructor_reducer(tuple(field.name for field in fields))
    # rebuilt by pickle itself (object.__new__, then its __dict__), not by a Python call:
    # ten per host, a fifth of unpickling one
    table[LazySource] = lambda source: (copyreg.__newobj__, (LazySource,), {
        "file": source.file, "_index": source._index, "_path": source._path,
        "_line": source._line})
    return table


def _constructor_reducer(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    return lambda obj: (type(obj), tuple(getattr(obj, name) for name in names))
