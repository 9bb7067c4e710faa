"""libvirt <network> definitions that make libvirt on one host realize the logical networks
the way that host's mapping says.

One libvirt network per logical network, named after it, so that a guest's
`<interface type='network'><source network='prod'/>` means the same on every host and needs
no rewrite when it migrates. The exception is SR-IOV: one network per PF (a VF pool, see
`vf_pool_network`) with a portgroup per logical network carrying its VLAN, because libvirt
counts VFs in use per network and two networks on one PF would hand out the same VF.

What libvirt cannot express is said in `notes` and in the XML as a comment, never dropped
silently: libvirt honours <mtu> only on networks it manages itself (nat/route/open), and it
cannot tag a VLAN on a Linux host bridge or on a macvtap in vepa/bridge/private mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree as ET

from netmap.libvirt import NAMESPACE, vf_pool_network
from netmap.model import names
from netmap.model.fleet import Binding, Fleet, Host, Network
from netmap.modes import REGISTRY, mode_of


@dataclass(frozen=True)
class LibvirtNetwork:
    name: str
    logical: tuple[str, ...]  # the logical networks it realizes
    forward: str
    xml: str
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "logical": list(self.logical), "forward": self.forward,
                "notes": list(self.notes), "xml": self.xml}


def libvirt_network_for(host: Host, network: str) -> tuple[str, str | None]:
    """(libvirt network name, portgroup) that realizes `network` on `host`."""
    binding = host.bindings[network]
    if mode_of(binding).libvirt_type == "network":
        return vf_pool_network(binding.uplink), network
    return network, None


def host_networks(fleet: Fleet, host: Host) -> list[LibvirtNetwork]:
    result: list[LibvirtNetwork] = []
    pools: dict[str, list[Binding]] = {}
    for name in sorted(host.bindings):
        binding = host.bindings[name]
        if mode_of(binding).libvirt_type == "network":
            pools.setdefault(binding.uplink, []).append(binding)
        else:
            result.append(_plain(fleet.networks[name], binding))
    for uplink in sorted(pools):
        result.append(_vf_pool(fleet, host, uplink, pools[uplink]))
    return result


def _vlan(network: Network, binding: Binding) -> int | None:
    return binding.vlan if binding.vlan is not None else network.vlan


def _mtu(network: Network, binding: Binding) -> int:
    return binding.mtu if binding.mtu is not None else network.mtu


def _root(name: str) -> ET.Element:
    root = ET.Element("network")
    ET.SubElement(root, "name").text = name
    return root


def _identity(root: ET.Element, network: Network, binding: Binding) -> None:
    """netmap's own record of what the network is: libvirt keeps <metadata> as it is."""
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.Element("metadata")
        root.insert(1, metadata)
    attrs = {"name": network.name, "mode": binding.mode, "uplink": binding.uplink,
             "mtu": str(_mtu(network, binding))}
    if network.segment:
        attrs["segment"] = network.segment
    if network.vni is not None:
        attrs["vni"] = str(network.vni)
    vlan = _vlan(network, binding)
    if vlan is not None:
        attrs["vlan"] = str(vlan)
    ET.SubElement(metadata, f"{{{NAMESPACE}}}network", attrs)


def _vlan_element(parent: ET.Element, vlan: int) -> None:
    ET.SubElement(ET.SubElement(parent, "vlan"), "tag", {"id": str(vlan)})


def _plain(network: Network, binding: Binding) -> LibvirtNetwork:
    root = _root(network.name)
    _identity(root, network, binding)
    mode = mode_of(binding)
    forward_mode = mode.libvirt_forward
    assert forward_mode is not None  # every mode but a VF pool's forwards its own way
    forward = ET.SubElement(root, "forward", {"mode": forward_mode})
    vlan = _vlan(network, binding)
    mtu = _mtu(network, binding)
    notes: list[str] = []
    bridge = mode.guest_bridge(binding, network)
    portgroup_vlan = None
    if bridge is not None:
        if note := mode.libvirt_bridge_note(binding, network):
            notes.append(note)
        ET.SubElement(root, "bridge", {"name": bridge})
        if mode.libvirt_virtualport is not None:
            # libvirt adds each guest's port to the OVS bridge itself, tagged as the
            # portgroup's <vlan> says (an access port)
            ET.SubElement(root, "virtualport", {"type": mode.libvirt_virtualport})
            portgroup_vlan = vlan
        elif vlan is not None:
            notes.append(f"libvirt cannot tag VLAN {vlan} on a Linux bridge port; netmap "
                         "realize sets it on the port (bridge vlan filtering)")
    else:
        lower = binding.uplink
        if vlan is not None and mode.claims != "uplink":
            # libvirt tags VLANs on macvtap only for SR-IOV VFs: the macvtap sits on the
            # 802.1Q device instead, as netmap realize builds it (graph.endpoint_devices).
            lower = names.vlan_name(binding.uplink, vlan)
            notes.append(f"VLAN {vlan}: the macvtaps sit on {lower}, which must exist")
        elif vlan is not None:
            notes.append(f"VLAN {vlan}: the guest owns {lower} whole (passthrough); the "
                         "switch port or the guest must tag it")
        ET.SubElement(forward, "interface", {"dev": lower})
    notes.append(f"MTU {mtu}: libvirt takes it from {binding.uplink} (it applies <mtu> only "
                 "to networks it manages itself); give guests <mtu size='"
                 f"{mtu}'/> on their interfaces")
    # present so that `portgroup='NAME'` on a domain interface works on every host
    pg = ET.SubElement(root, "portgroup", {"name": network.name, "default": "yes"})
    if portgroup_vlan is not None:
        _vlan_element(pg, portgroup_vlan)
    return LibvirtNetwork(network.name, (network.name,), forward_mode, _render(root, notes),
                          tuple(notes))


def _vf_pool(fleet: Fleet, host: Host, uplink: str, bindings: list[Binding]) -> LibvirtNetwork:
    name = vf_pool_network(uplink)
    root = _root(name)
    attach = {b.vf_attach for b in bindings}
    notes: list[str] = []
    # hostdev hands the VF to the guest whole; passthrough puts a macvtap passthru on it.
    forward_mode = "hostdev" if attach == {"hostdev"} else "passthrough"
    if len(attach) > 1:
        notes.append(f"networks on {uplink} mix vf_attach hostdev and macvtap; one libvirt "
                     "pool serves one kind, so all get macvtap passthrough here")
    forward = ET.SubElement(root, "forward", {"mode": forward_mode})
    if forward_mode == "hostdev":
        forward.set("managed", "yes")
    ET.SubElement(forward, "pf", {"dev": uplink})
    for index, binding in enumerate(bindings):
        network = fleet.networks[binding.network]
        _identity(root, network, binding)
        attrs = {"name": network.name}
        if index == 0 and len(bindings) == 1:
            attrs["default"] = "yes"
        group = ET.SubElement(root, "portgroup", attrs)
        vlan = _vlan(network, binding)
        if vlan is not None:
            _vlan_element(group, vlan)
        if not binding.spoofchk:
            notes.append(f"{network.name}: spoof checking off is set by netmap realize; "
                         "libvirt has no setting for it")
    pool = host.uplinks[uplink].sriov
    notes.append(f"VFs of {uplink}: {pool.total_vfs if pool else 0} (sriov_numvfs must be "
                 "set before libvirt starts the network)")
    return LibvirtNetwork(name, tuple(b.network for b in bindings), forward_mode,
                          _render(root, notes), tuple(notes))


def _render(root: ET.Element, notes: list[str]) -> str:
    ET.register_namespace("netmap", NAMESPACE)
    for note in reversed(notes):
        root.insert(1, ET.Comment(f" {note.replace('--', '- -')} "))
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def macvtap_mode(mode: str) -> str:
    """netmap mode -> libvirt's <source mode=...> of a direct interface."""
    value = REGISTRY[mode].libvirt_direct_mode
    assert value is not None, f"{mode} makes no macvtap"
    return value
