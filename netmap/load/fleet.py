"""One load of a mappings directory: each file from the store when its key is unchanged,
else parsed (by two processes when there are thousands to parse and a CPU is idle), the
fleet assembled by parse.assemble, and what was parsed stored before returning
(netmap/load/store.py)."""

from __future__ import annotations

import hashlib
import os
import pickle
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from netmap.errors import InputError
from netmap.load import parse, store
from netmap.load.guests import StoredGuests
from netmap.load.hosts import StoredHosts
from netmap.load.store import Identity, Parsed, Row, Store, identity, is_guest, settled, unpickled
from netmap.model.fleet import Fleet, Guest, Host, Network, mapping_file
from netmap.support.cpus import idle_cpu
from netmap.support.gcpause import gc_paused

if TYPE_CHECKING:
    from concurrent.futures import Future, ProcessPoolExecutor

T = TypeVar("T")

# Below this many host and guest files, parsing them costs less than opening the store.
STORE_MIN_FILES = 500
# Files to parse from which a second process shares the work (forking and pickling
# its share back cost about as much as parsing 300 files).
PARALLEL_MIN_FILES = 1000
# The second process's part of the files to parse: it also pickles what it parsed (which
# is what the store keeps), and we unpickle it.
SECOND_SHARE = 0.5


def load(base: Path) -> Fleet:
    """See netmap.load.load_fleet."""
    with gc_paused():  # hundreds of thousands of objects, all kept: nothing to collect
        return _load(base)


def _load(base: Path) -> Fleet:
    started_ns = time.time_ns()
    networks_path = base / "networks.toml"
    before = _identity(os.fspath(networks_path))
    try:
        host_files, guest_files = parse.fleet_file_names(base)
    except InputError:
        parse.load_networks(networks_path)  # a broken networks.toml is said first
        raise
    db = Store.open(base) if len(host_files) + len(guest_files) >= STORE_MIN_FILES else None
    if db is None:
        return parse.assemble(base, parse.load_networks(networks_path), host_files,
                              guest_files, host_loader=parse.load_host,
                              guest_loader=parse.load_guest)
    fleet = _load_with(db, base, (host_files, guest_files), before, started_ns)
    if not isinstance(fleet.hosts, StoredHosts):
        db.close()  # else the hosts read from it as they are asked for
    return fleet


def _load_with(db: Store, base: Path, files: tuple[list[str], list[str]],
               networks_before: Identity | None, started_ns: int) -> Fleet:
    host_files, guest_files = files
    root = os.path.realpath(base)
    stored = db.rows(root)  # None: nothing of this code for this directory
    # networks.toml as stored under its identity, else parsed (and stored under it)
    networks_key = None if networks_before is None or not settled(networks_before, started_ns) \
        else str(networks_before)
    networks = None if stored is None or networks_key is None else db.networks(networks_key)
    new_networks = None
    if networks is None:
        networks = parse.load_networks(base / "networks.toml")
        if networks_key is not None:
            new_networks = (networks_key, _pickled(networks))
    # Every identity before any file is read: a later change moves the one we keep.
    idents = {key: _identity(key) for key in (*host_files, *guest_files)}
    keys = _Keys(idents, networks_before, host_files, started_ns)
    hits = keys.hits(stored or {})
    lazy = _stored_hosts(db, host_files, hits, networks)
    lazy_guests = None if lazy is None else _stored_guests(db, guest_files, hits, networks,
                                                           lazy)
    if lazy is not None and lazy_guests is not None:
        # every file as stored, none broken (a broken file is never stored): nothing to parse
        fleet = Fleet(networks, lazy, lazy_guests, (), str(base))
        gone = [path for path in stored or () if path not in idents]
        if _identity(os.fspath(base / "networks.toml")) != networks_before:
            return parse.assemble(base, parse.load_networks(base / "networks.toml"),
                                  *parse.fleet_file_names(base))
        if gone or new_networks:
            db.replace(root, [], gone, every=False, networks=new_networks)
        return fleet
    # the stored guests' objects, read at once (every load without lazy guests reads all)
    blobs = db.objects({path: row.key for path, row in hits.items() if is_guest(row)})
    fresh: dict[str, tuple[Any, bytes | None]] = {}  # path -> (object, its pickle if made)
    with _SecondProcess([key for key in host_files if key not in hits],
                        [key for key in guest_files
                         if key not in hits and not key.endswith(".xml")],
                        networks, idents) as second:

        def stored_or(parser: Callable[..., T]) -> Callable[..., T]:
            def load_one(path: str, *args: Any) -> T:
                row = hits.get(path)
                if row is not None:
                    blob = blobs.get(path)
                    value: T | None = db.object(path, row.key) if blob is None \
                        else unpickled(blob)
                    if value is not None:
                        return value
                theirs = second.result(path)
                if theirs is not None:
                    value = pickle.loads(theirs)
                    fresh[path] = (value, theirs)
                    return value
                value = parser(path, *args)
                # pickled now, while the second process pickles its share: after it
                # returned, this would be ours alone to wait for
                fresh[path] = (value, None if keys.of(path) is None else _pickled(value))
                return value
            return load_one

        fleet = parse.assemble(base, networks, host_files, guest_files,
                               host_loader=stored_or(parse.load_host),
                               guest_loader=stored_or(parse.load_guest), stored_hosts=lazy)
    if _identity(os.fspath(base / "networks.toml")) != networks_before:
        # changed while we read: the files were validated against another version of it
        return parse.assemble(base, parse.load_networks(base / "networks.toml"),
                              *parse.fleet_file_names(base))
    parsed = [_parsed(path, key, value, blob) for path, (value, blob) in fresh.items()
              if (key := keys.of(path)) is not None]
    gone = [path for path in stored or () if path not in idents]
    if parsed or gone or stored is None or new_networks:
        db.replace(root, parsed, gone, every=stored is None, networks=new_networks)
    return fleet


def _stored_hosts(db: Store, host_files: list[str], hits: Mapping[str, Row],
                  networks: dict[str, Network]) -> StoredHosts | None:
    """The hosts to read from the store as they are asked for, when every host file is
    stored under its key now, and no two name the same host (that is a problem to report,
    which assemble finds by reading them)."""
    rows = {path: row for path in host_files if (row := hits.get(path)) is not None}
    if len(rows) < len(host_files) or len({row.name for row in rows.values()}) < len(rows):
        return None
    return StoredHosts(db, rows, networks)


def _stored_guests(db: Store, guest_files: list[str], hits: Mapping[str, Row],
                   networks: dict[str, Network], hosts: StoredHosts) -> StoredGuests | None:
    """The guests to read from the store as they are asked for, when every guest file is
    stored under its key now, no two name the same guest and each names a host of the
    fleet or none (else assemble reads them, to report the problem as it does)."""
    rows = {path: row for path in guest_files if (row := hits.get(path)) is not None}
    if (len(rows) < len(guest_files) or len({row.name for row in rows.values()}) < len(rows)
            or any(row.host is not None and row.host not in hosts for row in rows.values())):
        return None
    return StoredGuests(db, rows, networks, hosts)


def _parsed(path: str, key: tuple[Identity, str], value: Host | Guest,
            blob: bytes | None) -> Parsed:
    ident, context = key
    if isinstance(value, Host):
        file = mapping_file(value)
        row = Row(ident, context, value.name, path if file == path else file,  # pickled once
                  networks="".join(f"\n{network}" for network in value.bindings) + "\n")
    else:
        row = Row(ident, context, value.name, "", value.host,
                  "".join(f"{nic.mac}\n" for nic in value.nics), "\n")
    return Parsed(path, row, blob if blob is not None else _pickled(value))


class _Keys:
    """The key each file's stored row must have (see store.py): its identity now, and
    the rest, the same for every file of a kind; none for a file whose key cannot be
    trusted (too recent, or gone): it is parsed, and not stored."""

    def __init__(self, idents: Mapping[str, Identity | None], networks: Identity | None,
                 host_files: list[str], started_ns: int) -> None:
        self._idents = idents
        self._limit = started_ns - store.RACY_WINDOW_NS  # settled(), inline: 12k files
        self._toml: str | None = None
        self._xml: str | None = None
        if networks is None or not settled(networks, started_ns):
            return
        self._toml = f" {networks}"
        if any(key.endswith(".xml") for key in idents):
            digest = hashlib.blake2b(digest_size=16)
            for key in host_files:
                ident = idents[key]
                if ident is None or not settled(ident, started_ns):
                    break
                digest.update(f"{key}\0{ident}\0".encode())
            else:
                self._xml = f"{self._toml} {digest.hexdigest()}"

    def of(self, path: str) -> tuple[Identity, str] | None:
        ident = self._idents.get(path)
        context = self._xml if path.endswith(".xml") else self._toml
        if ident is None or context is None or ident[1] >= self._limit \
                or ident[2] >= self._limit:
            return None
        return ident, context

    def hits(self, stored: Mapping[str, Row]) -> dict[str, Row]:
        """The stored rows whose key is the file's key now."""
        toml, xml, limit, idents = self._toml, self._xml, self._limit, self._idents
        if toml is None:
            return {}
        return {path: row for path, row in stored.items()
                if (ident := idents.get(path)) is not None and ident == row.ident
                and ident[1] < limit and ident[2] < limit
                and row.context == (xml if path.endswith(".xml") else toml)}


def _identity(path: str) -> Identity | None:
    try:
        return identity(os.stat(path))
    except OSError:
        return None  # the parser reports it


def _pickled(value: object) -> bytes:
    return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)


class _SecondProcess:
    """A worker process parsing the last SECOND_SHARE of the files to parse while we parse
    the others, when there are many and a second CPU; it is gone when the `with` block
    ends. A file it could not parse (or all of them, should it fail) is parsed here, so
    errors are raised as the parser raises them and the answer never depends on it."""

    def __init__(self, hosts: list[str], guests: list[str], networks: dict[str, Network],
                 idents: Mapping[str, Identity | None]) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._future: Future[list[bytes | None]] | None = None
        self._results: dict[str, bytes | None] = {}
        self._theirs: list[str] = []
        self._waiting: set[str] = set()
        if (len(hosts) + len(guests) < PARALLEL_MIN_FILES or not idle_cpu()
                or threading.active_count() > 1):  # a forked child may inherit a held lock
            return
        # the tail of what we read in order (hosts, then guests): we reach it last. Its
        # share of the bytes, not of the files: a host file may be ten times a guest file.
        every = [*hosts, *guests]
        weight = [(idents.get(key) or (1,))[0] for key in every]
        left, cut = sum(weight) * SECOND_SHARE, len(every)
        while cut > 0 and left > 0:
            cut -= 1
            left -= weight[cut]
        self._theirs = every[cut:]
        guest_share = self._theirs[max(0, len(self._theirs) - len(guests)):]
        host_share = self._theirs[:len(self._theirs) - len(guest_share)]
        self._waiting = set(self._theirs)
        import multiprocessing  # here: a warm load starts no process
        from concurrent.futures import ProcessPoolExecutor

        try:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
            self._future = self._pool.submit(_parse_share, host_share, guest_share, networks)
        except (OSError, RuntimeError):
            self._future = None

    def result(self, path: str) -> bytes | None:
        """The pickle of what the worker parsed from `path`; None: parse it here."""
        if self._future is not None and path in self._waiting:
            try:
                got = self._future.result()
            except Exception:  # the worker died or failed: parse its share here
                got = [None] * len(self._theirs)
            self._results = dict(zip(self._theirs, got, strict=True))
            self._future = None
        return self._results.get(path)

    def __enter__(self) -> _SecondProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _parse_share(hosts: list[str], guests: list[str],
                 networks: dict[str, Network]) -> list[bytes | None]:
    """In the worker: each file parsed and pickled; None for one that does not parse."""
    out: list[bytes | None] = []
    for paths, parser in ((hosts, parse.load_host), (guests, parse.load_guest)):
        for path in paths:
            try:
                out.append(_pickled(parser(path, networks)))
            except InputError:
                out.append(None)
    return out
