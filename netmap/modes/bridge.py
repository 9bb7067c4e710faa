"""bridge: a Linux bridge on the uplink (created if missing) and a tap per guest NIC."""

from __future__ import annotations

from typing import TYPE_CHECKING

from netmap.model import names
from netmap.model.fleet import Binding, Network
from netmap.modes.base import Mode, NicContext

if TYPE_CHECKING:
    from netmap.steps import Step


def bridged_steps(ctx: NicContext, port: str) -> list[Step]:
    """A bridge with `port` in it and the guest's tap; with a VLAN, the bridge filters VLANs,
    `port` carries it tagged and the tap untagged (bridge and vxlan modes alike)."""
    # the step classes only when planning: load and check read modes without them
    from netmap.steps import BridgeVlan, CreateTap, EnslavePort, EnsureBridge

    nic, vlan, mtu = ctx.nic, ctx.vlan, ctx.mtu
    bridge, tap = ctx.devices["bridge"], ctx.devices["tap"]
    steps: list[Step] = [EnsureBridge(bridge, mtu, vlan_filtering=vlan is not None),
                         EnslavePort(port, bridge)]
    if vlan is not None:
        steps.append(BridgeVlan(port, vlan))
    steps.append(CreateTap(tap, names.host_side_mac(nic.mac), nic.mac, mtu, bridge,
                           multi_queue=nic.queues > 1))
    if vlan is not None:
        steps.append(BridgeVlan(tap, vlan, access=True))
    return steps


class Bridge(Mode):
    name = "bridge"
    family = "bridge"
    semantic = "local-switching"
    uplink_use = "port"
    takes_bridge = True
    kernel_features = ("bridge", "tun")
    drift_checks = ("uplink-bridge",)
    foreign_uppers_break = "a bridge cannot enslave an interface that carries macvlans"
    endpoint = "bridge-tap"
    libvirt_type = "bridge"
    libvirt_forward = "bridge"
    qemu_fd = "tap"

    def devices(self, guest: str, nic: int, binding: Binding,
                network: Network) -> tuple[tuple[str, str], ...]:
        return (("bridge", names.bridge_name(binding.uplink, binding.bridge)),
                ("tap", names.tap_name(guest, nic)))

    def uplink_master(self, binding: Binding) -> str | None:
        return names.bridge_name(binding.uplink, binding.bridge)

    def guest_bridge(self, binding: Binding, network: Network) -> str | None:
        return names.bridge_name(binding.uplink, binding.bridge)

    def steps(self, ctx: NicContext) -> list[Step]:
        return bridged_steps(ctx, ctx.uplink)

    def libvirt_bridge_note(self, binding: Binding, network: Network) -> str:
        return (f"bridge {self.guest_bridge(binding, network)} must exist with "
                f"{binding.uplink} in it (netmap realize creates it); libvirt only adds taps "
                "to it")


MODES = (Bridge(),)
