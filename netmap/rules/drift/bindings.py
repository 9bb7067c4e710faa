"""Drift of a host's bridged bindings: the bridges and vxlan devices its bindings build,
and the vxlan underlay's address. Pure; extends drift_links.LinkDrift.
"""

from __future__ import annotations

import ipaddress

from netmap.model import names
from netmap.model.fleet import Binding, Network, Vxlan
from netmap.model.inventory import UPLINK_KINDS, Interface
from netmap.modes import mode_of
from netmap.query.graph import effective_mtu
from netmap.rules.check import ERROR, INFO, WARNING
from netmap.rules.drift.links import LinkDrift
from netmap.rules.drift.ovs import check_ovs


class BindingDrift(LinkDrift):
    """Checks what bridge and vxlan bindings build; needs the fleet's networks for VNIs and
    MTUs (without them only the bridge of a bridge binding is checked)."""

    def check_bridge(self, binding: Binding, bridge: str, uplink: Interface | None,
                     network: Network | None) -> None:
        live = self.inv.get(bridge)
        if live is None:
            waiting = [t.name for t in self.tracked if t.bridge == bridge]
            self.add("BRIDGE_MISSING", ERROR if waiting else INFO,
                     f"bridge {bridge} of network {binding.network} does not exist"
                     + (f"; netmap's taps {', '.join(waiting)} lost their switch."
                        if waiting else "; realize creates it with the first guest."),
                     f"realize a guest on {binding.network} again to rebuild it"
                     if waiting else "none needed")
            return
        if live.kind != "bridge":
            self.add("BRIDGE_NOT_A_BRIDGE", ERROR,
                     f"{bridge}, the bridge of network {binding.network}, exists but is a "
                     f"{live.kind}.",
                     f'remove {bridge} or set bridge = "…" in [networks.{binding.network}]')
            return
        if mode_of(binding).uplink_master(binding) == bridge and uplink is not None \
                and uplink.master != bridge:
            strangers = [p.name for p in self.inv.ports_of(bridge) if p.kind in UPLINK_KINDS]
            attached = [p.name for p in self.inv.ports_of(bridge) if p.kind in ("tap", "tun")]
            if strangers:
                self.add("BRIDGE_WRONG_UPLINK", ERROR,
                         f"bridge {bridge} of network {binding.network} enslaves "
                         f"{', '.join(strangers)}, not uplink {uplink.name}; its guests reach "
                         "another segment.",
                         f"'ip link set {strangers[0]} nomaster; ip link set {uplink.name} "
                         f"master {bridge}', or fix uplink in [networks.{binding.network}]")
            else:
                self.add("BRIDGE_UPLINK_DETACHED", ERROR if attached else WARNING,
                         f"bridge {bridge} of network {binding.network} has no uplink port"
                         + (f"; {', '.join(attached)} reach nothing beyond this host."
                            if attached else "."),
                         f"'ip link set {uplink.name} master {bridge}'")
        if network is not None:
            need, _ = effective_mtu(network, binding, self.host)
            if live.mtu < need:
                self.add("BRIDGE_MTU_LOW", ERROR,
                         f"bridge {bridge} has MTU {live.mtu}; network {binding.network} gives "
                         f"guests {need} here, so larger frames are dropped.",
                         f"'ip link set {bridge} mtu {need}' after raising its ports' MTU")

    def check_vxlan(self, binding: Binding, network: Network, uplink: Interface | None) -> None:
        assert network.vni is not None
        device = names.vxlan_name(network.vni)
        bridge = names.vxlan_bridge_name(network.vni, binding.bridge)
        live = self.inv.get(device)
        if live is not None:
            wrong = []
            if live.kind != "vxlan":
                wrong.append(f"is a {live.kind}")
            elif live.vni != network.vni:
                wrong.append(f"carries VNI {live.vni}")
            if uplink is not None and live.kind == "vxlan" and live.lower not in (None,
                                                                                  uplink.name):
                wrong.append(f"runs over {live.lower}, not {uplink.name}")
            if live.kind == "vxlan":
                wrong += _underlay_differences(binding.vxlan or Vxlan(), live)
            if wrong:
                self.add("VXLAN_MISMATCH", ERROR,
                         f"{device}, the vxlan device of network {binding.network} (VNI "
                         f"{network.vni}), {' and '.join(wrong)}; its VTEP does not reach "
                         "the VNI's others as the mapping says.",
                         f"remove {device} ('ip link del {device}') and realize again, or "
                         f"make [networks.{binding.network}] vxlan say what it is")
            elif live.master != bridge:
                self.add("VXLAN_DETACHED", ERROR,
                         f"{device} is not a port of {bridge}; guests on {binding.network} "
                         "reach no other host.", f"'ip link set {device} master {bridge}'")
        if live is not None or self.inv.get(bridge) is not None:
            self.check_bridge(binding, bridge, uplink, network)

    def check_binding(self, binding: Binding) -> None:
        uplink = self.live.get(binding.uplink)
        network = self.networks.get(binding.network)
        checks = mode_of(binding).drift_checks
        master = mode_of(binding).uplink_master(binding)
        if "uplink-bridge" in checks and master is not None:
            self.check_bridge(binding, master, uplink, network)
        if "vxlan" in checks and network is not None and network.vni is not None:
            self.check_vxlan(binding, network, uplink)
        if "ovs" in checks and self.inv.ovs is not None:
            check_ovs(binding, network, self.inv.ovs, self.add)
        if "underlay" in checks and uplink is not None:
            self.check_underlay(binding, uplink)

    def check_underlay(self, binding: Binding, uplink: Interface) -> None:
        """A vxlan device sends from its underlay's address: without one, nothing leaves."""
        local = binding.vxlan.local if binding.vxlan else None
        own = [address.split("/")[0] for address in uplink.addresses]
        if not own:
            self.add("VXLAN_NO_UNDERLAY_ADDRESS", ERROR,
                     f"underlay {uplink.name} of network {binding.network} has no global "
                     "address; vxlan frames would have no source and other hosts no "
                     "destination.",
                     f"'ip address add ADDRESS/PREFIX dev {uplink.name}' (and persist it)")
        elif local and local not in own:
            self.add("VXLAN_LOCAL_MISSING", ERROR,
                     f"network {binding.network} sends vxlan from {local}, which underlay "
                     f"{uplink.name} does not have (it has {', '.join(uplink.addresses)}).",
                     f"set vxlan.local in [networks.{binding.network}] to one of them, or "
                     f"add {local} to {uplink.name}")


def _underlay_differences(want: Vxlan, live: Interface) -> list[str]:
    """The UDP port, multicast group and source address a live vxlan device uses, where
    they differ from its binding (a group where the binding has unicast remotes too)."""
    wrong = []
    if live.vxlan_port is not None and live.vxlan_port != want.port:
        wrong.append(f"uses UDP port {live.vxlan_port}, not {want.port}")
    group = _canonical(live.vxlan_group)
    if group != want.group:
        wrong.append(f"floods to group {group}, not {want.group}" if group and want.group
                     else f"floods to group {group}, not to unicast remotes" if group
                     else f"joins no group, not {want.group}")
    if not group and set(live.vxlan_remotes) != set(want.remotes):
        wrong.append(f"floods to remotes {', '.join(live.vxlan_remotes) or 'none'}, not "
                     f"{', '.join(want.remotes) or 'none'}")
    local = _canonical(live.vxlan_local)
    if local != want.local:
        wrong.append(f"sends from {local or 'any address'}, not "
                     f"{want.local or 'any address (no vxlan.local)'}")
    return wrong


def _canonical(address: str | None) -> str | None:
    return str(ipaddress.ip_address(address)) if address else None
