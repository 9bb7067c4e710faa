"""One small class per endpoint kind, chosen by the binding's mode (its `endpoint`; os-vif's
plugin idea).

Each kind can describe what it builds, create it (its steps, through the transaction that
makes each one idempotent and undoable), verify the live result against the plan, and say
what QEMU/libvirt need to know of it to attach the guest NIC (the device, a VF's PCI
address; the XML and QEMU options are the integrations' own, netmap/libvirt/attach.py and
netmap/qemu/netdev.py). Removal is by state, in
release.py, because shared parts (a bridge) outlive one guest's endpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from netmap import plan as p
from netmap.modes import REGISTRY

if TYPE_CHECKING:
    from netmap.netlink.rtmsg import Link
    from netmap.netlink.transaction_view import TransactionView


def _described(nic: p.NicPlan, **more: object) -> dict[str, object]:
    """What every attachment says: the NIC, its network and mode, the guest's MAC, and what
    the integrations build the guest's side from (netmap/libvirt/attach.py's <interface>,
    netmap/qemu/netdev.py's -netdev): model, MTU, queues."""
    return {"nic": nic.nic, "network": nic.network, "mode": nic.mode, **more, "mac": nic.mac,
            "model": nic.model, "mtu": nic.mtu, "queues": nic.queues}


class Endpoint:
    """What every kind shares: run the NIC's steps in order, verify the named device."""

    kind: ClassVar[str] = ""  # what a mode names as its `endpoint`
    device_kind: ClassVar[str] = ""

    def describe(self, nic: p.NicPlan) -> list[str]:
        return [step.describe() for step in nic.steps]

    def create(self, txn: TransactionView, nic: p.NicPlan) -> None:
        for step in nic.steps:
            txn.ensure(nic.nic, step)

    def verify(self, nic: p.NicPlan, links: dict[str, Link], txn: TransactionView) -> list[str]:
        """Differences between the plan and the live device (empty: as planned)."""
        if nic.device is None:
            return []
        live = links.get(nic.device)
        if live is None:
            return [f"NIC {nic.nic}: {nic.device} is missing"]
        want: dict[str, object] = {"kind": self.device_kind, "mtu": nic.mtu, "up": True}
        have: dict[str, object] = {"kind": live.kind, "mtu": live.mtu, "up": live.up}
        mac = next((m for s in nic.steps if s.target == nic.device
                    and (m := s.mac_after_made())), None)
        if mac is not None:  # a MAC set after the device was made: udev may have won
            want["MAC"], have["MAC"] = mac.lower(), (live.address or "").lower()
        return [f"NIC {nic.nic}: {nic.device} {key} is {have[key]!r}, want {value!r}"
                for key, value in want.items() if have[key] != value]

    def attachment(self, nic: p.NicPlan, links: dict[str, Link], txn: TransactionView,
                   ) -> dict[str, object]:
        """What QEMU/libvirt need to attach the NIC: the device (or the VF), as data."""
        raise NotImplementedError


class BridgeTap(Endpoint):
    """A tap in a Linux bridge whose other port is the uplink (or the vxlan device)."""

    kind = "bridge-tap"
    device_kind = "tun"

    def verify(self, nic: p.NicPlan, links: dict[str, Link], txn: TransactionView) -> list[str]:
        problems = super().verify(nic, links, txn)
        tap, bridge = links.get(nic.device or ""), links.get(nic.bridge or "")
        if tap and bridge and tap.master != bridge.index:
            problems.append(f"NIC {nic.nic}: {nic.device} is not a port of {nic.bridge}")
        if tap is not None and tap.multi_queue is not None and \
                tap.multi_queue != (nic.queues > 1):
            problems.append(f"NIC {nic.nic}: {nic.device} is "
                            f"{'' if tap.multi_queue else 'not '}multi-queue, the NIC has "
                            f"{nic.queues} queue(s)")
        if nic.vlan is not None and tap is not None:
            vids = txn.bridge_vlans().get(tap.name, {})
            if set(vids) != {nic.vlan}:
                problems.append(f"NIC {nic.nic}: {tap.name} carries VLANs {sorted(vids)}, "
                                f"want only {nic.vlan}")
        return problems

    def attachment(self, nic: p.NicPlan, links: dict[str, Link], txn: TransactionView,
                   ) -> dict[str, object]:
        return _described(nic, device=nic.device, bridge=nic.bridge)


class VxlanBridgeTap(BridgeTap):
    """vxlan device (VNI) on the underlay uplink, in a bridge with the guest's tap."""

    kind = "vxlan-bridge-tap"

    def verify(self, nic: p.NicPlan, links: dict[str, Link], txn: TransactionView) -> list[str]:
        problems = super().verify(nic, links, txn)
        vx = nic.step_of(p.EnsureVxlan)
        live = links.get(vx.name) if vx else None
        if vx and (live is None or live.vni != vx.vni or not live.up):
            problems.append(f"NIC {nic.nic}: vxlan {vx.name} with VNI {vx.vni} is not up")
        return problems


class Macvtap(Endpoint):
    """A macvtap on the uplink (or its 802.1Q sub-interface) in the binding's mode."""

    kind = "macvtap"
    device_kind = "macvtap"

    def verify(self, nic: p.NicPlan, links: dict[str, Link], txn: TransactionView) -> list[str]:
        problems = super().verify(nic, links, txn)
        live = links.get(nic.device or "")
        want = REGISTRY[nic.mode].macvlan_mode
        if live is not None and live.macvlan_mode != want:
            problems.append(f"NIC {nic.nic}: {nic.device} mode is {live.macvlan_mode}, "
                            f"want {want}")
        if live is not None and live.address != nic.mac:
            problems.append(f"NIC {nic.nic}: {nic.device} MAC is {live.address}, "
                            f"want {nic.mac}")
        return problems

    def attachment(self, nic: p.NicPlan, links: dict[str, Link], txn: TransactionView,
                   ) -> dict[str, object]:
        live = links.get(str(nic.device))
        tapdev = f"/dev/tap{live.index}" if live else None
        return _described(nic, device=nic.device, tapdev=tapdev)


class SriovVf(Endpoint):
    """A VF of the PF: MAC, VLAN and spoof-check on the PF's VF entry; the VF is handed to
    the guest whole (PCI passthrough), or its netdev carries a passthru macvtap."""

    kind = "vf"
    device_kind = "macvtap"

    def verify(self, nic: p.NicPlan, links: dict[str, Link], txn: TransactionView) -> list[str]:
        problems = super().verify(nic, links, txn)
        claim = nic.step_of(p.ClaimVf)
        vf = txn.vf_for(nic)
        if claim is None or vf is None:
            return [*problems, f"NIC {nic.nic}: no VF of {nic.uplink} is claimed"]
        # the entry is what the guest's frames are tagged and filtered by, handed over
        # whole or not; a driver that reports no entries is taken at its word
        problems += [f"NIC {nic.nic}: {x}"
                     for x in claim.entry_differences(vf.index, txn.vf_entry(claim.pf,
                                                                            vf.index))]
        live = links.get(nic.device or "")
        if live is not None and (live.address or "").lower() != nic.mac.lower():
            problems.append(f"NIC {nic.nic}: {nic.device} MAC is {live.address}, "
                            f"want {nic.mac}")
        return problems

    def attachment(self, nic: p.NicPlan, links: dict[str, Link], txn: TransactionView,
                   ) -> dict[str, object]:
        vf = txn.vf_for(nic)
        out = _described(nic, pf=nic.uplink, vlan=nic.vlan)
        out.update(vf=vf.index if vf else None, pci=vf.pci if vf else None)
        if nic.device:  # the VF netdev as macvtap passthru
            live = links.get(nic.device)
            out.update(device=nic.device, tapdev=f"/dev/tap{live.index}" if live else None)
        return out


class OvsTap(Endpoint):
    """A tap that is an access port of an Open vSwitch bridge whose uplink port is a
    trunk; OVSDB holds the port, its tag and the external_ids an SDN finds it by."""

    kind = "ovs-tap"
    device_kind = "tun"

    def verify(self, nic: p.NicPlan, links: dict[str, Link], txn: TransactionView) -> list[str]:
        from netmap.netlink import ovs_steps

        problems = super().verify(nic, links, txn)
        port = nic.step_of(p.EnsureOvsPort)
        if port is not None:
            problems += ovs_steps.verify(txn.ovsdb(port.ovsdb), nic)
        return problems

    def attachment(self, nic: p.NicPlan, links: dict[str, Link], txn: TransactionView,
                   ) -> dict[str, object]:
        return _described(nic, device=nic.device, ovs_bridge=nic.bridge)


ENDPOINTS: dict[str, Endpoint] = {
    kind.kind: kind() for kind in (BridgeTap, VxlanBridgeTap, Macvtap, SriovVf,
                                               OvsTap)}


def endpoint_for(mode: str) -> Endpoint:
    """The endpoint kind that builds, verifies and attaches a NIC of `mode`."""
    return ENDPOINTS[REGISTRY[mode].endpoint]
