"""The changes of one OVSDB transaction (netmap/netlink/ovsdb.py sends it): each Change
writes its operations of RFC 7047 (insert, update, mutate) into a Writing, against the
rows of the last read (their uuids), and the Writing adds a `wait` for each row changed
that was read: a row gone or made again since is a refusal of the whole transaction, not
half of it made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from netmap.errors import ApplyError
from netmap.netlink.ovsdb_rows import View, map_json, uuid_of, uuids
from netmap.plan import OVS_OWNER_KEY

DATABASE = "Open_vSwitch"


class Writing:
    """One transaction's operations as the changes add them: rows inserted (named), the
    ports each bridge gains and loses, the bridges the root gains and loses, and, for each
    existing row changed, that it still exists (a `wait`: else the whole transaction is
    refused, not half made)."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.inserts: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []
        self.exists: dict[tuple[str, str], str] = {}  # (table, uuid) -> its name
        self.bridge_ports: dict[str, tuple[list[Any], list[Any]]] = {}  # bridge: (add, del)
        self.root_bridges: tuple[list[Any], list[Any]] = ([], [])
        self.new_bridges: dict[str, Any] = {}
        self.new_ports: set[str] = set()

    def insert(self, table: str, row: dict[str, Any]) -> list[str]:
        name = f"row{len(self.inserts)}"
        self.inserts.append({"op": "insert", "table": table, "row": row, "uuid-name": name})
        return ["named-uuid", name]

    def update(self, table: str, uuid: str, name: str, row: dict[str, Any]) -> None:
        self.exists[(table, uuid)] = name
        self.updates.append({"op": "update", "table": table,
                             "where": [["_uuid", "==", ["uuid", uuid]]], "row": row})

    def bridge(self, name: str) -> Any:
        """The bridge named `name` (made in this transaction or existing), or None."""
        if name in self.new_bridges:
            return self.new_bridges[name]
        row = self.view.bridges.get(name)
        if row is None:
            return None
        self.exists[("Bridge", uuid_of(row["_uuid"]))] = name
        return row["_uuid"]

    def ports_of(self, bridge: str) -> tuple[list[Any], list[Any]]:
        return self.bridge_ports.setdefault(bridge, ([], []))

    def operations(self) -> list[dict[str, Any]]:
        """The waits first: a row gone since the read refuses the transaction whole."""
        ops = self.inserts + self.updates
        for bridge, (added, deleted) in self.bridge_ports.items():
            mutations = [["ports", verb, ["set", refs]]
                         for verb, refs in (("delete", deleted), ("insert", added)) if refs]
            ops.append({"op": "mutate", "table": "Bridge",
                        "where": [["_uuid", "==", self.bridge(bridge)]],
                        "mutations": mutations})
        added, deleted = self.root_bridges
        mutations = [["bridges", verb, ["set", refs]]
                     for verb, refs in (("delete", deleted), ("insert", added)) if refs]
        if mutations:
            ops.append({"op": "mutate", "table": DATABASE, "where": [],
                        "mutations": mutations})
        return [{"op": "wait", "table": table, "timeout": 0, "until": "==",
                 "where": [["_uuid", "==", ["uuid", uuid]]], "columns": ["name"],
                 "rows": [{"name": name}]} for (table, uuid), name in self.exists.items()] + ops


class Change:
    """One change inside a transaction."""

    def write(self, txn: Writing) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class AddBridge(Change):
    name: str
    datapath_type: str | None = None

    def write(self, txn: Writing) -> None:
        # a bridge has its internal port of the same name, as ovs-vsctl add-br makes it
        iface = txn.insert("Interface", {"name": self.name, "type": "internal"})
        port = txn.insert("Port", {"name": self.name, "interfaces": iface})
        row: dict[str, Any] = {"name": self.name, "ports": port,
                               # release deletes only a marked one
                               "external_ids": map_json({OVS_OWNER_KEY: "netmap"})}
        if self.datapath_type:
            row["datapath_type"] = self.datapath_type
        txn.new_bridges[self.name] = bridge = txn.insert("Bridge", row)
        txn.root_bridges[0].append(bridge)


@dataclass(frozen=True)
class SetPort(Change):
    """Add port `name` (one interface of the same name) to `bridge`, or, when it exists,
    set its tag and external_ids."""

    name: str
    bridge: str
    tag: int | None = None
    external_ids: tuple[tuple[str, str], ...] = ()

    def write(self, txn: Writing) -> None:
        ids = map_json(dict(self.external_ids))
        tag = self.tag if self.tag is not None else ["set", []]
        # and on the interface: OVN binds a logical port by Interface external_ids:iface-id
        # (ovn-controller), which os-vif and libvirt set there; the Port's copy holds
        # netmap's marks for release and drift
        port = txn.view.port(self.name) if self.name not in txn.new_ports else None
        if port is None:
            if txn.bridge(self.bridge) is None:
                raise ApplyError(f"OVS bridge {self.bridge} vanished (OVSDB)",
                                 fix="realize again")
            made = txn.insert("Interface", {"name": self.name, "external_ids": ids})
            txn.ports_of(self.bridge)[0].append(txn.insert("Port", {
                "name": self.name, "interfaces": made, "tag": tag, "external_ids": ids}))
            txn.new_ports.add(self.name)
            return
        txn.update("Port", uuid_of(port["_uuid"]), self.name, {"tag": tag, "external_ids": ids})
        for uuid in uuids(port["interfaces"]):
            iface = txn.view.interfaces.get(uuid)
            if iface is not None and iface["name"] == self.name:
                txn.update("Interface", uuid, self.name, {"external_ids": ids})


@dataclass(frozen=True)
class DeletePort(Change):
    """Take port `name` out of `bridge` (OVSDB then drops the Port and Interface rows)."""

    name: str
    bridge: str

    def write(self, txn: Writing) -> None:
        port = txn.view.port(self.name)
        if port is not None and txn.bridge(self.bridge) is not None:
            txn.ports_of(self.bridge)[1].append(port["_uuid"])


@dataclass(frozen=True)
class DeleteBridge(Change):
    name: str

    def write(self, txn: Writing) -> None:
        row = txn.view.bridges.get(self.name)
        if row is not None:
            txn.root_bridges[1].append(row["_uuid"])
