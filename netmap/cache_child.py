"""The second process of a cold fleet load (netmap/cache.py): a child forked at the start
reads every guest file and part of the host files while we read the others.

It talks in this order (ParsingChild):

1. it sends the guests it parsed, and of each host its name, source and the networks it
   binds (the pickle only of the host the guest being placed runs on);
2. it waits for one request: a function to run over what it parsed (`ask`: a placement
   query checks the child's candidates there: placement.py) or none (`release`);
3. it sends the pickles of its hosts, which the cache writer (forked from us as we exit)
   or a later use of one of them reads.

Each result carries the identity the child saw before reading the file, which is what
the cache keeps: a change after it moves the identity, so a later load reads the file
again, as after a change we did not see in a load of our own. A file the child cannot
parse is parsed here, to raise the error as load_fleet does. Should the child die, its
files are parsed here: the answer never depends on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from netmap import model
from netmap.cache_index import HostSummary, Identity, LazyHosts, host_summaries, identity
from netmap.cache_pickle import pickled
from netmap.errors import InputError
from netmap.forked import ChildFailed, ForkedWork, Link, can_fork_work
from netmap.load import load_guest, load_host, load_networks
from netmap.model import Fleet, Host, Network, Source

T = TypeVar("T")

# Files to parse from which a child shares the work: measured on generated fleets, a child
# saves 0.03 s of 0.21 s at 1,250 files and costs nothing at 625 (below 500 the command
# line loads without the cache, in one process).
PARALLEL_MIN_FILES = 500
# The child's part of the parsing (it reads every guest file and some host files): it
# also pickles what it sends, and we do the rest of the command after it. More than half
# since we also import networkx after our part (10k hosts: 0.44 left us 60 ms behind it).
CHILD_SHARE = 0.53
# Below this many files to parse, the command's `prepare` (its imports: networkx, 70 ms)
# runs before the fork, once for both; above, each process runs it after its parsing.
PREPARE_BEFORE_FORK_FILES = 4000


class PickledHost(NamedTuple):
    """A host the parsing child read, as load_fleet sees it: its name and source (what
    the loader checks of every host) and the networks it binds (`bindings`, names only,
    what a placement query asks of every host); the host itself stays in the child."""

    name: str
    source: Source | None
    bindings: tuple[str, ...]
    stored: bytes | Deferred


class Deferred:
    """A host the child keeps: it sends its pickle last (for the cache writer, or when we
    use it after all); should the child have died, its file is parsed again here."""

    def __init__(self, child: ParsingChild, key: str) -> None:
        self.child, self.key = child, key
        self._parsed: Host | None = None

    def blob(self) -> bytes:
        got = self.child.later(self.key)
        return got if got is not None else pickled(self.host())

    def host(self) -> Host:
        got = self.child.later(self.key)
        if got is not None:
            return pickle.loads(got)
        if self._parsed is None:
            self._parsed = load_host(self.key, self.child.networks)
        return self._parsed


class ParsingChild:
    """Our side of the child (see the module's doc)."""

    def __init__(self, work: ForkedWork, keys: set[str], networks: dict[str, Network],
                 ours: list[str], files: tuple[list[str], list[str]],
                 prepare: Callable[[], object] | None) -> None:
        self.work, self.keys, self.networks = work, keys, networks
        self.ours = ours  # the host files we parse
        self.files = files  # fleet_file_names, as listed before the child started
        self.prepare = prepare  # to run once ours are parsed (None: it ran before the fork)
        self.results: dict[str, tuple[Identity, Any]] | None = None
        self._delivered: dict[int, str] = {}  # id of a guest it sent -> its file
        self._asked = False
        self._later: dict[str, bytes] | None = None

    def result(self, key: str) -> tuple[Identity, Any] | None:
        """The identity the child saw and what it parsed, or None when the file is not
        its part or it could not parse it (parsed here, to raise the error as load_fleet
        does)."""
        if key not in self.keys:
            return None
        if self.results is None:
            self.results = self._first_message()
        got = self.results.get(key)
        if got is None:
            return None
        if isinstance(got[1], model.Guest):
            self._delivered[id(got[1])] = key
        return got

    def _first_message(self) -> dict[str, tuple[Identity, Any]]:
        try:
            guests, hosts = self.work.receive()
        except ChildFailed:  # the child died half-way: parse it all here
            return {}
        results: dict[str, tuple[Identity, Any]] = pickle.loads(guests)
        for key, (ident, name, source, bound, blob) in hosts.items():
            results[key] = (ident, PickledHost(name, source, bound, blob or Deferred(self, key)))
        return results

    def guest_refs(self, guests: Mapping[str, model.Guest]) -> dict[str, str | model.Guest]:
        """Each guest as the child can find it (its file) when it sent it, else itself."""
        return {name: self._delivered.get(id(guest), guest) for name, guest in guests.items()}

    def ask(self, work: Callable[..., Any], *args: Any) -> bool:
        """Have the child run work(hosts, guests, *args) over the hosts and guests it
        parsed (by file); once per child. False when it cannot (asked, or gone)."""
        if self._asked or self.results is None:
            return False
        self._asked = True
        return self.work.send((work, args))

    def answer(self) -> Any:
        """What the asked work returned; None when the child failed."""
        try:
            return self.work.receive()
        except ChildFailed:
            return None

    def release(self) -> None:
        """Nothing to ask: the child goes on to send its hosts' pickles."""
        if not self._asked:
            self._asked = True
            self.work.send(None)

    def later(self, key: str) -> bytes | None:
        """The pickle of a host the child kept; None if it died."""
        if self._later is None:
            self.release()
            self._later = self.work.result() or {}
        return self._later.get(key)

    def fds(self) -> tuple[int, ...]:
        """The pipe a cache writer forked from us reads the child's last message from."""
        return (self.work.pipe,) if self.work.pipe >= 0 else ()

    def close(self) -> None:
        if self.results is None:  # not needed after all (an error ended the load early)
            self.work.cancel()

    def __del__(self) -> None:  # a child still waiting for a request would wait forever
        with contextlib.suppress(Exception):
            self.release()


def start(base: Path, files: tuple[list[str], list[str]],
          entries: dict[str, tuple[Identity, Any]], placing: str | None,
          prepare: Callable[[], object] | None = None) -> ParsingChild | None:
    """A child parsing part of `files` (fleet_file_names(base)) not in `entries`, or None
    when too few are left to parse or it cannot fork."""
    host_files, guest_files = files
    if len(host_files) + len(guest_files) - len(entries) < PARALLEL_MIN_FILES \
            or not can_fork_work():
        return None
    hosts = [key for key in host_files if key not in entries]
    guests = [key for key in guest_files if key not in entries]
    if len(hosts) + len(guests) < PARALLEL_MIN_FILES:
        return None
    if prepare is not None and len(hosts) + len(guests) < PREPARE_BEFORE_FORK_FILES:
        prepare()  # so the child has it too: too few files to hide its own import behind
        prepare = None
    # A generated host file (40 lines) costs about three guest files. Every so many host
    # files, not the last ones: a fleet's files sort by site and rack, and a placement's
    # candidates, which the child checks when it holds them, are often one site's.
    wanted = (3 * len(hosts) + len(guests)) * CHILD_SHARE - len(guests)
    fraction = max(0.0, min(1.0, wanted / 3 / len(hosts))) if hosts else 0.0
    share = [key for index, key in enumerate(hosts)
             if int((index + 1) * fraction) > int(index * fraction)]
    # Both read networks.toml, after the fork: half a fleet's parse can start that much
    # sooner (it imports msgspec). load_fleet_cached sees any change to it in between.
    work = ForkedWork.start(lambda link: _in_child(
        link, base / "networks.toml", share, guests, placing, prepare), talk=True)
    if work is None:
        return None
    try:
        networks = load_networks(base / "networks.toml")
    except InputError:
        work.cancel()
        return None  # load_fleet reports it
    theirs = set(share)
    ours = [key for key in host_files if key not in theirs]
    return ParsingChild(work, {*theirs, *guests}, networks, ours, (host_files, guest_files),
                        prepare)


def _in_child(link: Link, networks_file: Path, host_keys: list[str], guest_keys: list[str],
              placing: str | None, prepare: Callable[[], object] | None) -> dict[str, bytes]:
    """The child's side of ParsingChild."""
    networks = load_networks(networks_file)
    guests = dict(_parsed(guest_keys, load_guest, networks))
    hosts = dict(_parsed(host_keys, load_host, networks))
    source = next((guest.host for _, guest in guests.values() if guest.name == placing), None)
    link.send((pickled(guests), {
        key: (ident, host.name, host.source, tuple(host.bindings),
              pickled(host) if host.name == source else None)
        for key, (ident, host) in hosts.items()}))
    if placing is not None and prepare is not None:  # while we assemble the fleet
        prepare()
    request = link.receive()
    if request is not None:
        work, args = request
        link.send(work({key: host for key, (_, host) in hosts.items()},
                       {key: guest for key, (_, guest) in guests.items()}, *args))
    return {key: pickled(host) for key, (_, host) in hosts.items()}


def parse_ahead(load: Callable[[str, dict[str, Network]], T], keys: list[str],
           networks: dict[str, Network], loaded: list[str],
           otherwise: Callable[[str, dict[str, Network]], T],
           ) -> Callable[[str, dict[str, Network]], T]:
    """`load` run over `keys` now; load_fleet later gets those answers (and errors) in
    its order, and `otherwise`'s for the other files."""
    done: dict[str, tuple[bool, Any]] = {}
    for key in keys:
        try:
            done[key] = (True, load(key, networks))
        except InputError as err:
            done[key] = (False, err)

    def replay(path: str, networks: dict[str, Network]) -> T:
        key = os.fspath(path)
        got = done.get(key)
        if got is None:
            return otherwise(path, networks)
        loaded.append(key)
        ok, value = got
        if not ok:
            raise value
        return value

    return replay


def _parsed(keys: list[str], parse: Callable[[str, dict[str, Network]], T],
            networks: dict[str, Network]) -> Iterator[tuple[str, tuple[Identity, T]]]:
    for key in keys:
        try:
            ident = identity(os.stat(key))  # before reading, as in _loader
            yield key, (ident, parse(key, networks))
        except Exception:
            continue


def with_lazy_hosts(fleet: Fleet, lazy: bool,
                    summaries: tuple[HostSummary, ...] | None = None) -> Fleet:
    """The fleet with the child's hosts unpickled when used (all at once unless lazy).
    `summaries`: the cache index's, when it was made (cache_index.fleet_index)."""
    values: dict[str, Host | bytes | Deferred] = {
        name: host.stored if isinstance(host, PickledHost) else host
        for name, host in fleet.hosts.items()}
    hosts = LazyHosts(values, summaries or host_summaries(fleet.hosts.values()))
    return dataclasses.replace(fleet, hosts=hosts if lazy else dict(hosts.items()))
