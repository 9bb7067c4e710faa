"""What netmap reads of OVSDB (netmap/netlink/ovsdb.py), as OVSDB sends it and as netmap
uses it: the values of RFC 7047 (5.1: sets, maps, uuids), the rows of one read (View), a
bridge's ports converted when first looked at (Ports), and the dataclasses the rest of
netmap reads."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class OvsInterface:
    name: str
    type: str
    ofport: int | None
    error: str | None
    external_ids: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OvsPort:
    name: str
    bridge: str
    tag: int | None
    trunks: tuple[int, ...]
    external_ids: dict[str, str]
    interfaces: tuple[OvsInterface, ...]

    @property
    def interface_ids(self) -> dict[str, str]:
        """The external_ids of the port's own interface (of its name): where OVN's
        ovn-controller, os-vif and libvirt read and write iface-id and attached-mac."""
        return next((i.external_ids for i in self.interfaces if i.name == self.name), {})


@dataclass(frozen=True)
class OvsBridge:
    name: str
    datapath_type: str
    ports: Mapping[str, OvsPort] = field(default_factory=dict)
    external_ids: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PortStatus:
    """What a realize reads back of its port: the tag, and whether ovs-vswitchd uses each
    interface (its OpenFlow port number, its error) as (name, ofport, error)."""

    tag: int | None
    interfaces: tuple[tuple[str, int | None, str | None], ...]


def as_set(value: Any) -> list[Any]:
    """A set column: ["set", [...]], or its one member alone."""
    if isinstance(value, list) and value and value[0] == "set":
        return list(value[1])
    return [value]


def one(value: Any) -> Any:
    """An optional column (a set of at most one) as its member or None."""
    members = as_set(value)
    return members[0] if members else None


def as_map(value: Any) -> dict[str, str]:
    return dict(value[1]) if isinstance(value, list) and value and value[0] == "map" else {}


def uuid_of(value: Any) -> str:
    return str(value[1])


def uuids(value: Any) -> list[str]:
    return [uuid_of(member) for member in as_set(value)]


def map_json(pairs: Mapping[str, str]) -> list[Any]:
    return ["map", [[k, v] for k, v in sorted(pairs.items())]]


@dataclass
class View:
    """What one read found: the root's uuid, every bridge, and the ports and interfaces
    read (rows as OVSDB sent them, by uuid)."""

    root: str | None
    bridges: dict[str, dict[str, Any]]  # by name
    ports: dict[str, dict[str, Any]]  # by uuid
    interfaces: dict[str, dict[str, Any]]  # by uuid
    _by_name: dict[str, dict[str, Any]] | None = None

    def port(self, name: str) -> dict[str, Any] | None:
        if self._by_name is None:
            self._by_name = {row["name"]: row for row in self.ports.values()}
        return self._by_name.get(name)


class Ports(Mapping[str, OvsPort]):
    """A bridge's ports by name, each converted when first looked at: deciding looks up
    only its own ports' names, not the thousand others of a host."""

    def __init__(self, bridge: str, rows: dict[str, dict[str, Any]],
                 interfaces: dict[str, dict[str, Any]]) -> None:
        self._bridge, self._rows, self._interfaces = bridge, rows, interfaces
        self._read: dict[str, OvsPort] = {}

    def _own(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        return [self._interfaces[u] for u in uuids(row["interfaces"]) if u in self._interfaces]

    def __getitem__(self, name: str) -> OvsPort:
        port = self._read.get(name)
        if port is None:
            row = self._rows[name]
            port = self._read[name] = OvsPort(
                name, self._bridge, one(row["tag"]), tuple(sorted(as_set(row["trunks"]))),
                as_map(row["external_ids"]),
                tuple(OvsInterface(i["name"], i["type"], one(i["ofport"]), one(i["error"]),
                                   as_map(i["external_ids"])) for i in self._own(row)))
        return port

    def status(self, name: str) -> PortStatus | None:
        """The port's PortStatus, its external_ids not converted."""
        row = self._rows.get(name)
        if row is None:
            return None
        return PortStatus(one(row["tag"]), tuple((i["name"], one(i["ofport"]),
                                                   one(i["error"])) for i in self._own(row)))

    def __contains__(self, name: object) -> bool:
        return name in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)
