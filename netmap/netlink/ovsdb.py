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
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, cast

from netmap.errors import ApplyError
from netmap.netlink.ovsdb_changes import (  # noqa: F401 (re-exported: the changes)
    DATABASE,
    AddBridge,
    Change,
    DeleteBridge,
    DeletePort,
    SetPort,
    Writing,
)
from netmap.netlink.ovsdb_rows import (  # noqa: F401 (re-exported: what netmap reads)
    OvsBridge,
    OvsInterface,
    OvsPort,
    Ports,
    PortStatus,
    View,
    as_map,
    uuid_of,
    uuids,
)

VSWITCHD_LOCK = "ovs_vswitchd"  # the OVSDB lock ovs-vswitchd holds while it runs
# ovs-vswitchd applies a large transaction port by port (slowest on the userspace datapath):
# the wait for it grows with the changes, with room over what bench_ovs.py sees
VSWITCHD_SECONDS_PER_CHANGE = 0.1
_NAMES_SELECTED = 64  # more port names than this are read by reading every port
# the columns netmap reads (vswitch.ovsschema, the same since OVS 2.x)
_COLUMNS = {"Bridge": ["_uuid", "name", "datapath_type", "external_ids", "ports"],
            "Port": ["_uuid", "name", "tag", "trunks", "external_ids", "interfaces"],
            "Interface": ["_uuid", "name", "type", "ofport", "error", "external_ids"]}
# what a read-back reads (PortStatus): not the external_ids maps, the most of a port's row
_STATUS = {"Bridge": ["_uuid", "name", "ports"], "Port": ["_uuid", "name", "tag", "interfaces"],
           "Interface": ["_uuid", "name", "ofport", "error"]}


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
        self._status: dict[str, Ports] | None = None  # read back after a change
        self._view: View | None = self._read()

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
    def _read(self, columns: dict[str, list[str]] = _COLUMNS) -> View:
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
        return View(uuid_of(roots[0]["_uuid"]) if roots else None,
                     {row["name"]: row for row in result[1]["rows"]},
                     {uuid_of(row["_uuid"]): row for rows in found[:half] for row in rows},
                     {uuid_of(row["_uuid"]): row for rows in found[half:] for row in rows})

    def _current(self) -> View:
        if self._view is None:  # changed since the last read
            self._view, self._bridges = self._read(), None
        return self._view

    @staticmethod
    def _ports(view: View, bridge: dict[str, Any]) -> Ports:
        rows = {view.ports[u]["name"]: view.ports[u] for u in uuids(bridge["ports"])
                if u in view.ports}
        return Ports(bridge["name"], rows, view.interfaces)

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
                                                as_map(row["external_ids"]))
        return self._bridges

    def port_status(self, bridge: str, port: str) -> PortStatus | None:
        """PortStatus of `port` on `bridge` (None: not a port of it); after a change, from
        a read of only what a PortStatus holds."""
        if self._view is not None:
            live = self.bridges().get(bridge)
            ports = cast(Ports, live.ports) if live is not None else None
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
        writing = Writing(view)
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
