"""sriov-vf: a free VF of the PF, its MAC, VLAN and spoof check set on the PF's VF entry;
the VF is handed to the guest whole (vf_attach = "hostdev") or its netdev carries a
passthru macvtap (vf_attach = "macvtap")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from netmap.model import names
from netmap.model.fleet import Binding, Network, Uplink
from netmap.modes.base import Mode, NicContext

if TYPE_CHECKING:
    from netmap.steps import Step


class SriovVf(Mode):
    name = "sriov-vf"
    family = "sriov"
    semantic = "dedicated"
    uplink_use = "vf-pool"
    claims = "vf"
    kernel_features = ("sriov",)
    endpoint = "vf"
    libvirt_type = "network"  # a VF pool: libvirt counts the VFs it hands out per network

    def uplink_problem(self, uplink: Uplink) -> tuple[str, str] | None:
        if uplink.sriov is not None:
            return None
        return (f"is {self.name}, but uplink {uplink.name} has no VF pool",
                f"add sriov = {{ total_vfs = N }} to [uplinks.{uplink.name}]")

    def devices(self, guest: str, nic: int, binding: Binding,
                network: Network) -> tuple[tuple[str, str], ...]:
        if binding.vf_attach == "macvtap":
            return (("macvtap", names.tap_name(guest, nic)),)
        return ()

    def steps(self, ctx: NicContext) -> list[Step]:
        # the step classes only when planning: load and check read modes without them
        from netmap.steps import ClaimVf

        return [ClaimVf(ctx.uplink, ctx.nic.mac, ctx.vlan, ctx.binding.spoofchk,
                        ctx.devices.get("macvtap"), ctx.mtu)]

    def uses_vhost(self, devices: tuple[tuple[str, str], ...]) -> bool:
        return bool(devices)  # a VF handed over whole bypasses the host's virtio backend

    def qemu_refusal(self, network: Network, host: str) -> tuple[str, str]:
        return (f"network {network.name!r} is {self.name} on {host}: a VF reaches a guest as "
                "a PCI device, which no tap fd can carry",
                "run 'netmap realize' and give QEMU -device vfio-pci,host=VF")


MODES = (SriovVf(),)
