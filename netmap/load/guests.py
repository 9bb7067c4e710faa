"""A warm load's guests (see netmap/load/stored.py), with names, hosts and MACs from the
store's rows.

Unpickling every guest of a large fleet would cost more than a warm query needs; `hosts-for`
needs the guest, the guests on its candidate hosts and the users of its MACs, `show HOST`
the guests on that host.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from netmap.load import parse
from netmap.load.store import Row, Store
from netmap.load.stored import StoredRows
from netmap.model.fleet import Guest, Host, IndexedGuests, Network


class StoredGuests(StoredRows[Guest], IndexedGuests):
    """name -> Guest of the guest files `rows`; `networks` and `hosts` are what a file read
    again is checked against."""

    kind, held = "guest", Guest

    def __init__(self, db: Store, rows: Mapping[str, Row], networks: dict[str, Network],
                 hosts: Mapping[str, Host]) -> None:
        super().__init__(db, rows)
        self._networks, self._hosts = networks, hosts
        self._placed = {row.name: row.host for row in rows.values()}
        self._by_mac: dict[str, list[str]] | None = None  # MAC -> guests, from the rows
        self._mac_users: dict[str, list[tuple[str, int]]] = {}  # asked for already

    def parse(self, path: str) -> Guest:
        return parse.load_guest(path, self._networks, self._hosts)

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
