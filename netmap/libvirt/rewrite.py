"""What the libvirt hook changes in a migrating domain: host-side sources only.

Each interface netmap mapped gets the source its network has on the destination:
- direct: <source dev=... mode=...> -> the destination's uplink (or its VLAN device, when
  the source used one) and macvtap mode;
- bridge: <source bridge=...> -> the destination's bridge (or vxlan bridge);
- network: <source network=... portgroup=...> -> the destination's libvirt network (the
  VF pool of its PF for SR-IOV) and the logical network as portgroup.
When the destination realizes a network in another family (macvtap here, a bridge there)
the interface's type attribute and its <source> tag change together; both are host-side.
A change the guest would see (a virtio NIC becoming a VF, or back) is refused instead.

Each change is a byte span of the original document and its new bytes (`apply_rewrites`).
"""

from __future__ import annotations

from xml.etree import ElementTree as ET

from netmap.libvirt.domain import DomainImport
from netmap.libvirt.interfaces import Interface
from netmap.libvirt.networks import libvirt_network_for, macvtap_mode
from netmap.libvirt.xmlsafe import XmlDocument, escape_attribute
from netmap.model import names
from netmap.model.fleet import Binding, Fleet, Host
from netmap.modes import mode_of
from netmap.rules.check import ERROR, Finding

Rewrite = tuple[int, int, bytes]


def plan_rewrites(imported: DomainImport, fleet: Fleet, source: str | None,
                  dest: Host) -> tuple[list[Rewrite], list[Finding]]:
    doc = imported.document
    rewrites: list[Rewrite] = []
    problems: list[Finding] = []
    src_host = fleet.hosts.get(source) if source else None
    for iface in imported.interfaces:
        if iface.nic is None or iface.network is None:
            continue
        binding = dest.bindings[iface.network]  # the check passed: the binding exists
        before = src_host.bindings.get(iface.network) if src_host else None
        wanted, problem = _wanted_source(iface, iface.network, binding, before, dest, fleet)
        if problem:
            problems.append(Finding("CANNOT_REWRITE", ERROR, iface.nic,
                                    f"{iface.label}: {problem}", _HINT))
            continue
        if wanted is None:
            continue
        kind, attrs = wanted
        rewrites.extend(_changes(doc, iface, kind, attrs))
        if kind == "bridge":
            network = fleet.networks[iface.network]
            vlan = binding.vlan if binding.vlan is not None else network.vlan
            rewrites.extend(_virtualport_changes(doc, iface, mode_of(binding).libvirt_virtualport,
                                                 vlan))
    return rewrites, problems


def _virtualport_changes(doc: XmlDocument, iface: Interface, wanted: str | None,
                         vlan: int | None) -> list[Rewrite]:
    """An OVS bridge wants <virtualport type='openvswitch'/> (libvirt adds the port through
    OVSDB) and the VLAN as <vlan><tag>, which libvirt sets as the port's tag; a Linux bridge
    takes neither (netmap's bridge mode tags the port itself). Host-side only: the guest
    sees the same virtio NIC and MAC either way."""
    element = iface.element
    have = element.find("virtualport")
    if wanted is not None and have is None:
        _, end = doc.start_tag(element)
        added = f"<virtualport type='{wanted}'/>"
        if vlan is not None and element.find("vlan") is None:
            added += f"<vlan><tag id='{vlan}'/></vlan>"
        return [(end, end, added.encode())]
    if wanted is None and have is not None and have.get("type") == "openvswitch":
        changes = [_element_span(doc, have)]
        tagged = element.find("vlan")
        if tagged is not None:
            changes.append(_element_span(doc, tagged))
        return [(_with_its_line(doc.data, start), end, b"") for start, end in changes]
    return []


def _with_its_line(data: bytes, start: int) -> int:
    """Where a removed element's line starts: its indentation and line break go with it."""
    while start > 0 and data[start - 1:start] in (b" ", b"\t"):
        start -= 1
    return start - 1 if data[start - 1:start] == b"\n" else start


def _element_span(doc: XmlDocument, element: ET.Element) -> tuple[int, int]:
    """Byte span of a whole element: its start tag, and for one with content, up to and
    including its end tag (<virtualport> and <vlan> hold no element of the same name)."""
    start, end = doc.start_tag(element)
    if doc.data[start:end].rstrip(b">").rstrip().endswith(b"/"):
        return start, end
    closing = f"</{element.tag}".encode()
    at = doc.data.index(closing, end)
    return start, doc.data.index(b">", at) + 1


_HINT = ("bind the network the same way on both hosts, or describe the NIC as "
         "<interface type='network'> on a network from 'netmap libvirt-networks' (a VF "
         "pool for SR-IOV), which every host resolves for itself")


def _is_vf(binding: Binding | None) -> bool:
    return (binding is not None and mode_of(binding).claims == "vf"
            and binding.vf_attach == "hostdev")


def _wanted_source(iface: Interface, network: str, binding: Binding, before: Binding | None,
                   dest: Host, fleet: Fleet) -> tuple[tuple[str, dict[str, str]] | None, str]:
    """(interface type, source attributes) on the destination, or why it cannot be."""
    if iface.type == "hostdev":
        return None, ("a VF given by its PCI address on the source host cannot follow the "
                      f"guest: {dest.name}'s VFs have other addresses")
    if iface.type not in ("direct", "bridge", "network"):
        return None, ""  # ethernet, vhostuser, vdpa: nothing host-side netmap can name
    if _is_vf(before) != _is_vf(binding) and iface.type == "network":
        return None, (f"{network} is "
                      f"{'a VF' if _is_vf(before) else 'a virtio NIC'} on the source but "
                      f"{'a VF' if _is_vf(binding) else 'not a VF'} on {dest.name}; the "
                      "guest would see another device")
    mode = mode_of(binding)
    if iface.type == "network" or mode.libvirt_type == "network":
        if iface.type != "network":
            return None, (f"{dest.name} realizes {network} with SR-IOV VFs, which a "
                          f"{iface.type} interface cannot use")
        name, portgroup = libvirt_network_for(dest, network)
        attrs = {"network": name}
        if portgroup:  # a VF pool: the portgroup says which network (and VLAN)
            attrs["portgroup"] = portgroup
        return ("network", attrs), ""
    bridge = mode.guest_bridge(binding, fleet.networks[network])
    if bridge is not None:
        return ("bridge", {"bridge": bridge}), ""
    assert mode.libvirt_type == "direct"
    lower = binding.uplink
    vlan = binding.vlan if binding.vlan is not None else fleet.networks[network].vlan
    used_vlan_device = iface.type == "direct" and "." in iface.source.get("dev", "")
    if vlan is not None and used_vlan_device:
        lower = names.vlan_name(binding.uplink, vlan)
    return ("direct", {"dev": lower, "mode": macvtap_mode(binding.mode)}), ""


def _changes(doc: XmlDocument, iface: Interface, kind: str,
             attrs: dict[str, str]) -> list[Rewrite]:
    element = iface.element
    source = element.find("source")
    same_attrs = source is not None and set(attrs) <= set(source.attrib) and (
        kind == iface.type)
    if same_attrs:
        assert source is not None
        changes = []
        for key, value in attrs.items():
            if source.get(key) == value:
                continue
            span = doc.attribute_value_span(source, key)
            assert span is not None
            changes.append((span[0], span[1], escape_attribute(value)))
        return changes
    changes = []
    if kind != iface.type:
        span = doc.attribute_value_span(element, "type")
        assert span is not None
        changes.append((span[0], span[1], escape_attribute(kind)))
    if source is not None:
        start, end = doc.start_tag(source)
        changes.append((start, end, _source_tag(doc.data[start:end], attrs, source, kind,
                                                iface.type)))
    else:
        # no <source> at all: add one right after the interface's start tag
        _, end = doc.start_tag(element)
        changes.append((end, end, _source_tag(b"<source/>", attrs, ET.Element("source"),
                                              kind, iface.type)))
    return changes


# attributes of <source> that say where the interface attaches; the rest are kept
_PLACEMENT = {"direct": ("dev", "mode"), "bridge": ("bridge",),
              "network": ("network", "portgroup", "portid", "bridge")}


def _source_tag(old: bytes, attrs: dict[str, str], source: ET.Element, kind: str,
                old_kind: str) -> bytes:
    """A new <source ...> start tag: kept attributes in their order, then the new ones."""
    dropped = set(_PLACEMENT.get(old_kind, ())) | set(attrs)
    if kind != old_kind:
        dropped |= set(_PLACEMENT.get(kind, ()))
    quote = b'"' if b'"' in old and b"'" not in old else b"'"
    parts = [b"<source"]
    for key, value in source.attrib.items():
        if key not in dropped:
            parts.append(b" " + key.encode() + b"=" + quote + escape_attribute(value) + quote)
    for key, value in attrs.items():
        parts.append(b" " + key.encode() + b"=" + quote + escape_attribute(value) + quote)
    closing = b"/>" if old.rstrip().endswith(b"/>") else b">"
    return b"".join(parts) + closing
