"""A warm load's guests: names, hosts and MACs from the store's rows, each Guest read from
its row when first asked for.

A 10k-guest fleet's guests cost a tenth of a second or more to unpickle; `hosts-for`
needs the guest, the guests on its candidate hosts and the users of its MACs, `show HOST`
the guests on that host. Never stale, as netmap/load/hosts.py: every row's key was made
by this load from the file's identity, a guest is read only under that key, and a row
replaced since (another load saw the file change) has its file parsed again.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any

from netmap.errors import InputError
from netmap.load import parse
from netmap.load.store import Row, Store, add_reader
from netmap.model.fleet import Guest, Host, IndexedGuests, Network

# Guests asked for one at a time before the rest are read at once: a query by name asks for
# a few, a caller that walks every guest (a `{**guests}`) would cost a query each.
ONE_BY_ONE = 64


class StoredGuests(IndexedGuests):
    """name -> Guest of the guest files `rows` (path -> row, in the load's order), read
    from `db` on first access; `networks` and `hosts` are what a file read again is
    checked against."""

    def __init__(self, db: Store, rows: Mapping[str, Row], networks: dict[str, Network],
                 hosts: Mapping[str, Host]) -> None:
        self._db, self._networks, self._hosts = db, networks, hosts
        self._paths = {row.name: path for path, row in rows.items()}
        self._rows = rows
        self._read: dict[str, Guest] = {}
        self._placed = {row.name: row.host for row in rows.values()}
        self._by_mac: dict[str, list[str]] | None = None  # MAC -> guests, from the rows
        self._mac_users: dict[str, list[tuple[str, int]]] = {}  # asked for already
        self._misses = 0
        self.target = db.target
        add_reader(self)

    def keep(self, paths: Collection[str] | None) -> None:
        self.read([row.name for path, row in self._rows.items()
                   if paths is None or path in paths])

    def __getitem__(self, name: str) -> Guest:
        guest = self._read.get(name)
        if guest is None:
            self._misses += 1
            if self._misses > ONE_BY_ONE and name in self._paths:
                self.read(self._paths)  # a caller walking them all (`{**guests}`)
            else:
                self.read((name,))  # KeyError: no such guest, as a dict says
            guest = self._read[name]
        return guest

    def read(self, names: Collection[str]) -> None:
        wanted = {self._paths[name]: name for name in names if name not in self._read}
        if not wanted:
            return
        blobs = self._db.objects({path: self._rows[path].key for path in wanted})
        for path, name in wanted.items():
            guest = _unpickled(blobs.get(path))
            if not isinstance(guest, Guest):
                guest = parse.load_guest(path, self._networks, self._hosts)
                if guest.name != name:
                    raise InputError(f"{path} changed while netmap read it: it named guest "
                                     f"{name!r}, now {guest.name!r}", file=path,
                                     key="guest.name", fix="run the command again")
            self._read[name] = guest

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, name: object) -> bool:
        return name in self._paths

    def values(self) -> Any:  # every guest: read them in one pass, not one query each
        self.read(self._paths)
        return super().values()

    def items(self) -> Any:
        self.read(self._paths)
        return super().items()

    def hosts(self) -> Mapping[str, str | None]:
        return self._placed

    def mac_users(self, mac: str) -> list[tuple[str, int]]:
        users = self._mac_users.get(mac)
        if users is None:
            if self._by_mac is None:
                self._by_mac = {}
                for row in self._rows.values():
                    for used in row.macs.split("\n")[:-1]:
                        self._by_mac.setdefault(used, []).append(row.name)
            names = list(dict.fromkeys(self._by_mac.get(mac, ())))
            self.read(names)
            users = self._mac_users[mac] = [(name, nic.index) for name in names
                                            for nic in self[name].nics if nic.mac == mac]
        return users

    def __repr__(self) -> str:
        return f"<StoredGuests of {len(self)} guests, {len(self._read)} read>"


def _unpickled(blob: bytes | None) -> Any:
    import pickle

    if blob is None:
        return None
    try:
        return pickle.loads(blob)
    except Exception:  # a damaged row, though ours: a miss
        return None
