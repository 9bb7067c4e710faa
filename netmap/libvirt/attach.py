"""The libvirt <interface> that attaches a guest NIC to the endpoint realize built. Pure.

Built from realize's attachment of a NIC (netlink's endpoint classes report the device,
the VF's PCI address, the MAC, model, MTU and queues); the kernel layer never writes XML.
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.sax.saxutils import quoteattr


def ethernet_xml(nic: Mapping[str, object]) -> str:
    """<interface type='ethernet'> on the device netmap made: libvirt must use it as it is
    (managed='no', libvirt >= 5.7) rather than create its own and plug it in itself. With
    several queues libvirt opens the tap (or the macvtap's /dev/tapN) once per queue."""
    queues = int(str(nic.get("queues") or 1))
    driver = [f"  <driver queues='{queues}'/>"] if queues > 1 else []
    return "\n".join([
        "<interface type='ethernet'>", f"  <mac address={quoteattr(str(nic['mac']))}/>",
        f"  <target dev={quoteattr(str(nic['device']))} managed='no'/>",
        f"  <model type={quoteattr(str(nic.get('model') or 'virtio'))}/>", *driver,
        f"  <mtu size='{nic['mtu']}'/>", "</interface>"])


def hostdev_xml(nic: Mapping[str, object]) -> str:
    """<interface type='hostdev'>: the VF handed to the guest whole (PCI passthrough), its
    MAC and VLAN set by libvirt on the PF's VF entry as realize set them."""
    pci = str(nic.get("pci") or "0000:00:00.0")
    domain, bus, slot_fn = pci.split(":")
    slot, function = slot_fn.split(".")
    vlan = [f"  <vlan><tag id='{nic['vlan']}'/></vlan>"] if nic.get("vlan") else []
    return "\n".join([
        "<interface type='hostdev' managed='yes'>",
        f"  <mac address={quoteattr(str(nic['mac']))}/>",
        f"  <source><address type='pci' domain='0x{domain}' bus='0x{bus}' "
        f"slot='0x{slot}' function='0x{function}'/></source>", *vlan, "</interface>"])


def interface_xml(nic: Mapping[str, object]) -> str:
    """The <interface> for one NIC of a realize result: on its device when realize made one
    (tap, macvtap, a VF netdev's macvtap), else the VF itself."""
    return ethernet_xml(nic) if nic.get("device") else hostdev_xml(nic)
