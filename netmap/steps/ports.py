"""The steps on a bridge's ports: a port joins the bridge, a port carries a VLAN. Pure."""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from netmap.steps.base import (
    DEFAULT_PVID,
    VLAN_PVID,
    VLAN_UNTAGGED,
    Action,
    Changes,
    Kernel,
    LiveHost,
    LiveLink,
    Step,
    Undo,
    master_name,
    refuse,
)
from netmap.steps.links import NO_VLAN_FILTERING, NO_VLAN_FILTERING_FIX, UPLINK_BUSY


@dataclass(frozen=True)
class EnslavePort(Step):
    """Make `port` (the uplink or the vxlan device) a port of `bridge`."""

    kind: ClassVar[str] = "enslave"
    port: str
    bridge: str

    @property
    def resource(self) -> str:
        return f"port:{self.port}"

    @property
    def target(self) -> str:
        return self.port

    def describe(self) -> str:
        return f"enslave {self.port} to bridge {self.bridge}"

    def describe_undo(self) -> str | None:
        return f"take {self.port} out of bridge {self.bridge}"

    def decide(self, live: LiveHost, nic: int) -> Action:
        have = live.links.get(self.port)
        host = live.host
        if have is None:
            if self.port in live.planned_names():
                return Action(nic, self, "create")
            raise refuse(f"{self.port} does not exist on {host}",
                         "check the uplink's name in the host mapping")
        bridge = live.links.get(self.bridge)
        if have.master is None:
            addresses = live.addresses().get(have.index)
            if addresses:
                # A bridge port hands every frame it receives to the bridge: the port's own
                # addresses stop answering, and with them host traffic or a vxlan underlay.
                raise refuse(f"{self.port} on {host} has addresses "
                             f"({', '.join(addresses)}); as a port of {self.bridge} it would "
                             "stop receiving for them (host traffic or a vxlan underlay on it "
                             "would break)",
                             f"move the addresses to bridge {self.bridge} yourself and "
                             f"enslave {self.port} (netmap then uses that bridge), or bind the "
                             "network to an uplink without addresses")
            return Action(nic, self, "create")
        if bridge is not None and have.master == bridge.index:
            return Action(nic, self, "unchanged")
        other = master_name(live.links, have) or "?"
        raise refuse(f"{self.port} is already a port of {other} on {host}; an "
                     f"interface has one master, so it cannot join {self.bridge}",
                     f"take {self.port} out of {other}, or name bridge = \"{other}\" in "
                     "the binding")

    def create(self, ops: Changes, undo: Undo) -> None:
        ops.enslave(self.port, self.bridge, undo=undo)

    def undo(self, kernel: Kernel, info: dict) -> None:
        kernel.set_master(self.port, None)

    def leaves_a_bridge_that_stays(self, going: set[str], made: set[str],
                                   foreign: set[str]) -> str | None:
        if self.bridge in going or self.bridge in made or self.bridge in foreign:
            return None
        return self.port  # a bridge netmap adopted: the port netmap put there comes out

    def gone_with_its_master(self, links: Mapping[str, LiveLink], going: set[str],
                             foreign: set[str]) -> str | None:
        port, bridge = links.get(self.port), links.get(self.bridge)
        if (self.bridge in foreign or port is None or bridge is None
                or port.master != bridge.index):
            return f" (no longer a port of netmap's {self.bridge})"
        if self.bridge in going:
            return ""  # leaves the bridge with it
        return None

    def still_needed(self, links: Mapping[str, LiveLink], going: set[str],
                     leaving: set[str]) -> str | None:
        if self.bridge not in going and self.port not in leaving:
            return f"bridge {self.bridge} stays"
        return None

    def explain(self, err: OSError) -> str:
        if err.errno == errno.EBUSY:
            return UPLINK_BUSY
        return super().explain(err)


@dataclass(frozen=True)
class BridgeVlan(Step):
    """A VLAN on a port of a vlan-filtering bridge: tagged on the uplink (trunk), or the
    port's only VLAN, untagged, as its PVID (an access port: the guest's tap)."""

    kind: ClassVar[str] = "bridge-vlan"
    feature: ClassVar[str | None] = "vlan_filtering"
    port: str
    vid: int
    access: bool = False

    @property
    def resource(self) -> str:
        return f"vlan:{self.port}:{self.vid}"

    @property
    def target(self) -> str:
        return self.port

    def describe(self) -> str:
        how = "untagged PVID, only VLAN (access port)" if self.access else "tagged (trunk)"
        return f"bridge VLAN {self.vid} on {self.port}: {how}"

    def describe_undo(self) -> str | None:
        return f"remove bridge VLAN {self.vid} from {self.port}"

    def decide(self, live: LiveHost, nic: int) -> Action:
        vids = live.bridge_vlans().get(self.port, {})
        flags = VLAN_PVID | VLAN_UNTAGGED
        ok = self.vid in vids and (not self.access or (vids[self.vid] & flags == flags
                                                       and set(vids) == {self.vid}))
        if self.port in live.recreated_names():  # the port made again has no VLAN yet
            ok = False
        return Action(nic, self, "unchanged" if ok else "create")

    def create(self, ops: Changes, undo: Undo) -> None:
        if not self.access:
            ops.add_bridge_vlan(self.port, self.vid, access=False, undo=undo)
            return
        # an access port carries its one VLAN only: the bridge's default VLAN, which every
        # new port gets, is dropped
        had_default = DEFAULT_PVID in ops.port_vlans(self.port)
        ops.add_bridge_vlan(self.port, self.vid, access=True, undo=undo)
        if had_default and self.vid != DEFAULT_PVID:
            ops.drop_bridge_vlan(self.port, DEFAULT_PVID)

    def undo(self, kernel: Kernel, info: dict) -> None:
        kernel.drop_bridge_vlan(self.port, self.vid)

    def explain(self, err: OSError) -> str:
        return NO_VLAN_FILTERING if err.errno == errno.EOPNOTSUPP else super().explain(err)

    def fix_for(self, err: OSError) -> str | None:
        return NO_VLAN_FILTERING_FIX if err.errno == errno.EOPNOTSUPP else None
