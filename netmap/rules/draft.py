"""A draft host mapping (TOML text) from a discovered inventory. Pure.

Discovery sees interfaces, not the fabric: it cannot know which segment a NIC is cabled
to, nor which logical network an existing bridge carries. The draft writes what it knows
(uplinks, MTU, MAC, SR-IOV pools, features) as keys, and what a human must decide as
comments marked DECIDE. It loads through netmap.load.parse.load_host as written, so a user can
start from it and fill in segments one line at a time.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

from netmap.model import names
from netmap.model.fleet import KNOWN_FEATURES, Network
from netmap.model.inventory import Interface, Inventory
from netmap.modes.bridge import Bridge
from netmap.modes.macvtap import MODES as MACVTAP_MODES
from netmap.modes.vxlan import Vxlan
from netmap.plan import OVS_NETWORK_KEY, default_ovsdb

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
DECIDE = "DECIDE"


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _str(value: str) -> str:
    return json.dumps(value)  # a TOML basic string for the plain names netmap handles


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_str(v) for v in values) + "]"


def _bridge_network(bridge: str, networks: dict[str, Network]) -> Network | None:
    """The one network an existing bridge's name points at (prod: br-prod, brprod, prod)."""
    matches = [n for n in networks.values() if not n.is_overlay
               and bridge in (n.name, f"br-{n.name}", f"br{n.name}", f"br_{n.name}")]
    return matches[0] if len(matches) == 1 else None


class _Draft:
    def __init__(self, inventory: Inventory, networks: dict[str, Network]) -> None:
        self.inv = inventory
        self.networks = networks
        self.uplinks = inventory.uplink_candidates()
        self.uplink_names = {link.name for link in self.uplinks}
        # uplink -> (segment, why) learnt from a binding found for it
        self.segments: dict[str, tuple[str, str]] = {}
        self.bindings: list[list[str]] = []
        self.undecided: list[list[str]] = []

    def find_bindings(self) -> None:
        bound: set[str] = set()
        for bridge in (i for i in self.inv.interfaces if i.kind == "bridge"):
            ports = [p for p in self.inv.ports_of(bridge.name) if p.name in self.uplink_names]
            tagged = [p for p in self.inv.ports_of(bridge.name)
                      if p.kind == "vlan" and p.lower in self.uplink_names]
            if not ports and len(tagged) == 1:
                self.undecided.append(self.vlan_bridge_comment(bridge, tagged[0]))
            if len(ports) != 1:
                continue  # no uplink, or several: which one carries what is not ours to say
            uplink = ports[0]
            network = _bridge_network(bridge.name, self.networks)
            if network is None or network.name in bound:
                self.undecided.append(self.bridge_comment(bridge, uplink))
                continue
            bound.add(network.name)
            lines = [f"# bridge {bridge.name} enslaves {uplink.name}; its name points at "
                     f"network {network.name}. {DECIDE}: confirm.",
                     f"[networks.{_key(network.name)}]", f'mode = "{Bridge.name}"',
                     f"uplink = {_str(uplink.name)}"]
            if bridge.name != names.bridge_name(uplink.name):
                lines.append(f"bridge = {_str(bridge.name)}")
            if network.vlan is not None:
                lines.insert(1, f"# {DECIDE}: network {network.name} is VLAN {network.vlan}: "
                             "check the bridge tags it on the uplink.")
            self.bindings.append(lines)
            if network.segment:
                self.segments[uplink.name] = (network.segment, f"bridge {bridge.name}")
        for vxlan in (i for i in self.inv.interfaces if i.kind == "vxlan"):
            match = [n for n in self.networks.values() if n.vni == vxlan.vni]
            if len(match) != 1 or match[0].name in bound or vxlan.lower not in self.uplink_names:
                continue
            network = match[0]
            bound.add(network.name)
            lines = [f"# vxlan {vxlan.name} carries VNI {vxlan.vni} over {vxlan.lower}.",
                     f"[networks.{_key(network.name)}]", f'mode = "{Vxlan.name}"',
                     f"uplink = {_str(vxlan.lower or '')}"]
            if vxlan.master and vxlan.master != names.vxlan_bridge_name(network.vni or 0):
                lines.append(f"bridge = {_str(vxlan.master)}")
            options = []
            if vxlan.vxlan_port and vxlan.vxlan_port != 4789:
                options.append(f"port = {vxlan.vxlan_port}")
            if vxlan.vxlan_group:
                options.append(f"group = {_str(vxlan.vxlan_group)}")
            if vxlan.vxlan_local:
                options.append(f"local = {_str(vxlan.vxlan_local)}")
            if vxlan.vxlan_remotes and not vxlan.vxlan_group:
                options.append(f"remotes = [{', '.join(map(_str, vxlan.vxlan_remotes))}]")
            if options:
                lines.append("vxlan = { " + ", ".join(options) + " }")
            self.bindings.append(lines)

        self.find_ovs_bindings(bound)

    def find_ovs_bindings(self, bound: set[str]) -> None:
        """An OVS bridge with one uplink among its ports binds each network whose VLAN a
        port on it is tagged with (or that netmap named on a port it added)."""
        ovs = self.inv.ovs
        if ovs is None or ovs.error:
            return
        for bridge in ovs.bridges:
            ports = [p for p in ovs.ports if p.bridge == bridge]
            uplinks = [p for p in ports if p.name in self.uplink_names]
            if len(uplinks) != 1:
                continue
            uplink = uplinks[0].name
            for network in self.networks.values():
                named = any(dict(p.external_ids).get(OVS_NETWORK_KEY) == network.name
                            for p in ports)
                tagged = network.vlan is not None and any(p.tag == network.vlan
                                                          for p in ports)
                if network.name in bound or network.vni is not None or not (named or tagged):
                    continue
                bound.add(network.name)
                why = (f"netmap's ports name network {network.name}" if named else
                       f"a port is tagged {network.vlan}, network {network.name}'s VLAN")
                lines = [f"# OVS bridge {bridge} has {uplink} as a port; {why}. {DECIDE}: "
                         "confirm.", f"[networks.{_key(network.name)}]", 'mode = "ovs"',
                         f"uplink = {_str(uplink)}"]
                if bridge != names.bridge_name(uplink):
                    lines.append(f"bridge = {_str(bridge)}")
                self.bindings.append(lines)
                if network.segment:
                    self.segments.setdefault(uplink, (network.segment, f"OVS bridge {bridge}"))

    def bridge_comment(self, bridge: Interface, uplink: Interface) -> list[str]:
        return [f"# {DECIDE}: bridge {bridge.name} enslaves {uplink.name}. If it carries one "
                "of the fleet's networks, bind it:",
                "# [networks.NETWORK]", f'# mode = "{Bridge.name}"',
                f"# uplink = {_str(uplink.name)}",
                f"# bridge = {_str(bridge.name)}"]

    def vlan_bridge_comment(self, bridge: Interface, port: Interface) -> list[str]:
        """An old-style VLAN bridge (br100 on eth0.100): netmap's bridge mode tags on a
        vlan-aware bridge over the uplink itself, so this one is a human's call."""
        vlan = [n.name for n in self.networks.values() if n.vlan == port.vlan_id]
        return [f"# {DECIDE}: bridge {bridge.name} enslaves {port.name}, VLAN {port.vlan_id} "
                f"on {port.lower}" + (f" (networks with that VLAN: {', '.join(vlan)})"
                                      if vlan else "") + ". netmap's bridge mode uses one "
                "vlan-aware bridge on the uplink instead; migrate the guests, or bind with:",
                "# [networks.NETWORK]", f'# mode = "{Bridge.name}"',
                f"# uplink = {_str(port.lower or '')}"]

    def uplink_block(self, link: Interface) -> list[str]:
        facts = [link.kind]
        if link.parent:
            facts.append(f"device {link.parent}")
        facts.append("running" if link.running else f"NOT running ({link.oper_state})")
        if link.master:
            facts.append(f"port of {link.master}")
        slaves = [p.name for p in self.inv.ports_of(link.name)] if link.kind == "bond" else []
        if slaves:
            facts.append(f"bond of {', '.join(slaves)}")
        lines = [f"[uplinks.{_key(link.name)}]", f"# {', '.join(facts)}"]
        known = self.segments.get(link.name)
        if known:
            lines.append(f"segments = {_list([known[0]])}  # from {known[1]}; {DECIDE}: "
                         "add any other segment it reaches")
        else:
            lines.append(f"# {DECIDE}: which segments (switch fabrics, physnets) does "
                         f"{link.name} reach? e.g. segments = [\"dc1-fabric\"]")
            lines.append("segments = []")
        lines.append(f"mtu = {link.mtu}")
        if link.hardware_mac and link.hardware_mac != "00:00:00:00:00:00":
            lines.append(f"mac = {_str(link.hardware_mac)}  # finds {link.name} again if "
                         "it is renamed")
        pool = self.inv.sriov.get(link.name)
        if pool is not None:
            foreign = pool.used_vfs
            free = pool.num_vfs - foreign
            note = (f"sriov_totalvfs {pool.total_vfs}, sriov_numvfs {pool.num_vfs}, "
                    f"{foreign} in use now")
            if free > 0:
                lines.append(f"sriov = {{ total_vfs = {free} }}  # {note}; {DECIDE}: VFs "
                             "netmap may hand to guests")
            else:
                lines.append(f"# sriov = {{ total_vfs = N }}  # {note}: {DECIDE}: set "
                             "sriov_numvfs, then give netmap a pool")
        return lines


def draft_host(inventory: Inventory, *, host_name: str | None = None,
               networks: dict[str, Network] | None = None,
               now: datetime | None = None) -> str:
    """The host mapping TOML for `inventory`. `networks` (the fleet's networks.toml) lets
    existing bridges and vxlan devices become bindings where their name or VNI says which
    network they carry; without it no binding is written."""
    draft = _Draft(inventory, networks or {})
    draft.find_bindings()
    name = host_name or inventory.hostname
    when = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    where = f"network namespace {inventory.netns}" if inventory.netns else "the host"
    out = [f"# Draft mapping of host {name}, written by 'netmap discover --write' from "
           f"{where} on {when}.",
           f"# It loads as it is; lines marked {DECIDE} need a human before a guest depends "
           "on them.", "",
           "[host]", f"name = {_str(name)}",
           f"features = {_list(sorted(inventory.features & set(KNOWN_FEATURES)))}"]
    if inventory.netns:
        out.append(f"netns = {_str(inventory.netns)}  # lab only: realize inside it")
    if inventory.ovs is not None and inventory.ovs.remote != default_ovsdb():
        out.append(f"ovsdb = {_str(inventory.ovs.remote)}  # where Open vSwitch was read")
    for link in draft.uplinks:
        out += ["", *draft.uplink_block(link)]
    if not draft.uplinks:
        out += ["", f"# {DECIDE}: no NIC, bond or veth found that could be an uplink."]
    for block in draft.bindings + draft.undecided:
        out += ["", *block]
    if not draft.bindings:
        out += ["", f"# {DECIDE}: bind the fleet's networks here, e.g.",
                "# [networks.prod]", f'# mode = "{MACVTAP_MODES[0].name}"', '# uplink = "eth0"']
    return "\n".join(out) + "\n"
