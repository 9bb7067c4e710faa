"""The steps that create a link (bridge, 802.1Q, vxlan, tap, macvtap), and the uplink the
host must already have. Pure: see base.py for the host views they are given.

A link step's verdict: ``create`` (absent), ``unchanged`` (present and as planned),
``repair`` (netmap's own object that drifted: MTU, master, mode, MAC, link state),
``recreate`` (netmap's own tap in the other queue mode, which no guest holds: deleted and
made again), ``adopt`` (a shared object someone else made that is exactly what the plan
needs: used, never deleted), or a refusal that says why and how to fix it.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from netmap.steps.base import (
    BRIDGE_AGEING,
    VLAN_PVID,
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


@dataclass(frozen=True)
class RequireLink(Step):
    """An interface the host must already have (an uplink): up, or brought up."""

    kind: ClassVar[str] = "require-link"
    name: str
    mtu: int = 0  # the MTU the endpoints need through it (vxlan: plus its overhead)

    @property
    def resource(self) -> str:
        return f"up:{self.name}"

    @property
    def target(self) -> str:
        return self.name

    def describe(self) -> str:
        need = f" with MTU >= {self.mtu}" if self.mtu else ""
        return f"uplink {self.name} must exist{need}; bring it up if it is down"

    def describe_undo(self) -> str | None:
        return f"set {self.name} down again"

    def decide(self, live: LiveHost, nic: int) -> Action:
        have = live.links.get(self.name)
        if have is None:
            raise refuse(f"uplink {self.name} does not exist on {live.host}",
                         "check the NIC and its driver, or fix [uplinks] in the host "
                         "mapping")
        if have.mtu < self.mtu:  # else the kernel only says EINVAL, or drops big frames
            raise refuse(f"uplink {self.name} on {live.host} has MTU {have.mtu}; the guest's "
                         f"endpoints need {self.mtu} through it",
                         f"raise it ('ip link set {self.name} mtu {self.mtu}') or correct "
                         f"[uplinks.{self.name}] mtu in the host mapping, which says more "
                         "than the NIC has")
        return Action(nic, self, "unchanged" if have.up else "repair", {"up": True},
                      {"up": False})

    def makes(self, verdict: str) -> bool:
        return verdict in ("create", "repair")  # brought up by netmap: down again at release

    def undo(self, kernel: Kernel, info: dict) -> None:
        kernel.set_up(self.name, False)

    def still_needed(self, links: Mapping[str, LiveLink], going: set[str],
                     leaving: set[str]) -> str | None:
        uplink = links.get(self.name)
        if uplink is None:
            return None
        users = sorted(link.name for link in links.values() if link.name not in going and (
            link.lower == uplink.index or link.vxlan_link == uplink.index))
        master = master_name(links, uplink)
        if master and master not in going and uplink.name not in leaving:
            users.append(f"bridge {master}")
        return f"still carries {', '.join(users)}" if users else None


@dataclass(frozen=True)
class LinkStep(Step):
    """A step that creates the link `name`; deleting that link undoes it."""

    link_kind: ClassVar[str] = ""  # the kernel's kind of the link ("bridge", "tun", ...)
    name: str

    @property
    def resource(self) -> str:
        return f"link:{self.name}"

    @property
    def target(self) -> str:
        return self.name

    def describe_undo(self) -> str | None:
        return f"delete {self.link_kind} {self.name}"

    def undo(self, kernel: Kernel, info: dict) -> None:
        kernel.delete_link(self.name)

    def decide(self, live: LiveHost, nic: int) -> Action:
        name, host = self.name, live.host
        have = live.links.get(name)
        if have is None:
            return Action(nic, self, "create")
        want_kind = self.link_kind
        made = live.state.made_ifindex(self.resource)
        if made is not None and have.index != made:
            users = ", ".join(live.state.users(self.resource)) or "no guest"
            raise refuse(f"{name} on {host} is not the {want_kind} netmap made (ifindex "
                         f"{made}, for {users}): that one is gone and a {have.kind or 'plain'} "
                         f"device someone else made (ifindex {have.index}) now has its name",
                         f"if that device is stale, delete it ('ip link del {name}') and "
                         f"realize again; if it must stay, release {users} on {host} first "
                         f"(netmap then forgets its own {name} and leaves this one alone) and "
                         "rename the endpoint or the bridge in the mapping")
        mine = live.ours(name)
        if have.kind != want_kind:
            if mine:  # netmap made it for another mode: the binding changed since
                users = ", ".join(live.state.users(self.resource))
                raise refuse(f"{name} on {host} is the {have.kind} netmap made for {users}, "
                             f"but the plan now needs a {want_kind} (the binding's mode "
                             "changed)",
                             f"release {users} on {host} first ('netmap release'), then "
                             "realize")
            raise refuse(f"{name} exists on {host} as a {have.kind or 'plain'} device, "
                         f"not the {want_kind} netmap would create",
                         f"remove or rename {name}, or choose another name in the mapping")
        if self.batched and not mine:
            raise refuse(f"{name} exists on {host} but netmap did not make it (a foreign "
                         "device holds the endpoint's name)",
                         f"remove {name} if it is stale ('ip link del {name}')")
        return self._compare(live, nic, have, mine)

    def wanted(self, live: LiveHost, have: LiveLink, mine: bool,
               others: list[str]) -> tuple[dict[str, object], list[str]]:
        """What must hold of the live link (repairable in place), and what differs that
        cannot be changed in place."""
        return {"up": True}, []

    def _compare(self, live: LiveHost, nic: int, have: LiveLink, mine: bool) -> Action:
        """Same kind: what differs, repairable on netmap's own devices, else refused."""
        others = [g for g in live.state.users(self.resource) if g != live.guest]
        want, identity = self.wanted(live, have, mine, others)
        name = self.name
        if identity:
            raise refuse(f"{name} exists on {live.host}"
                         f"{'' if mine else ', not made by netmap,'} but differs in what "
                         f"cannot be changed in place: {'; '.join(identity)}",
                         f"release the guest that uses {name} (or delete it) and realize "
                         "again" if mine else
                         f"delete {name} if nothing uses it ('ip link del {name}'), or make "
                         "the binding in the host mapping say what it is")
        current = {"up": have.up, "mtu": have.mtu, "mac": have.address,
                   "master": master_name(live.links, have), "mode": have.macvlan_mode,
                   "vlan_filtering": have.vlan_filtering, "ageing": have.ageing}
        diff = {k: v for k, v in want.items() if current.get(k) != v}
        if not diff:
            return Action(nic, self, "unchanged" if mine else "adopt")
        if not mine:  # someone else's: used as it is, never changed (release could not undo)
            changes = ", ".join(f"{k} {_shown(k, current.get(k))} (want {_shown(k, v)})"
                                for k, v in diff.items())
            raise refuse(f"{name} on {live.host} is not netmap's and differs: {changes}",
                         f"make {name} match, or let netmap create its own bridge (set "
                         "bridge = \"...\" in the binding)")
        return Action(nic, self, "repair", diff, {k: current.get(k) for k in diff})


def _shown(key: str, value: object) -> str:
    if key == "ageing" and isinstance(value, int):  # clock_t, 1/100 s
        return f"{value / 100:g}s"
    return str(value)


def _unsupported(err: OSError) -> bool:
    return err.errno == errno.EOPNOTSUPP


NO_VLAN_FILTERING = ("this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING, "
                     "which needs 802.1Q), so a bridge cannot carry the network's VLAN")
NO_VLAN_FILTERING_FIX = ("use a kernel with 802.1Q and bridge VLAN filtering, or an untagged "
                         "network")


@dataclass(frozen=True)
class EnsureBridge(LinkStep):
    kind: ClassVar[str] = "bridge"
    link_kind: ClassVar[str] = "bridge"
    feature: ClassVar[str | None] = "bridge"
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
        return NO_VLAN_FILTERING if _unsupported(err) else super().explain(err)

    def fix_for(self, err: OSError) -> str | None:
        return NO_VLAN_FILTERING_FIX if _unsupported(err) else None


@dataclass(frozen=True)
class EnsureVlanLink(LinkStep):
    """An 802.1Q sub-interface, the lower device of a macvtap on a VLAN."""

    kind: ClassVar[str] = "vlan-link"
    link_kind: ClassVar[str] = "vlan"
    feature: ClassVar[str | None] = "vlan"
    lower: str
    vid: int
    mtu: int

    def describe(self) -> str:
        return f"802.1Q {self.name} on {self.lower} (VLAN {self.vid}, mtu {self.mtu}), up"

    def wanted(self, live: LiveHost, have: LiveLink, mine: bool,
               others: list[str]) -> tuple[dict[str, object], list[str]]:
        lower = live.links.get(self.lower)
        same = have.vlan_id == self.vid and lower is not None and have.lower == lower.index
        return {"up": True, "mtu": self.mtu}, (
            [] if same else [f"VLAN {have.vlan_id} on ifindex {have.lower}"])

    def create(self, ops: Changes, undo: Undo) -> None:
        ops.new_link(self.name, "vlan", mtu=self.mtu, lower=self.lower,
                     options={"vid": self.vid}, undo=undo)
        ops.bring_up(self.name)

    def explain(self, err: OSError) -> str:
        if _unsupported(err):
            return ("this kernel has no 802.1Q VLAN support (module 8021q), so the "
                    f"sub-interface {self.name} cannot exist")
        return super().explain(err)

    def fix_for(self, err: OSError) -> str | None:
        if _unsupported(err):
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


def _queue_mode(multi_queue: bool) -> str:
    return "multi-queue" if multi_queue else "single-queue"


@dataclass(frozen=True)
class CreateTap(LinkStep):
    """The guest's tap, persistent, IFF_TAP|IFF_NO_PI|IFF_VNET_HDR as QEMU opens it, and
    IFF_MULTI_QUEUE for a NIC with several queues: QEMU and libvirt open a tap with that
    flag exactly when they want more than one queue, and the kernel refuses (EINVAL) a
    tap whose flag differs, so the flag follows the NIC's queues both ways."""

    kind: ClassVar[str] = "tap"
    link_kind: ClassVar[str] = "tun"
    batched: ClassVar[bool] = True
    feature: ClassVar[str | None] = "tun"
    mac: str  # the host side's MAC (see host_side_mac)
    guest_mac: str
    mtu: int
    bridge: str
    multi_queue: bool = False

    def describe(self) -> str:
        queues = ", multi-queue" if self.multi_queue else ""
        return (f"tap {self.name} for {self.guest_mac} (host side {self.mac}, mtu {self.mtu}"
                f"{queues}) in bridge {self.bridge}, up")

    def _compare(self, live: LiveHost, nic: int, have: LiveLink, mine: bool) -> Action:
        if have.multi_queue is not None and have.multi_queue != self.multi_queue:
            return self._requeue(live, nic, have)
        return super()._compare(live, nic, have, mine)

    def wanted(self, live: LiveHost, have: LiveLink, mine: bool,
               others: list[str]) -> tuple[dict[str, object], list[str]]:
        return {"up": True, "mtu": self.mtu, "mac": self.mac, "master": self.bridge}, []

    def _requeue(self, live: LiveHost, nic: int, have: LiveLink) -> Action:
        """netmap's tap in the other queue mode: the kernel fixes IFF_MULTI_QUEUE when a tap
        is made, and QEMU and libvirt cannot open a tap whose mode differs from the queues
        they want (EINVAL). Made again, but only while no guest holds it: deleting it would
        cut a running guest off its network. A tap with a queue open has carrier, a
        multi-queue one also counts its queues."""
        users = ", ".join(live.state.users(self.resource)) or live.guest
        if have.carrier or have.tun_queues:
            held = f"{have.tun_queues} queue(s) open" if have.tun_queues else "carrier on"
            raise refuse(f"tap {self.name} on {live.host} is "
                         f"{_queue_mode(bool(have.multi_queue))}, but NIC {nic} of "
                         f"{live.guest} now asks for {live.queues(nic)} queue(s), which needs "
                         f"a {_queue_mode(self.multi_queue)} tap; a tap's queue mode is fixed "
                         f"when it is made, and a guest holds this one ({held})",
                         f"shut {users} down (or detach the NIC) and realize again, which "
                         "makes the tap anew; or keep the NIC's queues as the running guest "
                         "has them until then")
        master = master_name(live.links, have)
        return Action(nic, self, "recreate", undo_repair={
            "multi_queue": bool(have.multi_queue), "mtu": have.mtu, "mac": have.address,
            "master": master, "up": have.up,
            "vlans": dict(live.bridge_vlans().get(self.name, {})) if master else {}})

    def create(self, ops: Changes, undo: Undo) -> None:
        ops.new_tap(self.name, multi_queue=self.multi_queue, mtu=self.mtu, mac=self.mac,
                    master=self.bridge, undo=undo)

    def apply(self, ops: Changes, action: Action) -> None:
        if action.verdict != "recreate":
            super().apply(ops, action)
            return
        # Deleted (no guest holds it: _requeue) and made in the queue mode the plan needs;
        # undone by making it once more as it was.
        old = action.undo_repair or {}
        ops.will_undo((f"make {self.name} again as it was",
                       lambda: self._make_again(ops, old)))
        ops.delete_link(self.name)
        self.create(ops, (f"delete tun {self.name}", lambda: ops.delete_link(self.name)))

    def _make_again(self, kernel: Kernel, old: dict) -> None:
        """The undo of a recreate: the tap as it was (queue mode, MTU, MAC, bridge, VLANs,
        link state). It is a new device, so state learns its ifindex."""
        name = self.name
        kernel.delete_link(name)
        kernel.make_tap(name, multi_queue=bool(old.get("multi_queue")), up=bool(old.get("up")),
                        mtu=old.get("mtu"), mac=old.get("mac"), master=old.get("master"))
        vlans: dict[int, int] = old.get("vlans") or {}
        if old.get("master") and vlans:  # the port's VLANs, not the default one it got
            for vid, flags in vlans.items():
                kernel.add_port_vlan(name, vid, access=bool(flags & VLAN_PVID))
            for vid in set(kernel.port_vlans(name)) - set(vlans):
                kernel.drop_bridge_vlan(name, vid)
        kernel.remade(name)


@dataclass(frozen=True)
class CreateMacvtap(LinkStep):
    kind: ClassVar[str] = "macvtap"
    link_kind: ClassVar[str] = "macvtap"
    batched: ClassVar[bool] = True
    feature: ClassVar[str | None] = "macvtap"
    lower: str
    mode: str  # bridge | vepa | private | passthru (the kernel's names)
    mac: str
    mtu: int

    def describe(self) -> str:
        return f"macvtap {self.name} on {self.lower}, mode {self.mode}, {self.mac}, " \
               f"mtu {self.mtu}, up"

    def wanted(self, live: LiveHost, have: LiveLink, mine: bool,
               others: list[str]) -> tuple[dict[str, object], list[str]]:
        lower = live.links.get(self.lower)
        moved = lower is None or have.lower != lower.index
        return {"up": True, "mtu": self.mtu, "mac": self.mac, "mode": self.mode}, (
            [f"it sits on ifindex {have.lower}, not on {self.lower}"] if moved else [])

    def create(self, ops: Changes, undo: Undo) -> None:
        ops.new_macvtap(self.name, lower=self.lower, mode=self.mode, mac=self.mac,
                        mtu=self.mtu, undo=undo)

    def explain(self, err: OSError) -> str:
        if err.errno == errno.EBUSY:
            return UPLINK_BUSY
        return super().explain(err)


UPLINK_BUSY = ("the uplink is busy: a bridge port and a macvtap lower device exclude each "
               "other (one rx_handler per interface)")
