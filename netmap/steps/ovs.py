"""The Open vSwitch steps: a bridge in OVSDB, and a port on it (the uplink as a trunk, a
guest's tap as an access port). Pure: decide reads OVSDB through `LiveHost.ovs_bridges`,
apply hands its change to `Changes.ovs_add_bridge` / `ovs_set_port`, which netmap/netlink
gathers into one OVSDB transaction per realize (netlink/ovs_steps.py) with its rollback.

What netmap adds carries its mark in external_ids (OVS_OWNER_KEY); a port or bridge without
it is someone else's and is never changed or removed (a foreign port holding the name of a
guest's tap is refused, an existing bridge is used as it is). Release judges by that mark
too, in one OVSDB transaction (netlink/ovs_steps.release), so `undo` here does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from netmap.steps.base import Action, Changes, LiveHost, ReleasePhase, Step, refuse
from netmap.support.ovs_paths import OVS_RUNDIR, default_ovsdb  # noqa: F401 (re-exported)

OVS_OWNER_KEY = "netmap-owner"  # on every OVS port netmap adds: release takes out only these
OVS_NETWORK_KEY = "netmap-network"  # on a guest's port: the logical network (drift reads it)
UPLINK_OWNER = "uplink"  # the owner mark of an uplink's trunk port (shared by every guest)


@dataclass(frozen=True)
class EnsureOvsBridge(Step):
    """An Open vSwitch bridge in the OVSDB at `ovsdb`: used as it is when it exists (its
    datapath type is the operator's), else created with `datapath_type`."""

    kind: ClassVar[str] = "ovs-bridge"
    planned_as: ClassVar[str | None] = "ovs-bridge"
    deferred: ClassVar[bool] = True
    release_phase: ClassVar[ReleasePhase] = "ovsdb"
    name: str
    ovsdb: str
    datapath_type: str | None = None

    @property
    def resource(self) -> str:
        return f"ovs-bridge:{self.name}"

    @property
    def target(self) -> str:
        return self.name

    def describe(self) -> str:
        datapath = f", datapath {self.datapath_type}" if self.datapath_type else ""
        return f"OVS bridge {self.name}{datapath} (OVSDB {self.ovsdb})"

    def describe_undo(self) -> str | None:
        return f"delete OVS bridge {self.name}"

    def decide(self, live: LiveHost, nic: int) -> Action:
        found = live.ovs_bridges(self.ovsdb).get(self.name)
        if found is None:
            return Action(nic, self, "create")
        # an existing bridge is the operator's choice, datapath and all
        mine = found.external_ids.get(OVS_OWNER_KEY) == "netmap"
        return Action(nic, self, "unchanged" if mine else "adopt")

    def features(self, verdict: str, repair: dict | None = None) -> list[str]:
        # a new bridge of the kernel datapath ("system", OVS's default) lives in the
        # openvswitch module: without it ovs-vswitchd takes the bridge into OVSDB but can
        # use none of its ports, which realize would learn only after the change
        if verdict == "create" and self.datapath_type in (None, "system"):
            return ["openvswitch"]
        return []

    def apply(self, ops: Changes, action: Action) -> None:
        if action.verdict == "create":
            ops.ovs_add_bridge(self.ovsdb, self.name, self.datapath_type)


@dataclass(frozen=True)
class EnsureOvsPort(Step):
    """`port` on OVS bridge `bridge`: the uplink as a trunk (no tag: every VLAN), or the
    guest's tap as an access port (`tag`) with the external_ids an SDN finds it by."""

    kind: ClassVar[str] = "ovs-port"
    deferred: ClassVar[bool] = True
    release_phase: ClassVar[ReleasePhase] = "ovsdb"
    port: str
    bridge: str
    ovsdb: str
    tag: int | None = None
    external_ids: tuple[tuple[str, str], ...] = ()

    @property
    def resource(self) -> str:
        return f"ovs-port:{self.port}"

    @property
    def target(self) -> str:
        return self.port

    def describe(self) -> str:
        how = f"access port, tag {self.tag}" if self.tag is not None else "trunk, every VLAN"
        ids = ", " + ", ".join(f"{k}={v}" for k, v in self.external_ids) \
            if self.external_ids else ""
        return f"OVS port {self.port} on {self.bridge} ({how}{ids})"

    def describe_undo(self) -> str | None:
        return f"take port {self.port} out of OVS bridge {self.bridge}"

    @property
    def uplink(self) -> bool:
        return dict(self.external_ids).get(OVS_OWNER_KEY) == UPLINK_OWNER

    def decide(self, live: LiveHost, nic: int) -> Action:
        host, guest = live.host, live.guest
        bridges = live.ovs_bridges(self.ovsdb)
        where = next((b for b in bridges.values() if self.port in b.ports), None)
        if where is None:
            if self.bridge not in bridges and self.bridge not in live.ovs_bridges_planned():
                raise refuse(f"OVS bridge {self.bridge} vanished on {host}", "realize again")
            return Action(nic, self, "create")
        have = where.ports[self.port]
        owner = have.external_ids.get(OVS_OWNER_KEY)
        if where.name != self.bridge:
            raise refuse(f"{self.port} is a port of OVS bridge {where.name} on {host}, not of "
                         f"{self.bridge}; a port is on one bridge",
                         f"take it out ('ovs-vsctl del-port {where.name} {self.port}') if it "
                         f"is stale, or name bridge = \"{where.name}\" in the binding")
        if self.uplink:
            # the uplink's port, netmap's or the operator's: a trunk of every VLAN
            if have.tag is not None:
                raise refuse(f"uplink {self.port} is an access port of {self.bridge} (tag "
                             f"{have.tag}) on {host}: it would carry one VLAN only",
                             f"make it a trunk ('ovs-vsctl remove port {self.port} tag "
                             f"{have.tag}')")
            return Action(nic, self, "unchanged" if owner == UPLINK_OWNER else "adopt")
        if owner != guest:
            raise refuse(f"OVS port {self.port} exists on {self.bridge} ({host}) but netmap "
                         f"did not add it for {guest}"
                         + (f" (it is {owner}'s)" if owner else " (a foreign port holds the "
                            "endpoint's name)"),
                         f"remove it if it is stale ('ovs-vsctl del-port {self.bridge} "
                         f"{self.port}')")
        want = {"tag": self.tag, "external_ids": dict(self.external_ids),
                "interface_ids": dict(self.external_ids)}
        current = {"tag": have.tag, "external_ids": dict(have.external_ids),
                   "interface_ids": dict(have.interface_ids)}
        if want == current:
            return Action(nic, self, "unchanged")
        return Action(nic, self, "repair", want, current)

    def apply(self, ops: Changes, action: Action) -> None:
        if action.verdict not in ("create", "repair"):
            return
        before = None
        if action.verdict == "repair":  # back to the tag and external_ids it had
            old = action.undo_repair or {}
            before = (old.get("tag"), tuple(sorted(old.get("external_ids", {}).items())))
        ops.ovs_set_port(self.ovsdb, self.port, self.bridge, self.tag, self.external_ids,
                         before=before)


OVS_STEPS = (EnsureOvsBridge, EnsureOvsPort)
