"""vxlan: a vxlan device (the network's VNI) on the underlay uplink, in a bridge with a tap
per guest NIC."""

from __future__ import annotations

from typing import TYPE_CHECKING

from netmap.model import names
from netmap.model.fleet import VXLAN_OVERHEAD, Binding, Network, Uplink
from netmap.modes.base import Mode, NicContext
from netmap.modes.bridge import bridged_steps

if TYPE_CHECKING:
    from netmap.steps import Step


class Vxlan(Mode):
    name = "vxlan"
    family = "vxlan"
    semantic = "local-switching"
    uplink_use = "underlay"
    overlay = True
    takes_bridge = True
    takes_vxlan = True
    kernel_features = ("vxlan", "bridge", "tun")
    drift_checks = ("vxlan", "underlay")
    endpoint = "vxlan-bridge-tap"
    libvirt_type = "bridge"
    libvirt_forward = "bridge"
    qemu_fd = "tap"

    def network_problem(self, network: Network) -> tuple[str, str] | None:
        if network.vni is not None:
            return None
        return (f"is {self.name}, but network {network.name} is a VLAN network on segment "
                f"{network.segment}", "use bridge or a macvtap mode")

    def underlay_overhead(self, binding: Binding) -> int:
        return binding.vxlan.overhead if binding.vxlan else VXLAN_OVERHEAD

    def mtu_ceiling(self, binding: Binding, uplink: Uplink) -> tuple[int, str]:
        overhead = self.underlay_overhead(binding)
        return (uplink.mtu - overhead,
                f"underlay {uplink.name} MTU {uplink.mtu} - {overhead} vxlan overhead")

    def devices(self, guest: str, nic: int, binding: Binding,
                network: Network) -> tuple[tuple[str, str], ...]:
        assert network.vni is not None  # load binds vxlan to overlay networks only
        return (("vxlan", names.vxlan_name(network.vni)),
                ("bridge", names.vxlan_bridge_name(network.vni, binding.bridge)),
                ("tap", names.tap_name(guest, nic)))

    def guest_bridge(self, binding: Binding, network: Network) -> str | None:
        assert network.vni is not None
        return names.vxlan_bridge_name(network.vni, binding.bridge)

    def steps(self, ctx: NicContext) -> list[Step]:
        # the step classes only when planning: load and check read modes without them
        from netmap.steps import EnsureVxlan

        options = ctx.binding.vxlan
        vx = ctx.devices["vxlan"]
        return [EnsureVxlan(vx, int(ctx.network.vni or 0), ctx.uplink, ctx.mtu,
                            options.port if options else 4789,
                            options.group if options else None,
                            options.remotes if options else (),
                            options.local if options else None),
                *bridged_steps(ctx, vx)]

    def libvirt_bridge_note(self, binding: Binding, network: Network) -> str:
        assert network.vni is not None
        return (f"bridge {self.guest_bridge(binding, network)} with vxlan "
                f"{names.vxlan_name(network.vni)} on {binding.uplink} must exist (netmap "
                "realize creates them)")


MODES = (Vxlan(),)
