"""The loader's store: what netmap.load parsed, one SQLite row per host or guest file.

A row holds the file's object pickled alone and the key it was parsed under; a load uses
the row only when the key it computes now is the same, so a changed file is parsed again,
alone, and nothing older than the files is ever answered. The key covers every input the
object depends on:
- the file's identity (size, mtime_ns, ctime_ns, inode, device): user space cannot set
  ctime (`touch -d`, `cp -p`, tar and rsync restore mtime only) and every write, rename
  or chmod moves it, so an edit keeping size and mtime still shows; a replaced file has
  another inode. Identity, not a content hash: stat costs a tenth of reading every file;
- networks.toml's identity (every file is validated against it);
- for a domain-XML guest, the identities of all host files (their mappings turn its
  bridges and devices into networks and pick its source host);
- the loader's code and this Python (`code_fingerprint`, kept once for the whole store:
  another fingerprint empties it).

The trap is timestamp granularity: two writes within one tick of the file system clock
(a jiffy on ext4/xfs/tmpfs, 1 s on ext3 and some NFS, 2 s on FAT) leave ctime alone. So a
key is stored only when every identity in it is older than the start of the load by more
than RACY_WINDOW_NS (git's "racily clean"): a later write lands in a later tick. A file
changed within the window is parsed on every load until it ages out.

Beside each object a row keeps what a query asks of every host without reading them all
(netmap/load/hosts.py): the host's name, its mapping file and the networks it binds. A
warm load unpickles a host only when it is asked for, from its row under this load's key.

The file: $NETMAP_CACHE_DIR, else $XDG_CACHE_HOME/netmap, else ~/.cache/netmap, one per
mappings directory. Rows are written in one transaction (SQLite's journal makes it
atomic; a reader sees the old rows or the new ones), by the loading process itself. It
holds pickles, so it is opened only when it is a regular file of this user that nobody
else may write; anything else, or a damaged file, is a miss and is replaced. A cache
directory that cannot be written disables the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import sqlite3
import stat
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

RACY_WINDOW_NS = 2_000_000_000
FORMAT = 6  # of the tables: a store of another format is emptied and made anew
Identity = tuple[int, int, int, int, int]


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


class Row(NamedTuple):
    """One file's row, its object left in the store until asked for (Store.object)."""

    key: str  # the key the file was parsed under
    name: str  # the host's or guest's name
    file: str  # a host's mapping file (model.mapping_file), else ""
    # a guest's object pickled (every load reads every guest); a host's stays stored
    blob: bytes | None = None


class Parsed(NamedTuple):
    """What a load stores of a file it parsed: a Row, the object pickled, and for a host
    the networks it binds (the store's index: which hosts bind a network)."""

    path: str
    row: Row
    blob: bytes
    networks: tuple[str, ...]


class Store:
    """The rows of one mappings directory (see the module doc)."""

    def __init__(self, db: sqlite3.Connection, fingerprint: str, target: Path) -> None:
        self.db, self.fingerprint, self.target = db, fingerprint, target
        self._pid = os.getpid()

    @classmethod
    def open(cls, base: Path) -> Store | None:
        """The directory's store, created when missing or not trustworthy; None when the
        cache directory cannot be written."""
        target = cache_file(base)
        fingerprint = code_fingerprint()
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
                db.execute("CREATE TABLE IF NOT EXISTS meta (fingerprint TEXT, root TEXT)")
                db.execute("CREATE TABLE IF NOT EXISTS files"
                           " (path TEXT PRIMARY KEY, key TEXT NOT NULL, name TEXT NOT NULL,"
                           " file TEXT NOT NULL, networks TEXT NOT NULL, object BLOB NOT NULL)")
                return cls(db, fingerprint, target)
            except (OSError, sqlite3.Error):
                db.close()
                with contextlib.suppress(OSError):
                    os.unlink(target)
        return None

    def rows(self, root: str) -> dict[str, Row] | None:
        """Every stored row, when this code stored them for this directory; else None."""
        try:
            meta = self.db.execute("SELECT fingerprint, root FROM meta").fetchall()
            if meta != [(self.fingerprint, root)]:
                return None
            # the object last in each row: reading the other columns skips its pages
            return {path: Row(key, name, file, blob) for path, key, name, file, blob
                    in self.db.execute("SELECT path, key, name, file,"
                                       " CASE file WHEN '' THEN object END FROM files")}
        except sqlite3.Error:
            return None

    def object(self, path: str, key: str) -> Any:
        """The object stored for `path` under `key`; None when the row is gone, has another
        key now, or cannot be read (the caller parses the file)."""
        try:
            found = self._connection().execute(
                "SELECT object FROM files WHERE path = ? AND key = ?", (path, key)).fetchone()
            return None if found is None else pickle.loads(found[0])
        except Exception:  # a damaged row, though ours: a miss
            return None

    def binding(self, network: str) -> list[tuple[str, str]] | None:
        """(path, key) of the stored hosts that bind `network` (None: unreadable)."""
        # A scan of a column, not an index table: 10k hosts, 11 ms a query either way,
        # but storing a table of 60k bindings and its indexes took 0.23 s, the column 0.08 s.
        try:
            return self._connection().execute(
                "SELECT path, key FROM files WHERE instr(networks, ?)",
                (f"\n{network}\n",)).fetchall()
        except sqlite3.Error:
            return None

    def _connection(self) -> sqlite3.Connection:
        # a connection must not cross a fork (SQLite's rule): a forked worker that reads
        # hosts opens its own
        if os.getpid() != self._pid:
            self.db = sqlite3.connect(self.target, timeout=5, isolation_level=None)
            self._pid = os.getpid()
        return self.db

    def replace(self, root: str, parsed: Iterable[Parsed], gone: Iterable[str], *,
                every: bool) -> None:
        """Store what was `parsed` and forget `gone`, in one transaction; every: the rows
        are all there is (the store held another code's or directory's)."""
        parsed = list(parsed)
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if every:
                    self.db.execute("DELETE FROM files")
                    self.db.execute("DELETE FROM meta")
                    self.db.execute("INSERT INTO meta VALUES (?, ?)", (self.fingerprint, root))
                self.db.executemany("DELETE FROM files WHERE path = ?",
                                    ((path,) for path in (() if every else gone)))
                self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                                    ((p.path, p.row.key, p.row.name, p.row.file,
                                      "".join(f"\n{n}" for n in p.networks) + "\n", p.blob)
                                     for p in parsed))
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
