"""Drift of an ovs binding against what OVSDB holds: ovs-vswitchd down, the bridge or the
uplink's port missing, the uplink not a trunk, a guest's port on the wrong bridge or with
the wrong tag. Pure: reads the inventory's OvsState (netmap.netlink.discover.read_ovs)."""

from __future__ import annotations

from collections.abc import Callable

from netmap.model import names
from netmap.model.fleet import Binding, Network
from netmap.model.inventory import OvsState
from netmap.plan import OVS_NETWORK_KEY, OVS_OWNER_KEY
from netmap.rules.check import ERROR, INFO

Add = Callable[[str, str, str, str], None]  # code, severity, message, fix


def check_ovs(binding: Binding, network: Network | None, ovs: OvsState, add: Add) -> None:
    where = f"[networks.{binding.network}]"
    if ovs.error is not None:
        add("OVSDB_UNREACHABLE", ERROR, f"network {binding.network} is an OVS binding, but "
            f"OVSDB cannot be read: {ovs.error}",
            "start Open vSwitch, or set ovsdb = \"unix:PATH\" in [host] to its socket")
        return
    if not ovs.vswitchd_running:
        add("OVS_VSWITCHD_DOWN", ERROR, f"ovs-vswitchd is not running (OVSDB {ovs.remote}): "
            f"the ports of network {binding.network} forward nothing.",
            "start ovs-vswitchd (systemctl start ovs-vswitchd)")
    bridge = names.bridge_name(binding.uplink, binding.bridge)
    guests = [p for p in ovs.ports if dict(p.external_ids).get(OVS_NETWORK_KEY)
              == binding.network and OVS_OWNER_KEY in dict(p.external_ids)]
    if bridge not in ovs.bridges:
        add("OVS_BRIDGE_MISSING", ERROR if guests else INFO,
            f"OVS bridge {bridge} of network {binding.network} does not exist"
            + ("." if guests else "; realize creates it with the first guest."),
            f"realize a guest on {binding.network} again to rebuild it" if guests
            else "none needed")
    uplink = ovs.port(binding.uplink)
    if bridge in ovs.bridges and uplink is None:
        add("OVS_UPLINK_MISSING", ERROR, f"uplink {binding.uplink} is not a port of OVS "
            f"bridge {bridge}; guests on {binding.network} reach nothing beyond this host.",
            f"'ovs-vsctl add-port {bridge} {binding.uplink}', or realize a guest again")
    elif uplink is not None and uplink.bridge != bridge:
        add("OVS_UPLINK_WRONG_BRIDGE", ERROR, f"uplink {binding.uplink} is a port of OVS "
            f"bridge {uplink.bridge}, not {bridge} (network {binding.network}).",
            f"move it ('ovs-vsctl del-port {uplink.bridge} {binding.uplink}') or set "
            f'bridge = "{uplink.bridge}" in {where}')
    elif uplink is not None and uplink.tag is not None:
        add("OVS_UPLINK_NOT_TRUNK", ERROR, f"uplink {binding.uplink} is an access port (tag "
            f"{uplink.tag}) of {bridge}: it carries one VLAN only.",
            f"'ovs-vsctl remove port {binding.uplink} tag {uplink.tag}'")
    vlan = binding.vlan if binding.vlan is not None else (network.vlan if network else None)
    for port in guests:
        owner = dict(port.external_ids)[OVS_OWNER_KEY]
        if port.bridge != bridge:
            add("OVS_PORT_WRONG_BRIDGE", ERROR, f"{port.name}, {owner}'s port on network "
                f"{binding.network}, is on OVS bridge {port.bridge}, not {bridge}.",
                f"'ovs-vsctl del-port {port.bridge} {port.name}' and realize {owner} again")
        elif network is not None and port.tag != vlan:
            add("OVS_PORT_WRONG_TAG", ERROR, f"{port.name}, {owner}'s port on network "
                f"{binding.network}, has tag {port.tag}, not {vlan}: it reaches another "
                "VLAN.", f"realize {owner} again (netmap sets the tag back)")
