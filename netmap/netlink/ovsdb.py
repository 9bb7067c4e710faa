"""Open vSwitch's database, through the `ovs` package's IDL (the library ovsdbapp wraps).

The IDL, not ovsdbapp: netmap needs four tables and one transaction per realize, and the
IDL gives exactly that (a monitored replica, transactions with verify and increment) with
no further dependencies; ovsdbapp adds a command/backend layer, threads and pbr on top.
Never ovs-vsctl's output: its text is for people and changes between releases.

One `Ovsdb` is one connection; it is opened for a realize or release and closed after.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from netmap.errors import ApplyError
from netmap.plan import OVS_OWNER_KEY

VSWITCHD_LOCK = "ovs_vswitchd"
# ovs-vswitchd took up to 40 ms a port on the userspace datapath (bench_ovs.py, removing 1000
# ports): a transaction of many changes is given that much time, with room, per change
VSWITCHD_SECONDS_PER_CHANGE = 0.1  # the OVSDB lock ovs-vswitchd holds while it runs
_IDS = {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}}
_NAME = {"type": "string", "mutable": False}
_VID = {"type": "integer", "minInteger": 0, "maxInteger": 4095}


def _refs(table: str, least: int = 0) -> dict[str, Any]:
    return {"type": {"key": {"type": "uuid", "refTable": table}, "min": least,
                     "max": "unlimited"}}


def _optional(key: Any, most: int | str = 1) -> dict[str, Any]:
    return {"type": {"key": key, "min": 0, "max": most}}


# The part of Open vSwitch's schema (vswitch.ovsschema, the same since OVS 2.x) that netmap
# reads and writes: the IDL is built from it instead of fetching the whole schema on every
# connection (half of a realize's time went to parsing it, in the pure-Python JSON parser).
SCHEMA: dict[str, Any] = {"name": "Open_vSwitch", "version": "8.3.1", "tables": {
    "Open_vSwitch": {"isRoot": True, "maxRows": 1, "columns": {
        "bridges": _refs("Bridge"), "next_cfg": {"type": "integer"},
        "cur_cfg": {"type": "integer"}}},
    "Bridge": {"columns": {"name": _NAME, "ports": _refs("Port"),
                           "datapath_type": {"type": "string"}, "external_ids": _IDS}},
    "Port": {"columns": {"name": _NAME, "interfaces": _refs("Interface", 1),
                         "tag": _optional(_VID), "trunks": _optional(_VID, 4096),
                         "external_ids": _IDS}},
    "Interface": {"columns": {"name": _NAME, "type": {"type": "string"},
                              "ofport": _optional("integer"), "error": _optional("string"),
                              "external_ids": _IDS}}}}


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


class _Ports(Mapping[str, OvsPort]):
    """A bridge's ports by name, each read from the IDL's replica when first looked at:
    reading every column of every port cost a realize of 1000 guests a second per read,
    where deciding looks up only its own ports' names."""

    def __init__(self, bridge: str, rows: dict[str, Any]) -> None:
        self._bridge, self._rows = bridge, rows
        self._read: dict[str, OvsPort] = {}

    def __getitem__(self, name: str) -> OvsPort:
        port = self._read.get(name)
        if port is None:
            row = self._rows[name]
            port = self._read[name] = OvsPort(
                name, self._bridge, _one(row.tag), tuple(sorted(row.trunks)),
                dict(row.external_ids),
                tuple(OvsInterface(i.name, i.type, _one(i.ofport), _one(i.error),
                                   dict(i.external_ids)) for i in row.interfaces))
        return port

    def status(self, name: str) -> PortStatus | None:
        """The port's PortStatus, its external_ids not converted: each read of a column
        is converted anew by the IDL, and the two maps were most of a port's read-back."""
        row = self._rows.get(name)
        if row is None:
            return None
        return PortStatus(_one(row.tag), tuple((i.name, _one(i.ofport), _one(i.error))
                                               for i in row.interfaces))

    def __contains__(self, name: object) -> bool:
        return name in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


def _one(value: Any) -> Any:
    """An optional column ([] or [x] in the IDL) as x or None."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


class Ovsdb:
    """One connection to ovsdb-server, with Open_vSwitch, Bridge, Port and Interface
    replicated; refusal to connect is an ApplyError naming the socket."""

    def __init__(self, remote: str, timeout: float = 10.0,
                 ports: Collection[str] | None = None) -> None:
        """`ports`: replicate only the ports (and interfaces) of these names, not every
        port of the host (a realize parses its own, not the thousand others')."""
        import ovs.db.idl
        import ovs.vlog

        from netmap.netlink.ovs_json import use_fast_parser

        use_fast_parser()
        ovs.vlog.Vlog.set_levels_from_string("console:off")  # errors reach the user as ours
        self.remote = remote
        self.timeout = timeout
        self._idl_module = ovs.db.idl
        path = remote.removeprefix("unix:")
        if remote.startswith("unix:") and not os.path.exists(path):
            raise ApplyError(f"cannot connect to OVSDB at {remote}: {path} does not exist",
                             fix="start Open vSwitch (ovsdb-server), or set ovsdb = "
                             '"unix:PATH" in the host mapping ([host]) to its socket')
        helper = ovs.db.idl.SchemaHelper(schema_json=SCHEMA)
        helper.register_all()
        self.idl = ovs.db.idl.Idl(remote, helper)
        self._bridges: tuple[int, dict[str, OvsBridge]] | None = None
        self.partial = ports is not None
        if ports is not None:
            for table in ("Port", "Interface"):
                self.idl.cond_change(table, [["name", "==", name] for name in sorted(ports)])
        self._wait(lambda: self.idl.has_ever_connected() and self.idl.change_seqno > 0,
                   "read the database")

    def all_ports(self) -> None:
        """Replicate every port from now on (a partial view cannot say what else a bridge
        holds): a new connection without conditions, read once."""
        if self.partial:
            self.idl.close()
            self.__init__(self.remote, self.timeout)  # type: ignore[misc]

    def _wait(self, done: Any, what: str, timeout: float | None = None) -> None:
        import ovs.poller

        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            self.idl.run()
            if done():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApplyError(f"OVSDB at {self.remote}: could not {what} within "
                                 f"{self.timeout if timeout is None else timeout:g}s",
                                 fix="check that ovsdb-server and ovs-vswitchd run")
            poller = ovs.poller.Poller()
            self.idl.wait(poller)
            poller.timer_wait(int(min(left, 0.5) * 1000))
            poller.block()

    def close(self) -> None:
        self.idl.close()

    # --- reading ----------------------------------------------------------------------------
    def _root(self) -> Any:
        rows = list(self.idl.tables["Open_vSwitch"].rows.values())
        if not rows:
            raise ApplyError(f"OVSDB at {self.remote} has no Open_vSwitch row",
                             fix="initialize it ('ovs-vsctl init')")
        return rows[0]

    def bridges(self) -> dict[str, OvsBridge]:
        """Every replicated bridge with its replicated ports; read once per change of the
        replica (a realize of N guests asks N times per step: decide and verify), and a
        port's columns only when that port is looked at."""
        if self._bridges is not None and self._bridges[0] == self.idl.change_seqno:
            return self._bridges[1]
        out: dict[str, OvsBridge] = {}
        for row in self.idl.tables["Bridge"].rows.values():
            ports = _Ports(row.name, {port.name: port for port in row.ports})
            out[row.name] = OvsBridge(row.name, row.datapath_type or "system", ports,
                                      dict(row.external_ids))
        self._bridges = (self.idl.change_seqno, out)
        return out

    def port_status(self, bridge: str, port: str) -> PortStatus | None:
        """PortStatus of `port` on `bridge` (None: not a port of it)."""
        live = self.bridges().get(bridge)
        return cast(_Ports, live.ports).status(port) if live is not None else None

    def vswitchd_running(self) -> bool:
        """ovs-vswitchd holds the OVSDB lock "ovs_vswitchd" while it runs: asking for it
        and finding it taken says so without changing anything (the request is withdrawn
        when this connection closes)."""
        self.idl.set_lock(VSWITCHD_LOCK)
        self._wait(lambda: self.idl.has_lock or self.idl.is_lock_contended,
                   "ask for ovs-vswitchd's lock")
        running = bool(self.idl.is_lock_contended)
        self.idl.set_lock(None)
        return running

    # --- changing ---------------------------------------------------------------------------
    def apply(self, changes: list[Change], *, wait_vswitchd: bool = True) -> None:
        """Make every change in one OVSDB transaction; with `wait_vswitchd`, then wait until
        ovs-vswitchd has applied it (as ovs-vsctl does without --no-wait)."""
        if not changes:
            return
        idl = self._idl_module
        txn = idl.Transaction(self.idl)
        root = self._root()
        bridges = {row.name: row for row in self.idl.tables["Bridge"].rows.values()}
        ports = {row.name: row for row in self.idl.tables["Port"].rows.values()}
        for change in changes:
            change.write(txn, root, bridges, ports)
        if wait_vswitchd:
            root.increment("next_cfg")
        status = txn.commit_block()
        if status not in (idl.Transaction.SUCCESS, idl.Transaction.UNCHANGED):
            raise ApplyError(f"OVSDB at {self.remote} refused the transaction "
                             f"({idl.Transaction.status_to_string(status)}: "
                             f"{txn.get_error() or 'no detail'})",
                             fix="see ovsdb-server's log; another client may be changing "
                             "the same rows: run again")
        if wait_vswitchd and status == idl.Transaction.SUCCESS:
            target = txn.get_increment_new_value()
            self._wait(lambda: self._root().cur_cfg >= target,
                       "have ovs-vswitchd apply the change (is ovs-vswitchd running?)",
                       max(self.timeout, VSWITCHD_SECONDS_PER_CHANGE * len(changes)))


class Change:
    """One change inside a transaction."""

    def write(self, txn: Any, root: Any, bridges: dict[str, Any], ports: dict[str, Any],
              ) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class AddBridge(Change):
    name: str
    datapath_type: str | None = None

    def write(self, txn: Any, root: Any, bridges: dict[str, Any], ports: dict[str, Any],
              ) -> None:
        # a bridge has its internal port of the same name, as ovs-vsctl add-br makes it
        iface = txn.insert(txn.idl.tables["Interface"])
        iface.name, iface.type = self.name, "internal"
        port = txn.insert(txn.idl.tables["Port"])
        port.name, port.interfaces = self.name, [iface]
        row = txn.insert(txn.idl.tables["Bridge"])
        row.name, row.ports = self.name, [port]
        row.external_ids = {OVS_OWNER_KEY: "netmap"}  # release deletes only a marked one
        if self.datapath_type:
            row.datapath_type = self.datapath_type
        root.addvalue("bridges", row)
        bridges[self.name] = row


@dataclass(frozen=True)
class SetPort(Change):
    """Add port `name` (one interface of the same name) to `bridge`, or, when it exists,
    set its tag and external_ids."""

    name: str
    bridge: str
    tag: int | None = None
    external_ids: tuple[tuple[str, str], ...] = ()

    def write(self, txn: Any, root: Any, bridges: dict[str, Any], ports: dict[str, Any],
              ) -> None:
        # the IDL converts and checks every column read or set: a new port's interface is
        # the one just made (not read back from the port), an untagged new one has no tag
        port = ports.get(self.name)
        if port is None:
            iface = txn.insert(txn.idl.tables["Interface"])
            iface.name = self.name
            port = txn.insert(txn.idl.tables["Port"])
            port.name, port.interfaces = self.name, [iface]
            bridges[self.bridge].addvalue("ports", port)
            ports[self.name] = port
            own = [iface]
            if self.tag is not None:
                port.tag = [self.tag]
        else:
            own = [iface for iface in port.interfaces if iface.name == self.name]
            port.tag = [self.tag] if self.tag is not None else []
        ids = dict(self.external_ids)
        port.external_ids = ids
        # and on the interface: OVN binds a logical port by Interface external_ids:iface-id
        # (ovn-controller), which os-vif and libvirt set there; the Port's copy holds
        # netmap's marks for release and drift
        for iface in own:
            iface.external_ids = ids


@dataclass(frozen=True)
class DeletePort(Change):
    """Take port `name` out of `bridge` (OVSDB then drops the Port and Interface rows)."""

    name: str
    bridge: str

    def write(self, txn: Any, root: Any, bridges: dict[str, Any], ports: dict[str, Any],
              ) -> None:
        port, bridge = ports.get(self.name), bridges.get(self.bridge)
        if port is not None and bridge is not None:
            bridge.delvalue("ports", port)


@dataclass(frozen=True)
class DeleteBridge(Change):
    name: str

    def write(self, txn: Any, root: Any, bridges: dict[str, Any], ports: dict[str, Any],
              ) -> None:
        row = bridges.get(self.name)
        if row is not None:
            root.delvalue("bridges", row)


class Connections:
    """The OVSDB connections of one realize or release, one per remote, opened when first
    needed and closed together."""

    def __init__(self, timeout: float = 10.0, ports: Collection[str] | None = None) -> None:
        self.timeout = timeout
        self.ports = ports
        self._open: dict[str, Ovsdb] = {}

    def __call__(self, remote: str, *, every_port: bool = False) -> Ovsdb:
        """The connection to `remote`; `every_port`: replicating every port of the host,
        asked before it opens (a partial one would be read, then opened again)."""
        if remote not in self._open:
            self._open[remote] = Ovsdb(remote, self.timeout,
                                       None if every_port else self.ports)
        elif every_port:
            self._open[remote].all_ports()
        return self._open[remote]

    def close(self) -> None:
        for connection in self._open.values():
            connection.close()
        self._open.clear()


@contextmanager
def connected(remote: str, timeout: float = 10.0, ports: Collection[str] | None = None,
              ) -> Iterator[Ovsdb]:
    db = Ovsdb(remote, timeout, ports)
    try:
        yield db
    finally:
        db.close()
