"""What a warm load's hosts and guests share: names and files from the store's rows, each
object read from its row when first asked for (netmap/load/hosts.py, guests.py).

Never stale: the load made these rows' keys from the files' identities just now (as for
every row it uses), and an object is read only under that key. Should its row have been
replaced since (another load saw the file change), the file is parsed again, as a load that
had not yet reached it would.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Generic, Protocol, TypeVar

from netmap.errors import InputError
from netmap.load.store import Row, Store, add_reader, unpickled

# Objects asked for one at a time before the rest are read at once: a query by name asks for
# a few, a caller that walks every one (a `{**guests}`) would cost a query each.
ONE_BY_ONE = 64


class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class StoredRows(Generic[T]):
    """name -> object of the files `rows` (path -> row, in the load's order), read from `db`
    on first access; a subclass says what it holds (`kind`, `held`) and how a file is parsed
    again (`parse`)."""

    kind: str  # "host" or "guest": in the error when a file changed under the load
    held: type

    def __init__(self, db: Store, rows: Mapping[str, Row]) -> None:
        self._db, self._rows = db, rows
        self._paths = {row.name: path for path, row in rows.items()}
        self._read: dict[str, T] = {}
        self._misses = 0
        self.target = db.target
        add_reader(self)

    def parse(self, path: str) -> T:
        raise NotImplementedError

    def keep(self, paths: Collection[str] | None) -> None:
        self.read([row.name for path, row in self._rows.items()
                   if paths is None or path in paths])

    def __getitem__(self, name: str) -> T:
        found = self._read.get(name)
        if found is None:
            self._misses += 1
            if self._misses > ONE_BY_ONE and name in self._paths:
                self.read(self._paths)  # a caller walking them all
            else:
                self.read((name,))  # KeyError: no such name, as a dict says
            found = self._read[name]
        return found

    def read(self, names: Collection[str]) -> None:
        """Read these at once: they are about to be asked for."""
        wanted = {self._paths[name]: name for name in names if name not in self._read}
        if not wanted:
            return
        blobs = self._db.objects({path: self._rows[path].key for path in wanted})
        for path, name in wanted.items():
            found = unpickled(blobs.get(path))
            if not isinstance(found, self.held):
                found = self.parse(path)
                if found.name != name:
                    raise InputError(f"{path} changed while netmap read it: it named "
                                     f"{self.kind} {name!r}, now {found.name!r}", file=path,
                                     key=f"{self.kind}.name", fix="run the command again")
            self._read[name] = found

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, name: object) -> bool:
        return name in self._paths

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self)} {self.kind}s, {len(self._read)} read>"
