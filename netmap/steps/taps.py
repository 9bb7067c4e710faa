"""Each guest NIC's own link: a tap in a bridge, or a macvtap on the uplink. Pure.

Both are created in one pipelined batch with their like (``batched``), and a foreign device
that holds an endpoint's name is refused rather than adopted.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import ClassVar

from netmap.steps.base import (
    VLAN_PVID,
    Action,
    Changes,
    Kernel,
    LiveHost,
    LiveLink,
    Undo,
    master_name,
    refuse,
)
from netmap.steps.links import UPLINK_BUSY, LinkStep


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
    bridge: str  # "": an OVS port, which OVSDB adds (no kernel master)
    multi_queue: bool = False

    def describe(self) -> str:
        queues = ", multi-queue" if self.multi_queue else ""
        where = f" in bridge {self.bridge}" if self.bridge else ""
        return (f"tap {self.name} for {self.guest_mac} (host side {self.mac}, mtu {self.mtu}"
                f"{queues}){where}, up")

    def _compare(self, live: LiveHost, nic: int, have: LiveLink, mine: bool) -> Action:
        if have.multi_queue is not None and have.multi_queue != self.multi_queue:
            return self._requeue(live, nic, have)
        return super()._compare(live, nic, have, mine)

    def wanted(self, live: LiveHost, have: LiveLink, mine: bool,
               others: list[str]) -> tuple[dict[str, object], list[str]]:
        want: dict[str, object] = {"up": True, "mtu": self.mtu, "mac": self.mac}
        if self.bridge:  # an OVS port's tap has no kernel master
            want["master"] = self.bridge
        return want, []

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

    def mac_after_made(self) -> str | None:
        return self.mac  # TUNSETIFF makes the tap; its MAC is set after

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
