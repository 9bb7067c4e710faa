"""Whether a live vxlan device is the one a binding needs: VNI, underlay device, UDP port,
multicast group, source address and unicast remotes. The kernel changes none of these on
a live device, and a VTEP that differs in any of them reaches another overlay or none, so
realize and the QEMU helper use a device only when every one of them matches."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Sequence

from netmap.netlink import rtmsg, rtnl

RTM_GETNEIGH = 30
NDMSG = struct.Struct("BxxxiHBB")  # family, ifindex, state, flags, type


def fdb_dump_request() -> bytes:
    """The body of an RTM_GETNEIGH dump of every bridge FDB, vxlan devices' own included."""
    return NDMSG.pack(rtmsg.AF_BRIDGE, 0, 0, 0, 0)


def parse_flood_entry(buf: bytes, offset: int, end: int) -> tuple[int, str | None]:
    """An FDB entry as (ifindex, destination) when it floods (the all-zero MAC) to an
    underlay address, else (ifindex, None): what a vxlan device's remotes are."""
    _family, index, _state, _flags, _type = NDMSG.unpack_from(buf, offset)
    attrs = rtmsg.attr_spans(buf, offset + NDMSG.size, end)
    if rtmsg.span_mac(buf, attrs.get(rtmsg.NDA_LLADDR)) != "00:00:00:00:00:00":
        return index, None
    return index, rtmsg.span_ip(buf, attrs.get(rtmsg.NDA_DST))


def address(text: str | None) -> str | None:
    """Canonical text: the kernel and the mapping may spell one IPv6 address differently."""
    return str(ipaddress.ip_address(text)) if text else None


def flood_table(kernel: rtnl.Rtnl) -> dict[int, set[str]]:
    """ifindex -> the underlay addresses it floods to (its all-zero-MAC FDB entries): a
    vxlan device's remotes, and its group's own default entry."""
    table: dict[int, set[str]] = {}
    for owner, dst in kernel.dump(RTM_GETNEIGH, fdb_dump_request(), parse_flood_entry):
        if dst:
            table.setdefault(owner, set()).add(str(address(dst)))
    return table


def flood_remotes(kernel: rtnl.Rtnl, index: int) -> set[str]:
    """The underlay addresses device `index` floods to."""
    return flood_table(kernel).get(index, set())


def differences(kernel: rtnl.Rtnl, live: rtmsg.Link, *, vni: int, underlay: int | None,
                port: int, group: str | None, local: str | None, remotes: Sequence[str],
                name_of: Callable[[int | None], str]) -> list[str]:
    """What differs between `live` and the device wanted, as "key have (want X)" texts."""
    have: dict[str, object] = {
        "VNI": live.vni, "underlay": live.vxlan_link, "port": live.vxlan_port,
        "group": address(live.vxlan_group), "local": address(live.vxlan_local)}
    want: dict[str, object] = {"VNI": vni, "underlay": underlay, "port": port,
                               "group": address(group), "local": address(local)}
    shown: dict[str, Callable] = {"underlay": name_of}
    out = [f"{key} {shown.get(key, str)(have[key])} (want "
           f"{shown.get(key, str)(want[key]) if want[key] is not None else 'none'})"
           for key in want if have[key] != want[key]]
    # a group's own default entry floods too: it is not a remote
    found = flood_remotes(kernel, live.index) - {have["group"]}
    if found != {address(remote) for remote in remotes}:
        out.append(f"remotes {', '.join(sorted(found)) or 'none'} (want "
                   f"{', '.join(remotes) or 'none'})")
    return out
