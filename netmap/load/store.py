"""The loader's store: what netmap.load parsed, one SQLite row per host or guest file.

A row holds the file's object pickled alone and the key it was parsed under; a load uses
the row only when the key it computes now is the same, so a changed file is parsed again,
alone, and nothing older than the files is ever answered. The key covers every input the
object depends on:
- the file's identity (size, mtime_ns, ctime_ns, inode, device): user space cannot set
  ctime (`touch -d`, `cp -p`, tar and rsync restore mtime only) and every write, rename
  or chmod moves it, so an edit keeping size and mtime still shows; a replaced file has
  another inode. Identity, not a content hash: a stat costs far less than reading the file;
- networks.toml's identity (every file is validated against it; its networks are kept
  too, under that identity alone);
- for a domain-XML guest, the identities of all host files (their mappings turn its
  bridges and devices into networks and pick its source host);
- the loader's code and this Python (`code_fingerprint`, kept once for the whole store:
  another fingerprint empties it). Hashing the loader's sources would be a good part of
  a warm query, so the store keeps beside it the identities of every file of the package
  (`sources_identity`, settled as below): while they are the same, so is the code.

The trap is timestamp granularity: two writes within one tick of the file system clock
(a jiffy on ext4/xfs/tmpfs, 1 s on ext3 and some NFS, 2 s on FAT) leave ctime alone. So a
key is stored only when every identity in it is older than the start of the load by more
than RACY_WINDOW_NS (git's "racily clean"): a later write lands in a later tick. A file
changed within the window is parsed on every load until it ages out.

Beside the rows, one pickled value (meta.rows, written in the same transaction) keeps for
every file its key and what a query asks of every host or guest without reading them all
(netmap/load/hosts.py, guests.py): the name; of a host its mapping file and the networks
it binds; of a guest its host and its MACs. A load reads it at once; a warm load unpickles
a host or a guest only when it is asked for, from its row under this load's key.

The file: $NETMAP_CACHE_DIR, else $XDG_CACHE_HOME/netmap, else ~/.cache/netmap, one per
mappings directory. Rows are written in one transaction (SQLite's journal makes it
atomic; a reader sees the old rows or the new ones), by the loading process itself. It
holds pickles, so it is opened only when it is a regular file of this user that nobody
else may write; anything else, or a damaged file, is a miss and is replaced. A cache
directory that cannot be written disables the store.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import re
import sqlite3
import stat
import sys
import time
import weakref
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

RACY_WINDOW_NS = 2_000_000_000
FORMAT = 10  # of the tables: a store of another format is emptied and made anew
Identity = tuple[int, int, int, int, int]
META_COLUMNS = ("fingerprint", "root", "sources", "rows", "networks_key", "networks")
FILES_COLUMNS = ("path", "key", "object")


def identity(st: os.stat_result) -> Identity:
    """What must move when a file changes (see the module doc)."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def settled(ident: Identity, started_ns: int) -> bool:
    """Whether any later change of the file must change its identity (see module doc)."""
    _, mtime_ns, ctime_ns, _, _ = ident
    return max(mtime_ns, ctime_ns) < started_ns - RACY_WINDOW_NS


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
    """The store of one mappings directory (its real path, hashed)."""
    real = os.path.realpath(base)
    digest = hashlib.blake2b(real.encode(), digest_size=10).hexdigest()
    return cache_dir() / f"fleet-{digest}.sqlite"


_NETMAP_REFERENCE = re.compile(r"\bfrom\s+netmap((?:\.\w+)*)\s+import\s+(?:\(([^)]*)\)|([^\n]*))"
                               r"|\bnetmap((?:\.\w+)+)")


def loader_sources(package: Path | None = None) -> list[Path]:
    """netmap.load and every netmap module it names, transitively: what can change the
    objects a load makes. A text search (`netmap.x.y`, `from netmap.x import y`) may find
    more than is imported (a needless miss) but never less, lazy imports too (relative
    imports, which it would not see, are refused by ruff's TID252)."""
    package = package or Path(__file__).resolve().parent.parent
    found: dict[Path, None] = {}
    todo: list[tuple[str, ...]] = [("load",)]
    while todo:
        parts = todo.pop()
        path = _module_file(package, parts)
        if path is None or path in found:
            continue
        found[path] = None
        for depth in range(1, len(parts)):  # importing a.b runs a/__init__.py first
            todo.append(parts[:depth])
        if parts == ("load",):  # the loader's own modules, whichever of them runs
            todo.extend(("load", sibling.stem) for sibling in path.parent.glob("*.py"))
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for base, grouped, line, dotted in _NETMAP_REFERENCE.findall(text):
            if dotted:
                todo.append(tuple(dotted[1:].split(".")))
                continue
            package_parts = tuple(base[1:].split(".")) if base else ()
            if package_parts:
                todo.append(package_parts)
            # every word of `from netmap.x import a, b as c`: the modules among them count
            todo.extend((*package_parts, word) for word in re.findall(r"\w+", grouped or line))
    return sorted(found)


def _module_file(package: Path, parts: tuple[str, ...]) -> Path | None:
    """The file of the longest prefix of `parts` that is a module (`load.parse.load_host`
    is load/parse.py), or None when nothing is."""
    for depth in range(len(parts), 0, -1):
        base = package.joinpath(*parts[:depth])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def code_fingerprint() -> str:
    """This Python and the loader's sources: other code may have made other objects."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{FORMAT} {sys.version} {pickle.HIGHEST_PROTOCOL}".encode())
    for path in [package / "__init__.py", *loader_sources(package)]:
        digest.update(os.path.relpath(path, package).encode() + b"\x00")
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def sources_identity(package: Path | None = None) -> str | None:
    """The identities of every Python file of the netmap package (and this Python): when
    they are what they were, so are the loader's sources. None when a file changed within
    the racy window (its next change might not show): the sources are hashed then."""
    package = package or Path(__file__).resolve().parent.parent
    now = time.time_ns()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{FORMAT} {sys.version} {pickle.HIGHEST_PROTOCOL}".encode())
    for folder, subfolders, files in os.walk(package):
        subfolders.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                try:
                    ident = identity(os.stat(path))
                except OSError:
                    return None
                if not settled(ident, now):
                    return None
                digest.update(f"{os.path.relpath(path, package)}\0{ident}\0".encode())
    return digest.hexdigest()


class Row(NamedTuple):
    """One file's row, its object left in the store until asked for (Store.object). Its
    key is in two parts: the file's own identity, and the rest (networks.toml's identity
    and, for a domain-XML guest, the host files'), the same string for every file of a
    kind: a load compares identities, it does not format a key per file."""

    ident: Identity  # the file's identity when it was parsed
    context: str  # the rest of the key it was parsed under
    name: str  # the host's or guest's name
    file: str  # a host's mapping file (model.mapping_file), else ""
    host: str | None = None  # a guest's host
    macs: str = ""  # a guest's MACs, each followed by a newline
    networks: str = ""  # the networks a host binds, each between newlines

    @property
    def key(self) -> str:
        """The whole key, as the row's object is stored under it (Store.object)."""
        return f"{self.ident}{self.context}"


# a Row of the fields as stored, without Row._make's Python call per row
_as_row: Callable[[tuple[Any, ...]], Row] = functools.partial(tuple.__new__, Row)


def is_guest(row: Row) -> bool:
    return row.file == ""


class Parsed(NamedTuple):
    """What a load stores of a file it parsed: its Row and the object pickled."""

    path: str
    row: Row
    blob: bytes


class Reader(Protocol):
    """What reads rows of a store after its load returned (netmap/load/hosts.py, guests.py):
    `keep` reads the objects of those paths now (None: of every path), before this process
    replaces or deletes their rows, so that a fleet loaded earlier still answers as it was."""

    target: Path

    def keep(self, paths: Collection[str] | None) -> None: ...


# this process's readers, told before a store they read is rewritten (Store.replace);
# another process's store write is a change seen as at any read: the file is parsed again
# (by id: a Mapping is not hashable)
_READERS: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def unpickled(blob: bytes | None) -> Any:
    """A row's object, or None when there is none or it cannot be read (the caller parses
    the file: a damaged row, though ours, is a miss)."""
    if blob is None:
        return None
    try:
        return pickle.loads(blob)
    except Exception:
        return None


def add_reader(reader: Reader) -> None:
    _READERS[id(reader)] = reader


class Store:
    """The rows of one mappings directory (see the module doc)."""

    def __init__(self, db: sqlite3.Connection, target: Path) -> None:
        self.db, self.target = db, target
        self._pid = os.getpid()
        self._fingerprint: str | None = None
        self.sources = sources_identity()

    @property
    def fingerprint(self) -> str:
        """code_fingerprint(), hashed when first needed."""
        if self._fingerprint is None:
            self._fingerprint = code_fingerprint()
        return self._fingerprint

    @classmethod
    def open(cls, base: Path) -> Store | None:
        """The directory's store, created when missing or not trustworthy; None when the
        cache directory cannot be written."""
        target = cache_file(base)
        for _ in range(2):  # a file not ours, or damaged, is replaced once
            try:
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                if not _trusted(target):
                    os.unlink(target)
                    continue
                db = sqlite3.connect(target, timeout=5, isolation_level=None)
            except (OSError, sqlite3.Error):
                return None
            try:
                os.chmod(target, 0o600)
                db.execute("PRAGMA synchronous = OFF")  # a cache: a torn write is a miss
                if db.execute("PRAGMA user_version").fetchone() != (FORMAT,):
                    with db:  # other tables, or none yet
                        for table in ("meta", "files", "bindings"):  # this and older formats'
                            db.execute(f"DROP TABLE IF EXISTS {table}")
                        db.execute(f"PRAGMA user_version = {FORMAT}")
                db.execute("CREATE TABLE IF NOT EXISTS meta (fingerprint TEXT, root TEXT,"
                           " sources TEXT, rows BLOB, networks_key TEXT, networks BLOB)")
                db.execute("CREATE TABLE IF NOT EXISTS files"
                           " (path TEXT PRIMARY KEY, key TEXT NOT NULL, object BLOB NOT NULL)")
                # tables of this format but other columns (made by a development build):
                # a file that every load would miss in; it is made anew (below)
                db.execute(f"SELECT {', '.join(META_COLUMNS)} FROM meta LIMIT 0")
                db.execute(f"SELECT {', '.join(FILES_COLUMNS)} FROM files LIMIT 0")
                return cls(db, target)
            except (OSError, sqlite3.Error):
                db.close()
                with contextlib.suppress(OSError):
                    os.unlink(target)
        return None

    def rows(self, root: str) -> dict[str, Row] | None:
        """Every stored row, when this code stored them for this directory; else None."""
        try:
            meta = self.db.execute("SELECT fingerprint, root, sources FROM meta").fetchall()
            if len(meta) != 1 or meta[0][1] != root:
                return None
            fingerprint, _, sources = meta[0]
            if sources is None or sources != self.sources:
                if fingerprint != self.fingerprint:
                    return None
                if self.sources is not None:  # the same code in other files: note them
                    self.db.execute("UPDATE meta SET sources = ?", (self.sources,))
            index = self._index()
            if index is None:
                return None
            return dict(zip(index.keys(), map(_as_row, index.values()), strict=True))
        except (sqlite3.Error, pickle.UnpicklingError, TypeError, ValueError, EOFError):
            return None

    def _index(self) -> dict[str, tuple[Any, ...]] | None:
        """path -> the fields of its Row, for every row: kept pickled in one value beside
        them (meta.rows), written with them (one value unpickles faster than SQLite
        reads every row's columns). None when there is none: every file is
        parsed, and the store made anew."""
        found = self.db.execute("SELECT rows FROM meta").fetchone()
        if found is None or found[0] is None:
            return None
        index = pickle.loads(found[0])
        return index if isinstance(index, dict) else None

    def object(self, path: str, key: str) -> Any:
        """The object stored for `path` under `key`; None when the row is gone, has another
        key now, or cannot be read (the caller parses the file)."""
        try:
            found = self._connection().execute(
                "SELECT object FROM files WHERE path = ? AND key = ?", (path, key)).fetchone()
            return None if found is None else pickle.loads(found[0])
        except Exception:  # a damaged row, though ours: a miss
            return None

    def objects(self, wanted: dict[str, str]) -> dict[str, bytes]:
        """The pickles stored for `wanted` (path -> key), of the rows that still have that
        key (a missing one: the caller parses the file). Read a thousand at a time: one
        query per object cost 10k queries for a 10k-guest fleet."""
        out: dict[str, bytes] = {}
        paths = list(wanted)
        try:
            db = self._connection()
            for start in range(0, len(paths), 900):  # SQLite's limit: 999 variables
                chunk = paths[start:start + 900]
                marks = ",".join("?" * len(chunk))
                for path, key, blob in db.execute(
                        f"SELECT path, key, object FROM files WHERE path IN ({marks})", chunk):
                    if wanted[path] == key:
                        out[path] = blob
        except sqlite3.Error:
            pass  # what was read so far is right; the rest is parsed
        return out

    def _connection(self) -> sqlite3.Connection:
        # a connection must not cross a fork (SQLite's rule): a forked worker that reads
        # hosts opens its own
        if os.getpid() != self._pid:
            self.db = sqlite3.connect(self.target, timeout=5, isolation_level=None)
            self._pid = os.getpid()
        return self.db

    def networks(self, key: str) -> Any:
        """networks.toml's networks as stored under `key` (its identity), else None. Ask
        only once `rows` said the store is of this code and directory."""
        try:
            found = self.db.execute("SELECT networks FROM meta WHERE networks_key = ?",
                                    (key,)).fetchone()
            return None if found is None or found[0] is None else pickle.loads(found[0])
        except Exception:  # a damaged value, though ours: parse the file
            return None

    def replace(self, root: str, parsed: Iterable[Parsed], gone: Iterable[str], *,
                every: bool, networks: tuple[str, bytes] | None = None) -> None:
        """Store what was `parsed` and forget `gone`, in one transaction; every: the rows
        are all there is (the store held another code's or directory's); networks: the
        key and pickle of networks.toml's networks, parsed under that key."""
        parsed, gone = list(parsed), list(gone)
        changing = None if every else {*(p.path for p in parsed), *gone}
        for reader in list(_READERS.values()):
            if reader.target == self.target:
                reader.keep(changing)
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if every:
                    self.db.execute("DELETE FROM files")
                    self.db.execute("DELETE FROM meta")
                    self.db.execute("INSERT INTO meta VALUES (?, ?, ?, NULL, NULL, NULL)",
                                    (self.fingerprint, root, self.sources))
                index = {} if every else self._index() or {}
                for path in gone:
                    index.pop(path, None)
                index.update((p.path, tuple(p.row)) for p in parsed)
                self.db.executemany("DELETE FROM files WHERE path = ?",
                                    ((path,) for path in (() if every else gone)))
                self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?)",
                                    ((p.path, p.row.key, p.blob) for p in parsed))
                self.db.execute("UPDATE meta SET rows = ?",
                                (pickle.dumps(index, pickle.HIGHEST_PROTOCOL),))
                if networks is not None:
                    self.db.execute("UPDATE meta SET networks_key = ?, networks = ?", networks)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self.db.close()


def _trusted(target: Path) -> bool:
    """Missing, or a regular file of this user that nobody else may write."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return True
    return (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
