"""The lab's migration bridge keeps its own MAC when a guest's tap joins it.

A Linux bridge whose address nobody set takes the lowest MAC of its ports. libvirt names a
guest's tap after the guest's MAC (52:54:00:... -> fe:54:00:...), so on a destination whose
uplink's random MAC is higher, the bridge carrying the migration address takes the incoming
guest's tap MAC. The source answers ARP with that MAC, and its own bridge has the very same
MAC as a local address (the source's tap of that guest): the migration stream's SYN is
delivered to the source itself and never leaves (tests/test_fleet_libvirt.py saw the source
stuck in SYN-SENT with the destination's address at fe:54:00:f1:00:01). Namespace prefix nmsw.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, ip_links, needs_netns

sys.path.insert(0, str(REPO / "scripts"))
import libvirt_lab  # scripts/ is not a package

pytestmark = [needs_netns]

UPLINK_MAC = "fe:ff:00:00:00:02"  # above every tap libvirt names fe:54:00:...


def test_migration_bridge_keeps_its_mac_when_a_guest_tap_joins(netns_factory) -> None:
    netns = netns_factory("nmsw")
    subprocess.run(["ip", "-n", netns, "-batch", "-"], check=True, text=True, input=(
        f"link add eno3 address {UPLINK_MAC} type veth peer name eno3p\n"
        "link set eno3 up\n"
        "tuntap add dev vnet0 mode tap\n"
        "link set vnet0 address fe:54:00:f1:00:01\n"))
    libvirt_lab.give_migration_address(netns, "eno3", "br-eno3", "10.251.0.2")
    subprocess.run(["ip", "-n", netns, "link", "set", "vnet0", "master", "br-eno3"],
                   check=True)
    (bridge,) = ip_links(netns, "br-eno3")
    assert bridge["address"] == UPLINK_MAC
