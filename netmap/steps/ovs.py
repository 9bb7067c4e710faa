"""The Open vSwitch steps: a bridge in OVSDB, and a port on it (the uplink as a trunk, a
guest's tap as an access port). Pure: decide reads OVSDB through `LiveHost.ovs_bridges`,
apply hands its change to `Changes.ovs_add_bridge` / `ovs_set_port`, which netmap/netlink
gathers into one OVSDB transaction per realize (netlink/ovs_steps.py) with its rollback.

What netmap adds carries its mark in external_ids (OVS_OWNER_KEY); a port or bridge without
it is someone else's and is never changed or removed (a foreign port holding the name of a
guest's tap is refused, an existing bridge is used as it is). Release judges by that mark
too: each step decides its part (`release_ovsdb`) in the one OVSDB transaction that
netlink/ovs_steps.release sends, so `undo` here does nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, TypeGuard

from netmap.steps.base import (
    Action,
    Changes,
    LiveHost,
    OvsBridgeView,
    ReleasePhase,
    Step,
    refuse,
)
from netmap.support.ovs_paths import OVS_RUNDIR, default_ovsdb  # noqa: F401 (re-exported)

OVS_OWNER_KEY = "netmap-owner"  # on every OVS port netmap adds: release takes out only these
OVS_NETWORK_KEY = "netmap-network"  # on a guest's port: the logical network (drift reads it)
UPLINK_OWNER = "uplink"  # the owner mark of an uplink's trunk port (shared by every guest)


# An OVS step's part in release's OVSDB transaction: "delete" (its removal is in it), "gone"
# (nothing of it is left to remove) or "keep" (and why)
Released = tuple[Literal["delete", "gone", "keep"], str]


class OvsRelease(Protocol):
    """Release's one OVSDB transaction per database (netlink/ovs_steps.release), as each OVS
    step decides its part in it, in `release_order`."""

    @property
    def bridges(self) -> Mapping[str, OvsBridgeView]: ...  # as OVSDB holds them now
    @property
    def going(self) -> set[str]: ...  # the links release deletes
    @property
    def leaving(self) -> set[str]: ...  # the OVS ports release takes out
    @property
    def staying(self) -> set[str]:
        """netmap's bridges that stay for ports netmap did not add (a bridge adds itself)."""
    def delete_bridge(self, name: str) -> None: ...
    def delete_port(self, port: str, bridge: str) -> None: ...


class OvsStep(Step):
    """What realize and release ask of a step that changes OVSDB: its database, the port it
    adds, and its part in release's one OVSDB transaction (where `undo` does nothing)."""

    deferred: ClassVar[bool] = True
    release_phase: ClassVar[ReleasePhase] = "ovsdb"
    release_order: ClassVar[int] = 0  # release decides the OVS steps in this order
    reads_every_port: ClassVar[bool] = False  # its release reads someone else's ports too
    ovsdb: str  # the database (a field of each kind)

    @property
    def ovs_port(self) -> str | None:
        """The OVS port this step adds (None: none): OVSDB is read for netmap's ports only."""
        return None

    def release_ovsdb(self, ovs: OvsRelease) -> Released:
        raise NotImplementedError


def changes_ovsdb(step: Step) -> TypeGuard[OvsStep]:
    """Whether `step` is undone in release's OVSDB transaction, as its release phase says:
    the phase of the OVS steps alone (tests/test_step_dispatch.py holds them together)."""
    return step.release_phase == "ovsdb"


@dataclass(frozen=True)
class EnsureOvsBridge(OvsStep):
    """An Open vSwitch bridge in the OVSDB at `ovsdb`: used as it is when it exists (its
    datapath type is the operator's), else created with `datapath_type`."""

    kind: ClassVar[str] = "ovs-bridge"
    planned_as: ClassVar[str | None] = "ovs-bridge"
    # decided before its ports: whether it stays (for someone else's ports) keeps its uplink
    release_order: ClassVar[int] = 0
    reads_every_port: ClassVar[bool] = True  # whether it holds ports netmap did not add
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

    def release_ovsdb(self, ovs: OvsRelease) -> Released:
        live = ovs.bridges.get(self.name)
        if live is None:
            return "gone", ""
        others = sorted(n for n in live.ports if n != self.name
                        and n not in ovs.leaving and n not in ovs.going)
        if others:
            ovs.staying.add(self.name)
            return "keep", f"OVS bridge still has ports netmap did not add: {', '.join(others)}"
        if live.external_ids.get(OVS_OWNER_KEY) != "netmap":
            return "keep", "not netmap's bridge any more, left alone"
        ovs.delete_bridge(self.name)
        return "delete", ""


@dataclass(frozen=True)
class EnsureOvsPort(OvsStep):
    """`port` on OVS bridge `bridge`: the uplink as a trunk (no tag: every VLAN), or the
    guest's tap as an access port (`tag`) with the external_ids an SDN finds it by."""

    kind: ClassVar[str] = "ovs-port"
    release_order: ClassVar[int] = 1  # after the bridges: an uplink stays with its bridge
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
    def ovs_port(self) -> str | None:
        return self.port

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

    def release_ovsdb(self, ovs: OvsRelease) -> Released:
        live = ovs.bridges.get(self.bridge)
        port = live.ports.get(self.port) if live else None
        if port is None:
            return "gone", ""
        if OVS_OWNER_KEY not in port.external_ids:
            return "keep", "now someone else's port (no netmap mark), left alone"
        if self.uplink and self.bridge in ovs.staying:
            # the ports that keep the bridge need its uplink: both go together, at a later
            # release, once those ports are gone
            return "keep", f"the uplink of OVS bridge {self.bridge}, which stays"
        ovs.delete_port(self.port, self.bridge)
        return "delete", ""


OVS_STEPS = (EnsureOvsBridge, EnsureOvsPort)
