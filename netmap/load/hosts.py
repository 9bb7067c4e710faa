"""A warm load's hosts: names and mapping files from the store's rows, each Host read from
its row when first asked for, and which hosts bind a network from the store's index.

A 10k-host fleet's hosts cost a third of a second to unpickle; `show HOST`, `check` and
`diff` need one or two of them, and `hosts-for` those that bind the guest's networks.
Never stale: the load made these rows' keys from the files' identities just now (as for
every row it uses), and a host is read only under that key. Should its row have been
replaced since (another load saw the file change), the file is parsed again, as a load
that had not yet reached it would.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from netmap.errors import InputError
from netmap.load import parse
from netmap.load.store import Row, Store
from netmap.model.fleet import Host, IndexedHosts, Network


class StoredHosts(IndexedHosts):
    """name -> Host of the host files `rows` (path -> row, in the load's order), read from
    `db` on first access."""

    def __init__(self, db: Store, rows: Mapping[str, Row],
                 networks: dict[str, Network]) -> None:
        self._db, self._networks = db, networks
        self._paths = {row.name: path for path, row in rows.items()}
        self._rows = rows
        self._read: dict[str, Host] = {}
        self._binding: dict[str, frozenset[str]] = {}

    def __getitem__(self, name: str) -> Host:
        host = self._read.get(name)
        if host is None:
            path = self._paths[name]  # KeyError: no such host, as a dict says
            host = self._db.object(path, self._rows[path].key)
            if not isinstance(host, Host):
                host = parse.load_host(path, self._networks)
                if host.name != name:
                    raise InputError(f"{path} changed while netmap read it: it named host "
                                     f"{name!r}, now {host.name!r}", file=path,
                                     key="host.name", fix="run the command again")
            self._read[name] = host
        return host

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, name: object) -> bool:
        return name in self._paths

    def binding(self, network: str) -> frozenset[str]:
        found = self._binding.get(network)
        if found is None:
            rows = self._rows
            indexed = self._db.binding(network)
            if indexed is None:  # the index cannot be read: ask the hosts themselves
                unsure, current = list(self._paths), set()
            else:
                # a row stored since under another key (its file changed after this load
                # saw it) speaks of another version than this load's: ask that host
                current = {path for path, key in indexed
                           if path in rows and rows[path].key == key}
                unsure = [rows[path].name for path, _ in indexed
                          if path in rows and path not in current]
            found = frozenset({rows[path].name for path in current}
                              | {name for name in unsure if network in self[name].bindings})
            self._binding[network] = found
        return found

    def mapping_file(self, name: str) -> str:
        return self._rows[self._paths[name]].file

    def __repr__(self) -> str:
        return f"<StoredHosts of {len(self)} hosts, {len(self._read)} read>"
