"""ovs: an Open vSwitch bridge whose port the uplink is (a trunk of every VLAN), and a tap
per guest NIC as an access port (the VLAN as its tag) with the external_ids OpenStack, OVN
and libvirt find a port by. OVSDB holds all of it (netmap/netlink/ovsdb.py)."""

from __future__ import annotations

from netmap import names
from netmap.model import Binding, Network
from netmap.modes.base import Mode, NicContext
from netmap.plan import Step, ovs_steps


class Ovs(Mode):
    name = "ovs"
    family = "ovs"
    # switched locally like a Linux bridge: a guest moves between the two with no warning
    semantic = "local-switching"
    # ovs-vswitchd takes the uplink (the kernel datapath's rx_handler, the userspace one's
    # packet socket): it cannot also be a Linux-bridge port or a macvlan lower device
    uplink_use = "port"
    takes_bridge = True
    kernel_features = ("tun",)
    endpoint = "ovs-tap"
    libvirt_type = "bridge"
    libvirt_forward = "bridge"
    qemu_fd = "tap"

    def devices(self, guest: str, nic: int, binding: Binding,
                network: Network) -> tuple[tuple[str, str], ...]:
        return (("bridge", names.bridge_name(binding.uplink, binding.bridge)),
                ("tap", names.tap_name(guest, nic)))

    def uplink_master(self, binding: Binding) -> str | None:
        return None  # an OVS port has no kernel master on the userspace datapath

    def guest_bridge(self, binding: Binding, network: Network) -> str | None:
        return names.bridge_name(binding.uplink, binding.bridge)

    def steps(self, ctx: NicContext) -> list[Step]:
        return ovs_steps(ctx.guest.name, ctx.nic, ctx.binding, ctx.uplink, ctx.vlan, ctx.mtu,
                         ctx.devices)

    def libvirt_bridge_note(self, binding: Binding, network: Network) -> str:
        return (f"OVS bridge {self.guest_bridge(binding, network)} must exist with "
                f"{binding.uplink} as a port (netmap realize creates both); libvirt adds "
                "the guests' ports with <virtualport type='openvswitch'/>")


MODES = (Ovs(),)
