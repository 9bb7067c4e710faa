"""A warm load's hosts (see netmap/load/stored.py), and which hosts bind a network from the
store's index.

Unpickling every host of a large fleet would cost more than the rest of a warm query;
`show HOST`, `check` and `diff` need one or two of them, and `hosts-for` those that bind
the guest's networks.
"""

from __future__ import annotations

from collections.abc import Mapping

from netmap.load import parse
from netmap.load.store import Row, Store
from netmap.load.stored import StoredRows
from netmap.model.fleet import Host, IndexedHosts, Network


class StoredHosts(StoredRows[Host], IndexedHosts):
    """name -> Host of the host files `rows`; `networks` is what a file read again is
    checked against."""

    kind, held = "host", Host

    def __init__(self, db: Store, rows: Mapping[str, Row],
                 networks: dict[str, Network]) -> None:
        super().__init__(db, rows)
        self._networks = networks
        self._binding: dict[str, frozenset[str]] = {}
        self._by_network: dict[str, list[str]] | None = None

    def parse(self, path: str) -> Host:
        return parse.load_host(path, self._networks)

    def binding(self, network: str) -> frozenset[str]:
        found = self._binding.get(network)
        if found is None:
            if self._by_network is None:  # from the rows this load read: its own version
                self._by_network = {}
                for row in self._rows.values():
                    for bound in row.networks.split("\n")[1:-1]:
                        self._by_network.setdefault(bound, []).append(row.name)
            found = self._binding[network] = frozenset(self._by_network.get(network, ()))
        return found

    def mapping_file(self, name: str) -> str:
        return self._rows[self._paths[name]].file
