"""How the fleet cache (netmap/cache.py) pickles model objects, each entry alone: as calls
of their constructors (the lazy sources of the TOML loader: LazySource.__reduce__)."""

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
    """Pickle model objects as constructor calls (model.frozen's quick __init__), not as
    their state: a frozen dataclass with slots restores its state through a Python
    __setstate__ that sets each field with object.__setattr__."""
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
    table[LazySource] = LazySource.__reduce__
    return table


def _constructor_reducer(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    return lambda obj: (type(obj), tuple(getattr(obj, name) for name in names))
