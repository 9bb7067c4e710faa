"""The links several guests share: a bridge, an 802.1Q sub-interface, a vxlan device. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from netmap.steps.base import BRIDGE_AGEING, Changes, LiveHost, LiveLink, Undo, refuse
from netmap.steps.links import NO_VLAN_FILTERING, NO_VLAN_FILTERING_FIX, LinkStep, unsupported


@dataclass(frozen=True)
class EnsureBridge(LinkStep):
    kind: ClassVar[str] = "bridge"
    link_kind: ClassVar[str] = "bridge"
    feature: ClassVar[str | None] = "bridge"
    # what a guest needs of a bridge others share; the rest of a repair (up, FDB ageing) is
    # netmap's own setting of the bridge, for every guest
    restored: ClassVar[tuple[str, ...]] = ("mtu", "vlan_filtering")
    mtu: int
    vlan_filtering: bool = False
    ageing: int = BRIDGE_AGEING

    def describe(self) -> str:
        extra = ", vlan_filtering" if self.vlan_filtering else ""
        return (f"bridge {self.name} (mtu {self.mtu}, ageing {self.ageing // 100}s{extra}), "
                "up")

    def wanted(self, live: LiveHost, have: LiveLink, mine: bool,
               others: list[str]) -> tuple[dict[str, object], list[str]]:
        want: dict[str, object] = {"up": True}
        # A bridge forwards a frame if its egress port's MTU allows (the taps', the
        # uplink's), never by its own, which only its own addresses use (netmap's have
        # none): a bridge other guests share keeps its MTU, so that realizing one guest
        # with a larger MTU (--force past MTU_TOO_SMALL) leaves nothing that its release
        # would have to put back.
        if not others:
            want["mtu"] = self.mtu
        if have.ageing is not None:  # how long a moved guest's MAC keeps pointing away
            want["ageing"] = self.ageing
        if self.vlan_filtering and not have.vlan_filtering:
            want["vlan_filtering"] = True
        return want, []

    def needs_changed(self, attr: str, old: object) -> bool:
        if attr == "vlan_filtering":
            return self.vlan_filtering and not old
        return attr == "mtu" and _larger(self.mtu, old)

    def features(self, verdict: str, repair: dict | None = None) -> list[str]:
        needed = super().features(verdict, repair)
        if self.vlan_filtering and (verdict == "create" or (repair or {}).get(
                "vlan_filtering")):
            needed.append("vlan_filtering")
        return needed

    def create(self, ops: Changes, undo: Undo) -> None:
        ops.new_link(self.name, "bridge", mtu=self.mtu, options={
            "ageing": self.ageing, "vlan_filtering": self.vlan_filtering}, undo=undo)
        ops.bring_up(self.name)

    def still_needed(self, links: Mapping[str, LiveLink], going: set[str],
                     leaving: set[str]) -> str | None:
        bridge = links.get(self.name)
        if bridge is None:
            return None
        others = sorted(link.name for link in links.values()
                        if link.master == bridge.index and link.name not in going)
        if others:
            return f"bridge still has ports netmap did not make: {', '.join(others)}"
        return None

    def explain(self, err: OSError) -> str:
        return NO_VLAN_FILTERING if unsupported(err) else super().explain(err)

    def fix_for(self, err: OSError) -> str | None:
        return NO_VLAN_FILTERING_FIX if unsupported(err) else None


@dataclass(frozen=True)
class EnsureVlanLink(LinkStep):
    """An 802.1Q sub-interface, the lower device of a macvtap on a VLAN."""

    kind: ClassVar[str] = "vlan-link"
    link_kind: ClassVar[str] = "vlan"
    feature: ClassVar[str | None] = "vlan"
    # raised for a guest whose macvtap needs more (see wanted): lowered again at its release
    restored: ClassVar[tuple[str, ...]] = ("mtu",)
    lower: str
    vid: int
    mtu: int

    def describe(self) -> str:
        return f"802.1Q {self.name} on {self.lower} (VLAN {self.vid}, mtu {self.mtu}), up"

    def wanted(self, live: LiveHost, have: LiveLink, mine: bool,
               others: list[str]) -> tuple[dict[str, object], list[str]]:
        lower = live.links.get(self.lower)
        same = have.vlan_id == self.vid and lower is not None and have.lower == lower.index
        # raised for a guest that needs more (a macvlan is never larger than its lower
        # device), never lowered below what the other guests' macvtaps on it carry
        mtu = max(self.mtu, have.mtu) if others else self.mtu
        return {"up": True, "mtu": mtu}, (
            [] if same else [f"VLAN {have.vlan_id} on ifindex {have.lower}"])

    def needs_changed(self, attr: str, old: object) -> bool:
        return attr == "mtu" and _larger(self.mtu, old)

    def create(self, ops: Changes, undo: Undo) -> None:
        ops.new_link(self.name, "vlan", mtu=self.mtu, lower=self.lower,
                     options={"vid": self.vid}, undo=undo)
        ops.bring_up(self.name)

    def explain(self, err: OSError) -> str:
        if unsupported(err):
            return ("this kernel has no 802.1Q VLAN support (module 8021q), so the "
                    f"sub-interface {self.name} cannot exist")
        return super().explain(err)

    def fix_for(self, err: OSError) -> str | None:
        if unsupported(err):
            return ("load the 8021q module ('modprobe 8021q'); a kernel built without "
                    "CONFIG_VLAN_8021Q cannot carry a VLAN network in any mode (bridge VLAN "
                    "filtering needs it too)")
        return None


@dataclass(frozen=True)
class EnsureVxlan(LinkStep):
    kind: ClassVar[str] = "vxlan"
    link_kind: ClassVar[str] = "vxlan"
    feature: ClassVar[str | None] = "vxlan"
    vni: int
    underlay: str
    mtu: int
    port: int = 4789
    group: str | None = None
    remotes: tuple[str, ...] = ()
    local: str | None = None

    def describe(self) -> str:
        where = (f"group {self.group}" if self.group
                 else f"remotes {', '.join(self.remotes)}" if self.remotes else "no peers")
        return (f"vxlan {self.name} VNI {self.vni} on {self.underlay} port {self.port}, "
                f"{where} (mtu {self.mtu}), up")

    def wanted(self, live: LiveHost, have: LiveLink, mine: bool,
               others: list[str]) -> tuple[dict[str, object], list[str]]:
        if others and mine and have.mtu != self.mtu:
            # the vxlan device is the bridge's egress port to the overlay: its MTU bounds
            # every guest's frames, and changing it would change the other guests' link
            raise refuse(f"{self.name} on {live.host} carries MTU {have.mtu} for "
                         f"{', '.join(others)}; {live.guest} needs {self.mtu} through "
                         "it, and netmap does not change a device other guests use",
                         f"give every guest of VNI {self.vni} the same MTU (mtu in the guest "
                         f"files), or release {', '.join(others)} on {live.host} first")
        return {"up": True, "mtu": self.mtu}, live.vxlan_differences(self, have)

    def create(self, ops: Changes, undo: Undo) -> None:
        ops.new_link(self.name, "vxlan", mtu=self.mtu, options={
            "vni": self.vni, "underlay": self.underlay, "port": self.port,
            "group": self.group, "local": self.local, "remotes": self.remotes}, undo=undo)
        ops.bring_up(self.name)
        if self.remotes:  # unicast peers: head-end replication FDB entries
            ops.add_vxlan_remotes(self.name, self.remotes)


def _larger(mtu: int, old: object) -> bool:
    """Whether `mtu` needs more than the MTU `old` the device had."""
    return isinstance(old, int) and mtu > old
