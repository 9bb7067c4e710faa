"""A cache of the loaded fleet, for mappings directories of thousands of files.

`load_fleet_cached(root)` returns what `load_fleet(root)` returns, raises what it raises,
and never serves data older than the files. Per host/guest file it keeps the parsed object
and the file's identity; a file whose identity moved is parsed again, alone. `load_fleet`
itself assembles the fleet (through loader hooks), so duplicates, guests on unknown hosts
and unreadable files are judged as without a cache.

Identity, not content hashes (which would read every file on every run; stat costs a
tenth): (size, mtime_ns, ctime_ns, inode, device). User space cannot set ctime (`touch -d`,
`os.utime`, `cp -p`, tar and rsync restore mtime; the kernel sets ctime to now) and every
write, rename or chmod moves it, so an edit keeping size and mtime still shows; a rename
changes the path, a replaced file the inode.

The trap is timestamp granularity: two writes within one tick of the filesystem clock (a
jiffy on ext4/xfs/tmpfs without fine-grained timestamps, 1 s on ext3 and some NFS servers,
2 s on FAT) leave ctime alone. So a file is cached only when its ctime and mtime are older
than the start of the load by more than RACY_WINDOW_NS (2 s): a later write lands in a
later tick, a different ctime by construction. A file changed within the window is parsed
on every run until it ages out (git's "racily clean"): one parse, never a stale answer.
Every entry belongs to the networks.toml it was validated against, held the same way: if
that changes, or changes while we read, nothing cached is used. A domain-XML guest also
depends on the host files (its bridges and devices become networks through the source
host's mapping, and which host that is depends on all of them): its entry is used only
while the listed host files and their identities are those it was read against
(hosts_identity), and is not kept when one of them is too recent to tell.

Each entry is its object pickled alone, so a load unpickles only what it uses. When a load
found no problem and every file settled, the cache also keeps how it assembled the fleet:
the lists of host and guest files, per host its name, the networks it binds and its
mapping's file, and all guests in one pickle. The next load that lists exactly those files
with exactly those identities returns that fleet without load_fleet (the same files give
the same fleet); any difference falls back to the per-file path. With lazy=True its hosts
are a LazyHosts mapping that unpickles a host when asked for: `netmap hosts-for` needs the
hosts that bind every network of the guest, and answers the others from that index.

The file: $NETMAP_CACHE_DIR, else $XDG_CACHE_HOME/netmap, else ~/.cache/netmap, one per
mappings directory, written to a temporary file and renamed into place. It is a pickle, so
it is read only when it is a regular file of this user that nobody else may write, its
checksum matches, and this Python with exactly this loader wrote it (a digest of netmap.load
and every netmap module it names, `loader_sources`), checked before anything is unpickled.
Anything else is a miss; a cache directory that cannot be written disables the cache.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import re
import stat
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from netmap import cache_child
from netmap.cache_index import Identity, fleet_index, identity, unchanged_fleet
from netmap.cache_pickle import pickled
from netmap.errors import InputError
from netmap.gcpause import gc_paused
from netmap.load import fleet_file_names, load_fleet, load_guest, load_host, mappings_dir
from netmap.model import Fleet, Network

RACY_WINDOW_NS = 2_000_000_000
_MISSING: Any = object()
FORMAT = 2
MAGIC = b"netmap-fleet-cache\x00"
DIGEST_SIZE = 4


def checksum(payload: bytes | memoryview) -> bytes:
    """Against a torn or damaged file (trust comes from its owner and mode, see _read):
    CRC-32 reads the 20 MB of a 10k-host cache in 3 ms, BLAKE2b took 15 ms."""
    return zlib.crc32(payload).to_bytes(DIGEST_SIZE, "big")

T = TypeVar("T")


def cache_dir() -> Path:
    """$NETMAP_CACHE_DIR, else $XDG_CACHE_HOME/netmap, else ~/.cache/netmap."""
    explicit = os.environ.get("NETMAP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec says to ignore a relative path
        return Path(xdg) / "netmap"
    return Path.home() / ".cache" / "netmap"


def cache_file(base: Path) -> Path:
    """The cache file of one mappings directory (its real path, hashed)."""
    real = os.path.realpath(base)
    return cache_dir() / f"fleet-{hashlib.blake2b(real.encode(), digest_size=10).hexdigest()}"


def settled(ident: Identity, started_ns: int) -> bool:
    """Whether any later change of the file must change its identity (see module doc)."""
    _, mtime_ns, ctime_ns, _, _ = ident
    return max(mtime_ns, ctime_ns) < started_ns - RACY_WINDOW_NS


_NETMAP_REFERENCE = re.compile(
    r"\bfrom\s+netmap\s+import\s+(?:\(([^)]*)\)|([^\n]*))|\bnetmap((?:\.\w+)+)")


def loader_sources(package: Path | None = None) -> list[Path]:
    """netmap.cache, netmap.load and every netmap module they name, transitively: what can
    change the objects a load makes. A text search (`netmap.x.y`, `from netmap import x`)
    may find more than is imported (a needless miss) but never less, lazy imports too."""
    package = package or Path(__file__).resolve().parent
    found: dict[Path, None] = {}
    todo: list[tuple[str, ...]] = [("cache",), ("load",)]
    while todo:
        parts = todo.pop()
        path = _module_file(package, parts)
        if path is None or path in found:
            continue
        found[path] = None
        for depth in range(1, len(parts)):  # importing a.b runs a/__init__.py first
            todo.append(parts[:depth])
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for grouped, line, dotted in _NETMAP_REFERENCE.findall(text):
            if dotted:
                todo.append(tuple(dotted[1:].split(".")))
            # every word of `from netmap import a, b as c`: the modules among them count
            todo.extend((word,) for word in re.findall(r"\w+", grouped or line))
    return sorted(found)


def _module_file(package: Path, parts: tuple[str, ...]) -> Path | None:
    """The file of the longest prefix of `parts` that is a module (`load.load_fleet` is
    load.py), or None when nothing is."""
    for depth in range(len(parts), 0, -1):
        base = package.joinpath(*parts[:depth])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def code_fingerprint() -> bytes:
    """This Python and the loader's sources: other code may have made other objects."""
    package = Path(__file__).resolve().parent
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{FORMAT} {sys.version} {pickle.HIGHEST_PROTOCOL}".encode())
    for path in [package / "__init__.py", *loader_sources(package)]:
        digest.update(os.path.relpath(path, package).encode() + b"\x00")
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.digest()


def load_fleet_cached(root: str | os.PathLike[str] | None = None, *,
                      write_behind: bool | Callable[[Callable[[], object]], object] = False,
                      parallel: bool = False,
                      lazy: bool = False, placing: str | None = None,
                      prepare: Callable[[], object] | None = None,
                      files: tuple[list[str], list[str]] | None = None) -> Fleet:
    """`load_fleet(root)`, answered from the cache for every file that did not change.

    For the command line, which may fork: write_behind=True writes an updated cache from a
    detached process (pickling 10k hosts takes 0.3-0.4 s); parallel=True has a child parse
    part of the files when thousands must be parsed and a second CPU is there. A callable
    write_behind (finish.later) is handed that write to run as the process ends: until the
    writer ends, every object we touch costs a copy-on-write page fault (a cold 10k-host
    hosts-for ran its query 0.24 s instead of 0.13 s next to it).

    When no file changed at all, the fleet a previous load assembled is returned without
    assembling it again. lazy=True then makes `fleet.hosts` a LazyHosts mapping, which
    unpickles a host only when it is asked for (a placement query needs a fifth of them).

    The same holds for the hosts a parsing child read (parallel=True, netmap/cache_child.py):
    only what load_fleet and a placement query ask of every host (name, mapping file, networks
    bound) comes back at once; the hosts themselves stay in the child, which can run a
    query over them (`LazyHosts.elsewhere`), and come pickled after, for the cache writer
    or when used. placing=GUEST: the child sends GUEST's host at once (a placement query
    compares every candidate with it).

    prepare: what the command needs next (its imports), run while the child finishes its
    share of the files: by us once ours are parsed, and by the child, once it has sent
    them, when a query is to be asked of it (placing); when there are few files to
    parse, once before the fork instead (cache_child.PREPARE_BEFORE_FORK_FILES). Run only
    when a child parses.

    files: the directory's load.fleet_file_names, when the caller listed it already (a
    listing of 10k files takes 5 ms)."""
    base = mappings_dir(root)
    started_ns = time.time_ns()
    with gc_paused():
        target = cache_file(base)
        fingerprint = code_fingerprint()
        stored = _read(target, fingerprint, os.path.realpath(base))
        networks_path = base / "networks.toml"
        try:
            networks_before = os.stat(networks_path)
        except OSError:
            return load_fleet(base)  # load_fleet names the problem
        if files is None:
            files = fleet_file_names(base)
        entries: dict[str, tuple[Identity, Any]] = {}
        if stored is not None and stored["networks"] == identity(networks_before):
            entries = stored["entries"]
            whole = unchanged_fleet(base, files, stored.get("fleet"), entries, lazy)
            if whole is not None and _same_file(networks_path, networks_before):
                return whole
        # Before anything is parsed (a later change moves an identity we keep)
        hosts_seen = hosts_identity(files[0], started_ns) if _has_xml(files[1]) else None
        if stored is not None and stored.get("hosts_seen") != hosts_seen:
            entries = {key: entry for key, entry in entries.items() if not _is_xml(key)}
        fresh: dict[str, tuple[Identity, Any]] = {}
        loaded: list[str] = []
        helper = cache_child.start(base, files, entries, placing if lazy else None, prepare) \
            if parallel else None
        try:
            host_loader = _loader(load_host, entries, fresh, started_ns, helper, loaded)
            if helper is not None:  # ours first, not waiting for the child at its first file
                host_loader = cache_child.parse_ahead(
                    _loader(load_host, entries, fresh, started_ns), helper.ours,
                    helper.networks, loaded, host_loader)
                if helper.prepare is not None:
                    helper.prepare()
            fleet = load_fleet(
                base, host_loader=host_loader,
                guest_loader=_loader(load_guest, entries, fresh, started_ns, helper, loaded),
                read=(helper.networks, helper.files) if helper is not None else None)
        finally:
            if helper is not None:
                helper.close()
        try:
            networks_after = os.stat(networks_path)
        except OSError:
            networks_after = None
        if networks_after is None or identity(networks_after) != identity(networks_before):
            # networks.toml changed while we read: the cached files were validated against
            # another version of it, so read everything again
            return load_fleet(base)
        if hosts_seen is None:  # a host file too recent (or gone): see hosts_identity
            for key in [key for key in fresh if _is_xml(key)]:
                del fresh[key]
        networks_settled = settled(identity(networks_before), started_ns)
        whole_index = fleet_index(fleet, loaded, fresh) if networks_settled else None
        if helper is not None:
            # on every path out: until here, the child's hosts are PickledHost stand-ins
            # (a name and the networks bound), not hosts
            fleet = cache_child.with_lazy_hosts(
                fleet, lazy, whole_index["summaries"] if whole_index else None)
        if not networks_settled:
            return fleet  # too recent to key a cache on; valid, but not worth storing
        if (stored is None or fresh.keys() != entries.keys()
                or stored["networks"] != identity(networks_before)
                or stored.get("hosts_seen") != hosts_seen
                or (stored.get("fleet") is None) != (whole_index is None)):
            data = {"root": os.path.realpath(base), "networks": identity(networks_before),
                    "hosts_seen": hosts_seen, "entries": fresh, "fleet": whole_index}
            if callable(write_behind):  # run as the process ends (finish.later)
                write_behind(functools.partial(_store, target, fingerprint, data, helper,
                                               behind=True, exiting=True))
            else:
                _store(target, fingerprint, data, helper, behind=bool(write_behind))
        return fleet


def _is_xml(key: str) -> bool:
    return key.endswith(".xml")


def _has_xml(keys: list[str]) -> bool:
    return any(map(_is_xml, keys))


def hosts_identity(host_files: list[str], started_ns: int) -> bytes | None:
    """What a domain-XML guest depends on besides its own file: it names bridges and
    devices, which the host files it was read against turn into networks (and which host
    explains it best picks its source host). A digest of the listed host files and their
    identities, taken before they are read; None when one of them is too recent to tell a
    later change by (see settled) or cannot be statted: XML guests are then not kept."""
    digest = hashlib.blake2b(digest_size=16)
    for key in host_files:
        try:
            ident = identity(os.stat(key))
        except OSError:
            return None
        if not settled(ident, started_ns):
            return None
        digest.update(f"{key}\0{ident}\0".encode())
    return digest.digest()


def _store(target: Path, fingerprint: bytes, data: dict[str, Any],
           helper: cache_child.ParsingChild | None,
           *, behind: bool, exiting: bool = False) -> bool:
    keep: tuple[int, ...] = ()
    if helper is not None:  # nothing more to ask of the child: let it send its last hosts
        helper.release()
        keep = helper.fds()
    if behind:
        return _write_behind(target, fingerprint, data, keep, exiting=exiting)
    return _write(target, fingerprint, data)


def _same_file(path: Path, before: os.stat_result) -> bool:
    try:
        return identity(os.stat(path)) == identity(before)
    except OSError:
        return False


def _loader(parse: Callable[[str, dict[str, Network]], T],
            entries: dict[str, tuple[Identity, Any]], fresh: dict[str, tuple[Identity, Any]],
            started_ns: int, helper: cache_child.ParsingChild | None = None,
            loaded: list[str] | None = None,
            ) -> Callable[[str, dict[str, Network]], T]:
    """A per-file loader for load_fleet: the cached object when the file's identity is the
    one it was parsed at, else a fresh parse (kept when the file is settled). Entries hold
    each object pickled alone (bytes), fresh ones the object until they are stored."""

    def load(path: str, networks: dict[str, Network]) -> T:
        key = os.fspath(path)
        if loaded is not None:
            loaded.append(key)
        got = helper.result(key) if helper is not None else None
        if got is not None:
            # The child's answer, with the identity it saw before reading: the file as it
            # was then, as if read then; a later change moves the identity we keep.
            ident, value = got
            if settled(ident, started_ns):
                stored = value.stored if isinstance(value, cache_child.PickledHost) else value
                fresh[key] = (ident, stored)
            return value
        try:
            # stat BEFORE reading: a change after this point moves the identity we keep
            st = os.stat(key)
        except OSError:
            return parse(path, networks)  # the parser reports it as load_fleet would
        ident = identity(st)
        cached = entries.get(key)
        if cached is not None and cached[0] == ident:
            try:
                value = pickle.loads(cached[1])
            except Exception:  # checksummed, from this code: not expected, but only a miss
                value = _MISSING
            if value is not _MISSING:
                fresh[key] = cached
                return value
        # Only successful parses are kept: an error is rare, cheap to find again, and is
        # then raised exactly as the parser raises it.
        value = parse(path, networks)
        if settled(ident, started_ns):
            fresh[key] = (ident, value)
        return value

    return load


def _read(target: Path, fingerprint: bytes, root: str) -> dict[str, Any] | None:
    """The stored cache, or None for anything not trustworthy or not ours."""
    try:
        # without blocking: a FIFO put in its place would wait for a writer forever; it
        # is a miss like any other file not ours, and the next write replaces it
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        with open(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                    or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
                return None
            blob = handle.read()
    except OSError:
        return None
    # layout: MAGIC, the code fingerprint, the payload's digest, the payload (a pickle);
    # a foreign fingerprint is refused before anything is unpickled
    code_end = len(MAGIC) + len(fingerprint)
    head = code_end + DIGEST_SIZE
    if len(blob) <= head or blob[:code_end] != MAGIC + fingerprint:
        return None
    payload = memoryview(blob)[head:]
    if checksum(payload) != blob[code_end:head]:
        return None
    try:
        data = pickle.loads(payload)
    except Exception:  # a checksummed file from other code may fail in any way: a miss
        return None
    if (not isinstance(data, dict) or data.get("root") != root
            or not isinstance(data.get("entries"), dict)):
        return None
    return data


def _dump(data: dict[str, Any]) -> bytes:
    """The payload: each entry's object pickled alone (a load unpickles only what it uses),
    entries that come from the cache kept as the bytes they are."""
    entries = {key: (ident, _entry_bytes(value))
               for key, (ident, value) in data["entries"].items()}
    index = data.get("fleet")
    if index is not None and not isinstance(index["guests_blob"], bytes):
        index = {**index, "guests_blob": pickled(index["guests_blob"])}
    return pickled({**data, "entries": entries, "fleet": index})


def _entry_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):  # as it came from the cache or the parsing child
        return value
    if isinstance(value, cache_child.Deferred):  # the child sends it last
        return value.blob()
    return pickled(value)


def _write(target: Path, fingerprint: bytes, data: dict[str, Any]) -> bool:
    """Store atomically (temporary file + rename); False when the cache cannot be written."""
    try:
        payload = _dump(data)
    except Exception:  # whatever a loader put in the model: a cache never breaks a load
        return False
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".fleet-", dir=target.parent)
    except OSError:
        return False
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(MAGIC)
            out.write(fingerprint)
            out.write(checksum(payload))
            out.write(payload)
        os.replace(temporary, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return False
    return True


def _write_behind(target: Path, fingerprint: bytes, data: dict[str, Any],
                  keep: tuple[int, ...] = (), *, exiting: bool = False) -> bool:
    """`_write` in a double-forked grandchild nobody waits for. It drops inherited file
    descriptors, so a pipe reading our output ends when we exit. An older snapshot landing
    after a newer one is only less complete, never stale (entries are keyed on identity).
    With threads (a forked child may inherit a held lock) or no fork, write in place.
    `keep`: descriptors the writer still reads from (a parsing child's last message).
    exiting: we end right after this, so one fork does (init reaps the orphan), at half
    the cost of forking a large process twice."""
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return _write(target, fingerprint, data)
    try:
        child = os.fork()
    except OSError:
        return _write(target, fingerprint, data)
    if child == 0:  # pragma: no cover - runs in the forked processes, which _exit
        code = 0
        try:
            if exiting or os.fork() == 0:
                _detach(keep)
                code = 0 if _write(target, fingerprint, data) else 1
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    if not exiting:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, 0)
    return True


def _detach(keep: tuple[int, ...] = ()) -> None:  # pragma: no cover - in the grandchild
    os.setsid()
    # Lowest CPU priority: the command that forked us goes on (hosts-for checks on both
    # CPUs right after loading) and must not wait for a cache only the next run needs.
    with contextlib.suppress(OSError):
        os.nice(19)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _max_fd())


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 1024


def clear(root: str | os.PathLike[str] | None = None) -> bool:
    """Remove the cache of one mappings directory; True when there was one."""
    try:
        os.unlink(cache_file(mappings_dir(root)))
    except (OSError, InputError):
        return False
    return True
