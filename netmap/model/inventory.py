"""What a live host has, as frozen dataclasses: interfaces, SR-IOV pools, features. Pure.

Filled by netmap.netlink.discover (netlink + sysfs); read by drift.py and draft.py. Nothing
here talks to the kernel, so drift and draft are tested from hand-built inventories too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Interface kinds netmap tells apart. Anything else keeps the kernel's own kind string.
PHYSICAL, LOOPBACK = "physical", "loopback"
UPLINK_KINDS = frozenset({PHYSICAL, "bond", "veth", "team"})
# The shape of names.tap_name(): "nm" + 9 hex digits + the NIC index's last digit.
NETMAP_ENDPOINT_NAME = re.compile(r"^nm[0-9a-f]{9}[0-9]$")


# Container runtimes name the host side of a container's veth "veth" + random hex.
CONTAINER_VETH = re.compile(r"^veth[0-9a-f]{4,}$")


def is_netmap_endpoint(name: str) -> bool:
    """Whether `name` looks like an endpoint netmap created for a guest NIC."""
    return bool(NETMAP_ENDPOINT_NAME.match(name))


@dataclass(frozen=True)
class Interface:
    """One link as netlink reports it, reduced to what netmap reasons about."""

    index: int
    name: str
    kind: str  # physical, loopback, veth, bridge, bond, macvtap, macvlan, vxlan, tap, tun, ...
    mtu: int
    mac: str | None = None
    admin_up: bool = False
    oper_state: str = "unknown"  # up, down, lowerlayerdown, dormant, notpresent, unknown
    carrier: bool | None = None
    master: str | None = None  # bridge or bond this link is a port of
    lower: str | None = None  # macvlan/macvtap lower device, vxlan underlay device
    mode: str | None = None  # macvlan/macvtap: bridge, vepa, private, passthru, source
    vni: int | None = None
    vxlan_port: int | None = None
    vxlan_group: str | None = None
    vxlan_local: str | None = None
    vxlan_remotes: tuple[str, ...] = ()  # unicast peers it floods to (FDB), sorted
    bond_mode: int | None = None
    vlan_id: int | None = None  # an 802.1Q sub-interface's VLAN, on `lower`
    perm_mac: str | None = None  # the NIC's burnt-in address: survives renames and MAC changes
    altnames: tuple[str, ...] = ()
    parent: str | None = None  # bus address of the device behind it, e.g. PCI 0000:3b:00.0
    addresses: tuple[str, ...] = ()  # global-scope "address/prefix": a vxlan underlay's source
    multi_queue: bool | None = None  # a tap made with IFF_MULTI_QUEUE (None: not a tap)
    vlans: tuple[int, ...] | None = None  # a port's VLANs on a vlan-filtering bridge (None: unread)

    @property
    def running(self) -> bool:
        """Passes frames: administratively up and the link layer reports carrier.

        A veth or tap whose peer is down reports "lowerlayerdown"/"down"; a device without
        operstate support reports "unknown", where carrier is the only signal.
        """
        if not self.admin_up:
            return False
        if self.oper_state == "up":
            return True
        return self.oper_state == "unknown" and self.carrier is not False

    @property
    def hardware_mac(self) -> str | None:
        return self.perm_mac or self.mac

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "index": self.index, "name": self.name, "kind": self.kind, "mtu": self.mtu,
            "mac": self.mac, "admin_up": self.admin_up, "oper_state": self.oper_state,
            "carrier": self.carrier, "master": self.master, "lower": self.lower,
        }
        optional = {
            "mode": self.mode, "vni": self.vni, "vxlan_port": self.vxlan_port,
            "vxlan_group": self.vxlan_group, "vxlan_local": self.vxlan_local,
            "bond_mode": self.bond_mode, "vlan_id": self.vlan_id, "perm_mac": self.perm_mac,
            "parent": self.parent, "multi_queue": self.multi_queue,
        }
        data.update({key: value for key, value in optional.items() if value is not None})
        if self.altnames:
            data["altnames"] = list(self.altnames)
        if self.addresses:
            data["addresses"] = list(self.addresses)
        if self.vxlan_remotes:
            data["vxlan_remotes"] = list(self.vxlan_remotes)
        if self.vlans is not None:
            data["vlans"] = list(self.vlans)
        return data


@dataclass(frozen=True)
class VirtualFunctionUse:
    """One VF of a PF and whether something holds it."""

    index: int
    pci: str
    netdev: str | None  # None: bound to vfio-pci or another non-network driver
    used_by: str | None = None  # why it counts as used: "vfio", "port of br0", "lower of nm…"
    entry_mac: str | None = None  # the MAC on the PF's entry for it (None: not read)

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "pci": self.pci, "netdev": self.netdev,
                "used_by": self.used_by}


@dataclass(frozen=True)
class SriovPf:
    """An SR-IOV physical function: sriov_totalvfs, sriov_numvfs, and the VFs behind virtfn*."""

    name: str
    total_vfs: int  # what the NIC can offer (sriov_totalvfs)
    num_vfs: int  # what is configured now (sriov_numvfs)
    vfs: tuple[VirtualFunctionUse, ...] = ()

    @property
    def used_vfs(self) -> int:
        return sum(1 for vf in self.vfs if vf.used_by)

    @property
    def free_vfs(self) -> int:
        return max(self.num_vfs - self.used_vfs, 0)

    def as_dict(self) -> dict[str, object]:
        return {"pf": self.name, "total_vfs": self.total_vfs, "num_vfs": self.num_vfs,
                "used_vfs": self.used_vfs, "free_vfs": self.free_vfs,
                "vfs": [vf.as_dict() for vf in self.vfs]}


@dataclass(frozen=True)
class OvsPortState:
    """One port of an Open vSwitch bridge, as OVSDB holds it."""

    name: str
    bridge: str
    tag: int | None = None
    trunks: tuple[int, ...] = ()
    external_ids: tuple[tuple[str, str], ...] = ()
    interface_types: tuple[str, ...] = ()  # "" (a system device), internal, patch, ...

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "bridge": self.bridge, "tag": self.tag,
                "trunks": list(self.trunks), "external_ids": dict(self.external_ids),
                "interface_types": list(self.interface_types)}


@dataclass(frozen=True)
class OvsState:
    """What OVSDB says: its bridges and their ports, and whether ovs-vswitchd runs.
    `error`: why OVSDB could not be read (then nothing else is known)."""

    remote: str
    bridges: dict[str, str] = field(default_factory=dict)  # name -> datapath type
    ports: tuple[OvsPortState, ...] = ()
    vswitchd_running: bool = False
    error: str | None = None

    def port(self, name: str) -> OvsPortState | None:
        return next((p for p in self.ports if p.name == name), None)

    def as_dict(self) -> dict[str, object]:
        return {"remote": self.remote, "error": self.error,
                "vswitchd_running": self.vswitchd_running,
                "bridges": [{"name": name, "datapath_type": kind,
                             "ports": [p.as_dict() for p in self.ports if p.bridge == name]}
                            for name, kind in self.bridges.items()]}


@dataclass(frozen=True)
class Inventory:
    """Everything discovered on one host (or one network namespace)."""

    hostname: str
    netns: str | None
    interfaces: tuple[Interface, ...]
    sriov: dict[str, SriovPf] = field(default_factory=dict)  # PF netdev name -> pool
    features: frozenset[str] = frozenset()  # names from model.KNOWN_FEATURES
    vf_netdevs: frozenset[str] = frozenset()  # netdevs that are VFs of some PF
    ovs: OvsState | None = None  # None: OVSDB was not read

    def __post_init__(self) -> None:
        # Lookups by name and by MAC are what drift does most; build them once.
        object.__setattr__(self, "_by_name", {i.name: i for i in self.interfaces})

    def get(self, name: str) -> Interface | None:
        return self._by_name.get(name)  # type: ignore[attr-defined]

    def by_altname(self, name: str) -> Interface | None:
        return next((i for i in self.interfaces if name in i.altnames), None)

    def by_mac(self, mac: str) -> list[Interface]:
        mac = mac.lower()
        return [i for i in self.interfaces if mac in (i.perm_mac, i.mac)]

    def ports_of(self, master: str) -> list[Interface]:
        return [i for i in self.interfaces if i.master == master]

    def uppers_of(self, lower: str) -> list[Interface]:
        """Devices stacked on `lower`: macvlan/macvtap and vxlan using it."""
        return [i for i in self.interfaces if i.lower == lower]

    def uplink_candidates(self) -> list[Interface]:
        """Links that could be a mapping's uplink: NICs, bonds, lab veths; not a bond's
        slave (the bond is the uplink), not an SR-IOV VF (a guest's), not netmap's own."""
        out = []
        for link in self.interfaces:
            if link.kind not in UPLINK_KINDS or link.name in self.vf_netdevs:
                continue
            master = self.get(link.master) if link.master else None
            if master is not None and master.kind in ("bond", "team"):
                continue
            if is_netmap_endpoint(link.name):
                continue
            if link.kind == "veth" and link.master and CONTAINER_VETH.match(link.name):
                continue  # a container's host-side port (docker0, lxcbr0, podman)
            out.append(link)
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "hostname": self.hostname, "netns": self.netns,
            "features": sorted(self.features),
            "interfaces": [i.as_dict() for i in self.interfaces],
            "sriov": [pf.as_dict() for pf in self.sriov.values()],
            **({"ovs": self.ovs.as_dict()} if self.ovs is not None else {}),
        }
