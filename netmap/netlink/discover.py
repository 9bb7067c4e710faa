"""Read the live host into a netmap.model.inventory.Inventory: links by netlink
(netmap.netlink.linkdump), SR-IOV pools and features from sysfs and /dev
(netmap.netlink.sysfs), under roots that tests point at fake trees.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from netmap.model.inventory import (
    PHYSICAL,
    Interface,
    Inventory,
    OvsPortState,
    OvsState,
    SriovPf,
    VirtualFunctionUse,
)
from netmap.netlink import sysfs, vf_pool
from netmap.netlink.linkdump import dump_addresses, dump_links, netns_path, open_route_socket
from netmap.netlink.vxlan_match import address, flood_table

__all__ = ["discover", "dump_addresses", "dump_links", "netns_path", "open_route_socket",
           "read_features", "read_sriov"]

# --- sysfs and /dev ---------------------------------------------------------------------------

def _vf_use(vf: sysfs.VirtualFunction, links: dict[str, Interface],
            uppers: dict[str, list[str]], entry_macs: dict[int, str]) -> VirtualFunctionUse:
    """The VF and why it is used (vf_pool.holder: one answer for discover and realize)."""
    link = links.get(vf.netdev or "")
    used_by = vf_pool.holder(
        vf, up=bool(link and link.admin_up), master=link.master if link else None,
        uppers=uppers.get(vf.netdev or "", []), addresses=link.addresses if link else (),
        entry_mac=entry_macs.get(vf.index), netdev_mac=link.mac if link else None)
    return VirtualFunctionUse(vf.index, vf.pci, vf.netdev, used_by,
                              entry_mac=entry_macs.get(vf.index))


def read_sriov(links: list[Interface], root: str | Path | None = None,
               entry_macs: Callable[[Interface], dict[int, str]] | None = None,
               ) -> dict[str, SriovPf]:
    """SR-IOV pools of the links that have one in sysfs (under `root`, for tests);
    `entry_macs` reads the MACs on a PF's VF entries (none read without it)."""
    by_name = {link.name: link for link in links}
    uppers: dict[str, list[str]] = {}
    for link in links:
        if link.lower:
            uppers.setdefault(link.lower, []).append(link.name)
    pools: dict[str, SriovPf] = {}
    for link in links:
        if link.kind not in (PHYSICAL, "veth"):
            continue
        info = sysfs.sriov_info(link.name, root)
        if info is None or info.total_vfs <= 0:
            continue
        macs = entry_macs(link) if entry_macs and info.vfs else {}
        vfs = tuple(_vf_use(vf, by_name, uppers, macs) for vf in info.vfs)
        pools[link.name] = SriovPf(link.name, info.total_vfs, info.num_vfs, vfs)
    return pools


def _entry_macs(netns: str | None) -> Callable[[Interface], dict[int, str]]:
    def read(pf: Interface) -> dict[int, str]:
        from pyroute2.netlink.exceptions import NetlinkError  # only for a PF with VFs

        try:
            return vf_pool.entry_macs(netns, pf.index)
        except (OSError, NetlinkError):  # the PF went away meanwhile: its VFs with it
            return {}
    return read


def read_features(sriov: dict[str, SriovPf], *, sysfs_root: str | Path | None = None,
                  dev_root: str | Path = "/dev") -> frozenset[str]:
    """Host features (model.KNOWN_FEATURES) the kernel offers now. Machine-wide: the same
    in every network namespace. A module counts once it is loaded or built in."""
    root = sysfs.sysfs_root(sysfs_root)
    dev = Path(dev_root)
    found = set()
    if sysfs.has_vhost_net(dev):
        found.add("vhost-net")
    if sysfs.has_tun(dev):
        found.add("tun")
    # /sys/class/macvtap appears when the macvtap driver registers its char device class.
    if (root / "class" / "macvtap").is_dir() or (root / "module" / "macvtap").is_dir():
        found.add("macvtap")
    for module in ("vxlan", "bridge"):
        if (root / "module" / module).is_dir():
            found.add(module)
    if any(pool.num_vfs > 0 for pool in sriov.values()):
        found.add("sriov")
    return frozenset(found)


def _with_remotes(link: Interface, floods: set[str]) -> Interface:
    """A vxlan device's unicast remotes: what it floods to, but its group's own entry."""
    group = address(link.vxlan_group)
    return replace(link, vxlan_remotes=tuple(sorted((d for d in floods if d != group),
                                                    key=ipaddress.ip_address)))


def read_ovs(remote: str, timeout: float = 5.0) -> OvsState:
    """OVSDB's bridges and ports, and whether ovs-vswitchd runs; an unreachable OVSDB is
    reported in the result (drift names it), never raised."""
    from netmap.errors import ApplyError
    from netmap.netlink import ovsdb

    try:
        with ovsdb.connected(remote, timeout) as db:
            bridges = db.bridges()
            running = db.vswitchd_running()
    except ApplyError as err:
        return OvsState(remote, error=err.problem)
    ports = tuple(OvsPortState(port.name, bridge.name, port.tag, port.trunks,
                               tuple(sorted(port.external_ids.items())),
                               tuple(i.type for i in port.interfaces))
                  for bridge in bridges.values() for port in bridge.ports.values())
    return OvsState(remote, {b.name: b.datapath_type for b in bridges.values()}, ports,
                    running)


def discover(netns: str | None = None, *, sysfs_root: str | Path | None = None,
             dev_root: str | Path = "/dev", hostname: str | None = None,
             ovsdb: str | None = None) -> Inventory:
    """The whole inventory of this host, or of network namespace `netns`.

    sysfs shows the links of the namespace that mounted it, so for another namespace the
    SR-IOV pools are read only from an explicit sysfs root (a fake tree in tests, or a
    sysfs mounted inside that namespace). With `ovsdb` (a remote), Open vSwitch too.
    """
    sock = open_route_socket(netns)
    try:
        links = dump_links(sock)
        addresses = dump_addresses(sock)
        # the FDB only when there is a vxlan device to read remotes for: it can be large
        floods = flood_table(sock) if any(link.kind == "vxlan" for link in links) else {}
        # bridge ports' VLANs only when there are bridge ports to read them for
        ports = sock.bridge_vlans() if any(link.master for link in links) else None
    finally:
        sock.close()
    links = [replace(link, addresses=addresses[link.index]) if link.index in addresses
             else link for link in links]
    links = [_with_remotes(link, floods[link.index])
             if link.kind == "vxlan" and link.index in floods else link for link in links]
    if ports is not None:
        bridges = {link.name for link in links if link.kind == "bridge"}
        links = [replace(link, vlans=tuple(sorted(ports.get(link.name, {})))) if link.master
                 in bridges else link for link in links]
    explicit_root = sysfs_root is not None or bool(os.environ.get("NETMAP_SYSFS"))
    # The machine's own /sys lists the root namespace's links: reading it for a namespace's
    # link of the same name would describe another device.
    sriov = read_sriov(links, sysfs_root, _entry_macs(netns)) if netns is None or \
        explicit_root else {}
    features = read_features(sriov, sysfs_root=sysfs_root, dev_root=dev_root)
    vf_netdevs = frozenset(vf.netdev for pool in sriov.values() for vf in pool.vfs if vf.netdev)
    return Inventory(hostname or socket.gethostname(), netns, tuple(links), sriov, features,
                     vf_netdevs, read_ovs(ovsdb) if ovsdb else None)
