"""The whole-fleet part of the fleet cache (netmap/cache.py): what a load that found every
file unchanged needs to answer without load_fleet, and the lazily unpickled hosts.

Kept apart from cache.py, which reads, validates and writes the cache file; this module
only builds and reads the index stored in it.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from netmap import model
from netmap.model import Fleet

Identity = tuple[int, int, int, int, int]


def identity(st: os.stat_result) -> Identity:
    """What must move when a file changes (see netmap/cache.py)."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def fleet_index(fleet: Fleet, loaded: list[str],
                 fresh: dict[str, tuple[Identity, Any]]) -> dict[str, Any] | None:
    """What answers the next load without assembling it again, when that load finds every
    file as this one did: kept only for a fleet without problems whose every file is
    cached, so that each host and guest is the object of exactly one file, in order."""
    if fleet.problems or len(loaded) != len(fleet.hosts) + len(fleet.guests):
        return None
    if not all(key in fresh for key in loaded):
        return None  # a file too recent to cache: the next load reads it again
    host_keys = loaded[:len(fleet.hosts)]
    return {
        "networks": fleet.networks,
        "hosts": tuple(host_keys), "guests": tuple(loaded[len(fleet.hosts):]),
        "summaries": host_summaries(fleet.hosts.values()),
        # every guest is needed (MACs, load), and one pickle loads faster than 2.5k; the
        # writer pickles it (_dump), not the command that is waiting for its answer
        "guests_blob": fleet.guests,
    }


HostSummary = tuple[str, tuple[str, ...], str]


def host_summaries(hosts: Iterable[Any]) -> tuple[HostSummary, ...]:
    """Per host, in order: its name, which networks it binds and its mapping's file,
    what a placement query needs of the hosts it does not check. (A host, or anything
    with its name, bindings and source.)"""
    shared: dict[tuple[str, ...], tuple[str, ...]] = {}  # hosts alike bind alike: one copy
    out = []
    for host in hosts:
        bound = tuple(host.bindings)
        out.append((host.name, shared.setdefault(bound, bound), model.mapping_file(host)))
    return tuple(out)


def unchanged_fleet(base: Path, files: tuple[list[str], list[str]],
                    index: dict[str, Any] | None,
                    entries: dict[str, tuple[Identity, Any]], lazy: bool) -> Fleet | None:
    """The fleet the stored load assembled, when the directory lists the same files
    (`files`: its fleet_file_names) and each has the identity it was read at (an edit
    moves it: see the module doc); else None. load_fleet would assemble the same fleet
    again from the same files."""
    if index is None:
        return None
    host_keys, guest_keys = index["hosts"], index["guests"]
    if files != (list(host_keys), list(guest_keys)):
        return None  # a file added, removed or renamed (or the directory named otherwise)
    stat = os.stat
    for key in (*host_keys, *guest_keys):
        cached = entries.get(key)
        try:
            if cached is None or identity(stat(key)) != cached[0]:
                return None
        except OSError:
            return None
    try:
        guests = pickle.loads(index["guests_blob"])
        blobs = {summary[0]: entries[key][1]
                 for key, summary in zip(host_keys, index["summaries"], strict=True)}
        hosts = LazyHosts(blobs, index["summaries"])
        return Fleet(index["networks"], hosts if lazy else dict(hosts.items()), guests, (),
                     str(base))
    except Exception:  # a checksummed file from other code may fail in any way: a miss
        return None


class HostsHolder(Protocol):
    """Another process that holds hosts of a LazyHosts and can run a query over them
    (cache_child.ParsingChild, which imports this module)."""

    def guest_refs(self, guests: Mapping[str, model.Guest]) -> dict[str, str | model.Guest]:
        ...

    def ask(self, work: Callable[..., Any], *args: Any) -> bool:
        ...

    def answer(self) -> Any:
        ...


class LazyHosts(Mapping[str, model.Host]):
    """`Fleet.hosts` of an unchanged cached fleet: a host is unpickled on first access.
    `summaries` tells, without unpickling, what each host binds and its mapping's file.

    A value may also be a host already (one this process parsed), or an object whose
    host() gives it (cache_child.py: one a parsing child sends later)."""

    def __init__(self, blobs: dict[str, Any],
                 summaries: tuple[tuple[str, tuple[str, ...], str], ...]) -> None:
        self._blobs = blobs
        self._hosts: dict[str, model.Host] = {}
        sets: dict[tuple[str, ...], frozenset[str]] = {}
        self.summaries = {name: (sets.get(bound) or sets.setdefault(bound, frozenset(bound)),
                                 mapping) for name, bound, mapping in summaries}

    def __getitem__(self, name: str) -> model.Host:
        host = self._hosts.get(name)
        if host is None:
            stored = self._blobs[name]
            if isinstance(stored, bytes):
                host = pickle.loads(stored)
            elif isinstance(stored, model.Host):
                host = stored
            else:
                host = stored.host()
            self._hosts[name] = host
        return host

    def elsewhere(self) -> tuple[HostsHolder | None, dict[str, str]]:
        """Hosts another process holds (cache_child.py: the parsing child), by name -> file,
        with that process's handle (it can run a query over them: cache_child.ParsingChild.ask);
        (None, {}) when every host is here."""
        holder: HostsHolder | None = None
        there: dict[str, str] = {}
        for name, stored in self._blobs.items():
            child = getattr(stored, "child", None)
            if child is not None and name not in self._hosts:
                holder, there[name] = child, stored.key
        return holder, there

    def __iter__(self) -> Iterator[str]:
        return iter(self._blobs)

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, name: object) -> bool:
        return name in self._blobs

    def __repr__(self) -> str:
        return f"LazyHosts({len(self)} hosts, {len(self._hosts)} loaded)"
