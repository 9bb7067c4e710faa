"""Open vSwitch's database, over the `ovs` package's JSON-RPC client (ovs.jsonrpc,
ovs.stream: the library ovsdbapp and the IDL are built on), speaking OVSDB's protocol
(RFC 7047) directly: a `select` to read, one `transact` to change, a `monitor` of
`cur_cfg` to wait for ovs-vswitchd.

Not the IDL: it replicates what it reads and converts and checks every column written and
every row of its echo in Python (the transaction's rows sent back, then ovs-vswitchd's
updates to them), which was most of a realize's own time; netmap reads a few columns once,
writes one transaction and needs no replica. Not ovsdbapp: a command/backend layer,
threads and pbr on top of the IDL. Never ovs-vsctl's output: its text is for people and
changes between releases.

One `Ovsdb` is one connection; it is opened for a realize or release and closed after.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from netmap.errors import ApplyError
from netmap.plan import OVS_OWNER_KEY

VSWITCHD_LOCK = "ovs_vswitchd"  # the OVSDB lock ovs-vswitchd holds while it runs
# ovs-vswitchd took up to 40 ms a port on the userspace datapath (bench_ovs.py, removing 1000
# ports): a transaction of many changes is given that much time, with room, per change
VSWITCHD_SECONDS_PER_CHANGE = 0.1
DATABASE = "Open_vSwitch"
_NAMES_SELECTED = 64  # more port names than this are read by reading every port
# the columns netmap reads (vswitch.ovsschema, the same since OVS 2.x)
_COLUMNS = {"Bridge": ["_uuid", "name", "datapath_type", "external_ids", "ports"],
            "Port": ["_uuid", "name", "tag", "trunks", "external_ids", "interfaces"],
            "Interface": ["_uuid", "name", "type", "ofport", "error", "external_ids"]}
# what a read-back reads (PortStatus): not the external_ids maps, the most of a port's row
_STATUS = {"Bridge": ["_uuid", "name", "ports"], "Port": ["_uuid", "name", "tag", "interfaces"],
           "Interface": ["_uuid", "name", "ofport", "error"]}


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


# --- OVSDB's JSON values (RFC 7047, 5.1) -------------------------------------------------------
def _set(value: Any) -> list[Any]:
    """A set column: ["set", [...]], or its one member alone."""
    if isinstance(value, list) and value and value[0] == "set":
        return list(value[1])
    return [value]


def _one(value: Any) -> Any:
    """An optional column (a set of at most one) as its member or None."""
    members = _set(value)
    return members[0] if members else None


def _map(value: Any) -> dict[str, str]:
    return dict(value[1]) if isinstance(value, list) and value and value[0] == "map" else {}


def _uuid(value: Any) -> str:
    return str(value[1])


def _uuids(value: Any) -> list[str]:
    return [_uuid(member) for member in _set(value)]


def _map_json(pairs: Mapping[str, str]) -> list[Any]:
    return ["map", [[k, v] for k, v in sorted(pairs.items())]]


@dataclass
class _View:
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


class _Ports(Mapping[str, OvsPort]):
    """A bridge's ports by name, each converted when first looked at: deciding looks up
    only its own ports' names, not the thousand others of a host."""

    def __init__(self, bridge: str, rows: dict[str, dict[str, Any]],
                 interfaces: dict[str, dict[str, Any]]) -> None:
        self._bridge, self._rows, self._interfaces = bridge, rows, interfaces
        self._read: dict[str, OvsPort] = {}

    def _own(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        return [self._interfaces[u] for u in _uuids(row["interfaces"]) if u in self._interfaces]

    def __getitem__(self, name: str) -> OvsPort:
        port = self._read.get(name)
        if port is None:
            row = self._rows[name]
            port = self._read[name] = OvsPort(
                name, self._bridge, _one(row["tag"]), tuple(sorted(_set(row["trunks"]))),
                _map(row["external_ids"]),
                tuple(OvsInterface(i["name"], i["type"], _one(i["ofport"]), _one(i["error"]),
                                   _map(i["external_ids"])) for i in self._own(row)))
        return port

    def status(self, name: str) -> PortStatus | None:
        """The port's PortStatus, its external_ids not converted."""
        row = self._rows.get(name)
        if row is None:
            return None
        return PortStatus(_one(row["tag"]), tuple((i["name"], _one(i["ofport"]),
                                                   _one(i["error"])) for i in self._own(row)))

    def __contains__(self, name: object) -> bool:
        return name in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


class Ovsdb:
    """One connection to ovsdb-server, Open_vSwitch, Bridge, Port and Interface read at
    connection (and again after a change); refusal to connect is an ApplyError naming the
    socket."""

    def __init__(self, remote: str, timeout: float = 10.0,
                 ports: Collection[str] | None = None) -> None:
        """`ports`: read only the ports (and interfaces) of these names, not every port of
        the host (a realize reads its own, not the thousand others')."""
        import ovs.jsonrpc
        import ovs.stream
        import ovs.vlog

        from netmap.netlink.ovs_json import use_fast_parser

        use_fast_parser()
        ovs.vlog.Vlog.set_levels_from_string("console:off")  # errors reach the user as ours
        self.remote = remote
        self.timeout = timeout
        self._jsonrpc = ovs.jsonrpc
        path = remote.removeprefix("unix:")
        if remote.startswith("unix:") and not os.path.exists(path):
            raise ApplyError(f"cannot connect to OVSDB at {remote}: {path} does not exist",
                             fix="start Open vSwitch (ovsdb-server), or set ovsdb = "
                             '"unix:PATH" in the host mapping ([host]) to its socket')
        error, stream = ovs.stream.Stream.open_block(ovs.stream.Stream.open(remote),
                                                     int(timeout * 1000))
        if error:
            raise ApplyError(f"cannot connect to OVSDB at {remote}: {_strerror(error)}",
                             fix="check that ovsdb-server runs and listens there")
        self._rpc = ovs.jsonrpc.Connection(stream)
        self._replies: dict[Any, Any] = {}
        self.cur_cfg: int | None = None  # ovs-vswitchd's, once an apply monitors it
        self._monitoring = False
        self.partial = ports is not None
        self._names = sorted(ports) if ports is not None else []
        self._bridges: dict[str, OvsBridge] | None = None
        self._status: dict[str, _Ports] | None = None  # read back after a change
        self._view: _View | None = self._read()

    def all_ports(self) -> None:
        """Read every port from now on (a partial view cannot say what else a bridge
        holds)."""
        if self.partial:
            self.partial = False
            self._view, self._bridges = self._read(), None

    def close(self) -> None:
        self._rpc.close()

    # --- the protocol -------------------------------------------------------------------------
    def _send(self, method: str, params: list[Any]) -> Any:
        request = self._jsonrpc.Message.create_request(method, params)
        error = self._rpc.send(request)
        if error:
            self._lost(error, f"send {method}")
        return request.id

    def _lost(self, error: int, what: str) -> None:
        raise ApplyError(f"OVSDB at {self.remote}: connection lost while trying to {what} "
                         f"({_strerror(error)})",
                         fix="check that ovsdb-server runs; then run again")

    def _pump(self, done: Callable[[], bool], what: str, timeout: float | None = None) -> None:
        """Take messages in until `done()`: replies kept by id, cur_cfg's updates applied,
        the server's echo answered."""
        import ovs.poller

        message = self._jsonrpc.Message
        seconds = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + seconds
        while not done():
            self._rpc.run()
            error, msg = self._rpc.recv()
            if msg is not None:
                if msg.type in (message.T_REPLY, message.T_ERROR):
                    self._replies[msg.id] = msg
                elif msg.type == message.T_NOTIFY and msg.method == "update":
                    self._updated(msg.params[1])
                elif msg.type == message.T_REQUEST and msg.method == "echo":
                    self._rpc.send(message.create_reply(msg.params, msg.id))
                continue
            if error != errno.EAGAIN:
                self._lost(error, what)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApplyError(f"OVSDB at {self.remote}: could not {what} within "
                                 f"{seconds:g}s",
                                 fix="check that ovsdb-server and ovs-vswitchd run")
            poller = ovs.poller.Poller()
            self._rpc.wait(poller)
            self._rpc.recv_wait(poller)
            poller.timer_wait(int(min(left, 0.5) * 1000))
            poller.block()

    def _result(self, request: Any, what: str, timeout: float | None = None) -> Any:
        self._pump(lambda: request in self._replies, what, timeout)
        reply = self._replies.pop(request)
        if reply.type == self._jsonrpc.Message.T_ERROR:
            raise ApplyError(f"OVSDB at {self.remote} refused to {what}: {reply.error}",
                             fix="see ovsdb-server's log")
        return reply.result

    def _transact(self, ops: list[dict[str, Any]], what: str,
                  timeout: float | None = None) -> list[Any]:
        result = self._result(self._send("transact", [DATABASE, *ops]), what, timeout)
        refused = [r for r in result if isinstance(r, dict) and "error" in r]
        if refused:
            detail = "; ".join(f"{r['error']}: {r.get('details', 'no detail')}"
                               for r in refused)
            raise ApplyError(f"OVSDB at {self.remote} refused the transaction ({detail})",
                             fix="see ovsdb-server's log; another client may be changing "
                             "the same rows: run again")
        return cast(list[Any], result)

    def _updated(self, tables: dict[str, Any]) -> None:
        for row in tables.get(DATABASE, {}).values():
            new = row.get("new") or {}
            if "cur_cfg" in new:
                self.cur_cfg = new["cur_cfg"]

    # --- reading ----------------------------------------------------------------------------
    def _read(self, columns: dict[str, list[str]] = _COLUMNS) -> _View:
        """One select of the root, every bridge, and the ports and interfaces of the names
        asked for (every one without): `columns` of each."""
        # each select of a name is a scan of the table by ovsdb-server: many names are
        # read as one scan of all and kept here by name
        wanted = set(self._names) if self.partial and len(self._names) > _NAMES_SELECTED \
            else None
        names: list[list[Any]] = ([[["name", "==", name]] for name in self._names]
                                  if self.partial and wanted is None else [[]])
        ops = [{"op": "select", "table": DATABASE, "where": [], "columns": ["_uuid"]},
               {"op": "select", "table": "Bridge", "where": [], "columns": columns["Bridge"]}]
        for table in ("Port", "Interface"):
            ops += [{"op": "select", "table": table, "where": where,
                     "columns": columns[table]} for where in names]
        result = self._transact(ops, "read the database")
        roots = result[0]["rows"]
        found = [[row for row in r["rows"] if wanted is None or row["name"] in wanted]
                 for r in result[2:]]
        half = len(found) // 2
        return _View(_uuid(roots[0]["_uuid"]) if roots else None,
                     {row["name"]: row for row in result[1]["rows"]},
                     {_uuid(row["_uuid"]): row for rows in found[:half] for row in rows},
                     {_uuid(row["_uuid"]): row for rows in found[half:] for row in rows})

    def _current(self) -> _View:
        if self._view is None:  # changed since the last read
            self._view, self._bridges = self._read(), None
        return self._view

    @staticmethod
    def _ports(view: _View, bridge: dict[str, Any]) -> _Ports:
        rows = {view.ports[u]["name"]: view.ports[u] for u in _uuids(bridge["ports"])
                if u in view.ports}
        return _Ports(bridge["name"], rows, view.interfaces)

    def bridges(self) -> dict[str, OvsBridge]:
        """Every bridge with the ports read; converted once per read (a realize of N
        guests asks N times per step: decide and verify), a port's columns only when that
        port is looked at."""
        view = self._current()
        if self._bridges is None:
            self._bridges = {}
            for name, row in view.bridges.items():
                self._bridges[name] = OvsBridge(name, row["datapath_type"] or "system",
                                                self._ports(view, row),
                                                _map(row["external_ids"]))
        return self._bridges

    def port_status(self, bridge: str, port: str) -> PortStatus | None:
        """PortStatus of `port` on `bridge` (None: not a port of it); after a change, from
        a read of only what a PortStatus holds."""
        if self._view is not None:
            live = self.bridges().get(bridge)
            ports = cast(_Ports, live.ports) if live is not None else None
        else:
            if self._status is None:
                view = self._read(_STATUS)
                self._status = {name: self._ports(view, row)
                                for name, row in view.bridges.items()}
            ports = self._status.get(bridge)
        return ports.status(port) if ports is not None else None

    def vswitchd_running(self) -> bool:
        """ovs-vswitchd holds the OVSDB lock "ovs_vswitchd" while it runs: asking for it
        and finding it taken says so without changing anything (the request is withdrawn
        at once)."""
        what = "ask for ovs-vswitchd's lock"
        locked = self._result(self._send("lock", [VSWITCHD_LOCK]), what)
        self._result(self._send("unlock", [VSWITCHD_LOCK]), what)
        return not (isinstance(locked, dict) and locked.get("locked"))

    # --- changing ---------------------------------------------------------------------------
    def apply(self, changes: list[Change], *, wait_vswitchd: bool = True) -> None:
        """Make every change in one OVSDB transaction; with `wait_vswitchd`, then wait until
        ovs-vswitchd has applied it (as ovs-vsctl does without --no-wait)."""
        if not changes:
            return
        view = self._current()
        if view.root is None:
            raise ApplyError(f"OVSDB at {self.remote} has no Open_vSwitch row",
                             fix="initialize it ('ovs-vsctl init')")
        writing = _Writing(view)
        for change in changes:
            change.write(writing)
        ops = writing.operations()
        seconds = max(self.timeout, VSWITCHD_SECONDS_PER_CHANGE * len(changes))
        monitor = None
        if wait_vswitchd:
            # ovs-vswitchd raises cur_cfg to next_cfg once it has applied the database:
            # watched from before the transaction, so no update of it is missed
            if not self._monitoring:
                monitor = self._send("monitor", [DATABASE, "cur_cfg",
                                                 {DATABASE: {"columns": ["cur_cfg"]}}])
                self._monitoring = True
            ops += [{"op": "mutate", "table": DATABASE, "where": [],
                     "mutations": [["next_cfg", "+=", 1]]},
                    {"op": "select", "table": DATABASE, "where": [],
                     "columns": ["next_cfg"]}]
        try:
            result = self._transact(ops, "commit the transaction", seconds)
        finally:
            # whatever happened, the next read reads anew
            self._view, self._bridges, self._status = None, None, None
        if wait_vswitchd:
            if monitor is not None:
                self._updated(self._result(monitor, "watch ovs-vswitchd's cur_cfg"))
            target = result[-1]["rows"][0]["next_cfg"]
            self._pump(lambda: self.cur_cfg is not None and self.cur_cfg >= target,
                       "have ovs-vswitchd apply the change (is ovs-vswitchd running?)",
                       seconds)


def _strerror(error: int) -> str:
    return os.strerror(error) if error > 0 else "the server closed the connection"


class _Writing:
    """One transaction's operations as the changes add them: rows inserted (named), the
    ports each bridge gains and loses, the bridges the root gains and loses, and, for each
    existing row changed, that it still exists (a `wait`: else the whole transaction is
    refused, not half made)."""

    def __init__(self, view: _View) -> None:
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
        self.exists[("Bridge", _uuid(row["_uuid"]))] = name
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

    def write(self, txn: _Writing) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class AddBridge(Change):
    name: str
    datapath_type: str | None = None

    def write(self, txn: _Writing) -> None:
        # a bridge has its internal port of the same name, as ovs-vsctl add-br makes it
        iface = txn.insert("Interface", {"name": self.name, "type": "internal"})
        port = txn.insert("Port", {"name": self.name, "interfaces": iface})
        row: dict[str, Any] = {"name": self.name, "ports": port,
                               # release deletes only a marked one
                               "external_ids": _map_json({OVS_OWNER_KEY: "netmap"})}
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

    def write(self, txn: _Writing) -> None:
        ids = _map_json(dict(self.external_ids))
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
        txn.update("Port", _uuid(port["_uuid"]), self.name, {"tag": tag, "external_ids": ids})
        for uuid in _uuids(port["interfaces"]):
            iface = txn.view.interfaces.get(uuid)
            if iface is not None and iface["name"] == self.name:
                txn.update("Interface", uuid, self.name, {"external_ids": ids})


@dataclass(frozen=True)
class DeletePort(Change):
    """Take port `name` out of `bridge` (OVSDB then drops the Port and Interface rows)."""

    name: str
    bridge: str

    def write(self, txn: _Writing) -> None:
        port = txn.view.port(self.name)
        if port is not None and txn.bridge(self.bridge) is not None:
            txn.ports_of(self.bridge)[1].append(port["_uuid"])


@dataclass(frozen=True)
class DeleteBridge(Change):
    name: str

    def write(self, txn: _Writing) -> None:
        row = txn.view.bridges.get(self.name)
        if row is not None:
            txn.root_bridges[1].append(row["_uuid"])


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
