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

from collections.abc import Collection, Iterator, Mapping

from netmap.errors import InputError
from netmap.load import parse
from netmap.load.guests import ONE_BY_ONE
from netmap.load.store import Row, Store, add_reader
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
        self._by_network: dict[str, list[str]] | None = None
        self._misses = 0
        self.target = db.target
        add_reader(self)

    def keep(self, paths: Collection[str] | None) -> None:
        for path, row in self._rows.items():
            if paths is None or path in paths:
                self[row.name]

    def __getitem__(self, name: str) -> Host:
        host = self._read.get(name)
        if host is None:
            path = self._paths[name]  # KeyError: no such host, as a dict says
            self._misses += 1
            if self._misses > ONE_BY_ONE:  # a caller walking them all: the rest at once
                self.read(self._paths)
                host = self._read.get(name)
        if host is None:
            host = self._db.object(path, self._rows[path].key)
            if not isinstance(host, Host):
                host = parse.load_host(path, self._networks)
                if host.name != name:
                    raise InputError(f"{path} changed while netmap read it: it named host "
                                     f"{name!r}, now {host.name!r}", file=path,
                                     key="host.name", fix="run the command again")
            self._read[name] = host
        return host

    def read(self, names: Collection[str]) -> None:
        wanted = {self._paths[name]: name for name in names if name not in self._read}
        if len(wanted) < 2:
            return  # one is read as it is asked for
        for path, blob in self._db.objects({p: self._rows[p].key for p in wanted}).items():
            host = _unpickled(blob)
            if isinstance(host, Host):  # else read (parsed) as it is asked for
                self._read[wanted[path]] = host

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, name: object) -> bool:
        return name in self._paths

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

    def __repr__(self) -> str:
        return f"<StoredHosts of {len(self)} hosts, {len(self._read)} read>"


def _unpickled(blob: bytes) -> object:
    import pickle

    try:
        return pickle.loads(blob)
    except Exception:  # a damaged row, though ours: a miss
        return None
