"""When a VF of a PF is free: one answer for realize (which claims one), discover (which
counts the pool: total, configured, used, free) and drift (which compares the free part
with what the mapping's total_vfs lets check admit).

A VF is *used*, and never claimed, when any of these holds:

* netmap's state claims it (realize; discover sees the MAC such a claim set, below);
* it has no network netdev: bound to vfio-pci (libvirt's hostdev pool, a guest's
  passthrough) or to another driver that is not a network driver, or to none;
* its netdev is up, a bridge or bond port, or the lower device of a macvlan, macvtap or
  802.1Q link: the host itself uses it;
* its netdev has an address other than an IPv6 link-local one (those the kernel adds to
  every link it brings up by itself, so they say nothing about a user);
* its entry on the PF carries a MAC (not 00:00:00:00:00:00) other than the VF netdev's own:
  someone set it through the PF (`ip link set PF vf N mac ...`, libvirt's `<mac>` on a
  hostdev, netmap's own claim). A VF driver that picks a random MAC for itself reports it to
  the PF (igbvf does), so the entry then shows the netdev's own MAC, which is no claim.

Pure apart from `entry_macs`, which reads the PF's VF entries (IFLA_VFINFO_LIST).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from netmap.model.nic_values import ZERO_MAC

if TYPE_CHECKING:
    from netmap.steps.base import VirtualFunctionView


UPPER_KINDS = ("macvlan", "macvtap", "ipvlan", "vlan")  # devices that use a lower link


def holder(vf: VirtualFunctionView, *, up: bool = False, master: str | None = None,
           uppers: Sequence[str] = (), addresses: Sequence[str] = (),
           entry_mac: str | None = None, netdev_mac: str | None = None) -> str | None:
    """Why VF `vf` is used outside netmap's state (None: it is free). `addresses` are the
    netdev's addresses without the IPv6 link-local ones."""
    if vf.netdev is None:
        return f"bound to {vf.driver}" if vf.driver else "bound to no network driver (vfio or none)"
    if master:
        return f"port of {master}"
    if uppers:
        return f"lower of {', '.join(sorted(uppers))}"
    if up:
        return f"{vf.netdev} is up"
    if addresses:
        return f"{vf.netdev} has address {addresses[0]}"
    mac = (entry_mac or ZERO_MAC).lower()
    if mac != ZERO_MAC and mac != (netdev_mac or "").lower():
        return f"MAC {mac} set on the PF's VF entry"
    return None


def entry_macs(netns: str | None, pf_index: int) -> dict[int, str]:
    """VF index -> the MAC on the PF's entry for it; {} when the PF reports no entries."""
    from netmap.netlink import open_iproute

    with open_iproute(netns) as ipr:
        return read_entry_macs(ipr, pf_index)


def read_entry_macs(ipr: object, pf_index: int) -> dict[int, str]:
    """entry_macs through an open pyroute2 IPRoute (realize's)."""
    reply = ipr.link("get", index=pf_index, ext_mask=1)  # type: ignore[attr-defined]
    entries = reply[0].get_attr("IFLA_VFINFO_LIST")  # RTEXT_FILTER_VF asked for it
    out = {}
    for entry in entries.get_attrs("IFLA_VF_INFO") if entries is not None else ():
        mac = entry.get_attr("IFLA_VF_MAC") or {}
        if "vf" in mac:
            out[int(mac["vf"])] = str(mac["mac"])
    return out
