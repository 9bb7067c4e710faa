"""ovs: an Open vSwitch bridge whose port the uplink is (a trunk of every VLAN), and a tap
per guest NIC as an access port (the VLAN as its tag) with the external_ids OpenStack, OVN
and libvirt find a port by. OVSDB holds all of it (netmap/netlink/ovsdb.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from netmap.model import names
from netmap.model.fleet import Binding, GuestNic, Network
from netmap.modes.base import Mode, NicContext

if TYPE_CHECKING:
    from netmap.steps import Step

# the datapaths a binding may ask a new OVS bridge for (the kernel's, or the userspace one)
DATAPATH_TYPES = ("system", "netdev")


def ovs_port_ids(guest: str, nic: GuestNic, binding: Binding) -> tuple[tuple[str, str], ...]:
    """The external_ids of a guest's OVS port: the binding's, and those OpenStack, OVN and
    libvirt set (iface-id names the logical port, attached-mac the guest's MAC, vm-id the
    guest), and netmap's marks (whose port, which network)."""
    # here: load and check read modes without the step classes
    from netmap.steps.ovs import OVS_NETWORK_KEY, OVS_OWNER_KEY

    ids = dict(binding.external_ids)
    ids.setdefault("iface-id", f"{guest}-nic{nic.index}")
    ids.update({"attached-mac": nic.mac, "vm-id": guest, "iface-status": "active",
                OVS_OWNER_KEY: guest, OVS_NETWORK_KEY: nic.network})
    return tuple(sorted(ids.items()))


def _datapath(binding: Binding) -> str:
    return f"datapath {binding.datapath_type or 'system (OVS default)'}"


class Ovs(Mode):
    name = "ovs"
    family = "ovs"
    # switched locally like a Linux bridge: a guest moves between the two with no warning
    semantic = "local-switching"
    # ovs-vswitchd takes the uplink (the kernel datapath's rx_handler, the userspace one's
    # packet socket): it cannot also be a Linux-bridge port or a macvlan lower device
    uplink_use = "port"
    takes_bridge = True
    bridge_kind = "OVS"
    # ovsdb: the host's [host] ovsdb, which load copies onto each ovs binding
    owns_fields = ("external_ids", "datapath_type", "ovsdb")
    kernel_features = ("tun",)
    drift_checks = ("ovs",)
    endpoint = "ovs-tap"
    libvirt_type = "bridge"
    libvirt_forward = "bridge"
    libvirt_virtualport = "openvswitch"
    qemu_fd = "ovs-tap"

    def fields_problem(self, binding: Binding) -> tuple[str, str, str] | None:
        if any(not key for key, _ in binding.external_ids):
            return ("external_ids", "has an empty key", "name every external_ids key")
        return None

    def sharing_problem(self, uplink: str,
                        users: list[Binding]) -> tuple[str, str, str, str] | None:
        """An OVS port is taken by ovs-vswitchd (the kernel datapath's rx_handler, the
        userspace one's packet socket): it is on one OVS bridge, and cannot also be a
        Linux-bridge port, a macvlan lower device or a vxlan underlay."""
        ovs = [b for b in users if b.mode == self.name]
        bridge = names.bridge_name(uplink, ovs[0].bridge)
        for binding in ovs[1:]:
            other = names.bridge_name(uplink, binding.bridge)
            if other != bridge:
                return (binding.network, "bridge", f"puts uplink {uplink} in OVS bridge "
                        f"{other}, but network {ovs[0].network} puts it in {bridge}",
                        "a port is on one OVS bridge: use the same bridge for both")
            if binding.datapath_type != ovs[0].datapath_type:
                # the guest realized first would make the bridge, and decide for both
                return (binding.network, "datapath_type", f"asks OVS bridge {bridge} for "
                        f"{_datapath(binding)}, but network {ovs[0].network} asks it for "
                        f"{_datapath(ovs[0])}; a bridge has one datapath",
                        "give both bindings the same datapath_type")
        foreign = next((b for b in users if b.mode != self.name), None)
        if foreign is None:
            return None
        from netmap.modes import REGISTRY

        use = REGISTRY[foreign.mode].uplink_use
        what = {"port": "enslaves it to a Linux bridge", "underlay": "uses it as vxlan underlay",
                "macvlan": "puts a macvtap on it"}.get(use, f"uses it in {foreign.mode} mode")
        return (foreign.network, "uplink", f"{what}, but {uplink} is a port of OVS bridge "
                f"{bridge} (network {ovs[0].network}); an interface is either an OVS port or "
                "one of these, not both",
                "bind both networks in ovs mode, or give them separate uplinks")

    def devices(self, guest: str, nic: int, binding: Binding,
                network: Network) -> tuple[tuple[str, str], ...]:
        return (("bridge", names.bridge_name(binding.uplink, binding.bridge)),
                ("tap", names.tap_name(guest, nic)))

    def uplink_master(self, binding: Binding) -> str | None:
        return None  # an OVS port has no kernel master on the userspace datapath

    def guest_bridge(self, binding: Binding, network: Network) -> str | None:
        return names.bridge_name(binding.uplink, binding.bridge)

    def steps(self, ctx: NicContext) -> list[Step]:
        """The OVS bridge and its uplink port (a trunk), the guest's tap, and the tap as an
        access port: apply makes the three OVSDB steps one transaction."""
        from netmap.steps import CreateTap, EnsureOvsBridge, EnsureOvsPort
        from netmap.steps.ovs import OVS_OWNER_KEY, UPLINK_OWNER, default_ovsdb

        remote = ctx.binding.ovsdb or default_ovsdb()
        bridge, tap, nic = ctx.devices["bridge"], ctx.devices["tap"], ctx.nic
        return [EnsureOvsBridge(bridge, remote, ctx.binding.datapath_type),
                EnsureOvsPort(ctx.uplink, bridge, remote,
                              external_ids=((OVS_OWNER_KEY, UPLINK_OWNER),)),
                CreateTap(tap, names.host_side_mac(nic.mac), nic.mac, ctx.mtu, "",
                          multi_queue=nic.queues > 1),
                EnsureOvsPort(tap, bridge, remote, ctx.vlan,
                              ovs_port_ids(ctx.guest.name, nic, ctx.binding))]

    def libvirt_bridge_note(self, binding: Binding, network: Network) -> str:
        return (f"OVS bridge {self.guest_bridge(binding, network)} must exist with "
                f"{binding.uplink} as a port (netmap realize creates both); libvirt adds "
                "the guests' ports with <virtualport type='openvswitch'/>")


MODES = (Ovs(),)
