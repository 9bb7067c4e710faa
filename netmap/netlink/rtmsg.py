"""rtnetlink messages, packed and parsed with struct: only what realize needs.

Requests are (message type, extra flags, body) tuples that Rtnl.batch() numbers and sends;
Link is the few attributes of a live interface that realize compares.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK, RTM_GETADDR = 16, 17, 18, 19, 22
IFA_ADDRESS, IFA_LOCAL, RT_SCOPE_UNIVERSE = 1, 2, 0
RTM_NEWNEIGH, NDA_DST, NDA_LLADDR, NUD_PERMANENT, NTF_SELF = 28, 1, 2, 0x80, 0x02
F_REQUEST, F_MULTI, F_ACK, F_DUMP = 0x1, 0x2, 0x4, 0x300
F_EXCL, F_CREATE, F_APPEND, F_ACK_TLVS = 0x200, 0x400, 0x800, 0x200
AF_UNSPEC, AF_BRIDGE = 0, 7
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_AF_SPEC, IFLA_GROUP, IFLA_EXT_MASK = 16, 18, 26, 27, 29
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND = 1, 2, 4
IFLA_BR_AGEING_TIME, IFLA_BR_VLAN_FILTERING = 4, 7
IFLA_MACVLAN_MODE = 1
IFLA_VLAN_ID = 1
IFLA_VXLAN_ID, IFLA_VXLAN_GROUP, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL = 1, 2, 3, 4
IFLA_VXLAN_PORT = 15
IFLA_BRIDGE_VLAN_INFO = 2
BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED = 0x2, 0x4
RTEXT_FILTER_BRVLAN, RTEXT_FILTER_SKIP_STATS = 0x2, 0x8
NLMSGERR_ATTR_MSG = 1
MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8, "source": 16}
MACVLAN_MODE_NAMES = {v: k for k, v in MACVLAN_MODES.items()}
TUNSETIFF, TUNSETPERSIST = 0x400454CA, 0x400454CB
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000


@dataclass(frozen=True)
class Link:
    """The attributes of a live interface that realize compares."""

    index: int
    name: str
    kind: str | None = None
    up: bool = False
    mtu: int = 0
    address: str | None = None
    master: int | None = None
    lower: int | None = None  # IFLA_LINK: the lower device of a macvtap, vlan
    macvlan_mode: str | None = None
    vlan_id: int | None = None
    vni: int | None = None
    vxlan_link: int | None = None
    vlan_filtering: bool | None = None
    ageing: int | None = None
    group: int = 0


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("HH", size, kind) + payload + b"\0" * (-size % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("I", value))


def _str(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _mac(kind: int, mac: str) -> bytes:
    return _attr(kind, bytes.fromhex(mac.replace(":", "")))


def _attrs(data: bytes, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    end = len(data)
    while offset + 4 <= end:
        size, kind = struct.unpack_from("HH", data, offset)
        if size < 4:
            return
        yield kind & 0x3FFF, data[offset + 4:offset + size]
        offset += (size + 3) & ~3


def _cstr(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode()


# IFLA_AF_SPEC { AF_INET6 { IFLA_INET6_ADDR_GEN_MODE: NONE } }: the devices netmap makes are
# L2 plumbing for guests; like os-vif (which disables IPv6 on its bridges) the host gets no
# link-local address on them, so it neither talks on nor is reachable from guest segments,
# and a macvtap never sends DAD/MLD with the guest's MAC. The kernel accepts it only once
# the device exists (EAFNOSUPPORT in the creating request): a set right after, pipelined.
AF_INET6, IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE = 10, 8, 1
NO_IPV6_ADDR = _attr(IFLA_AF_SPEC, _attr(AF_INET6, _attr(IFLA_INET6_ADDR_GEN_MODE,
                                                         bytes([IN6_ADDR_GEN_MODE_NONE]))))


def ifinfo(index: int = 0, *, up: bool | None = None, family: int = AF_UNSPEC) -> bytes:
    flags = IFF_UP if up else 0
    change = IFF_UP if up is not None else 0
    return struct.pack("BxHiII", family, 0, index, flags, change)


def new_link(name: str, kind: str, *, up: bool = True, mtu: int | None = None,
             mac: str | None = None, lower: int | None = None, master: int | None = None,
             data: bytes = b"") -> tuple[int, int, bytes]:
    body = ifinfo(up=up) + _str(IFLA_IFNAME, name)
    if mtu:
        body += _u32(IFLA_MTU, mtu)
    if mac:
        body += _mac(IFLA_ADDRESS, mac)
    if lower:
        body += _u32(IFLA_LINK, lower)
    if master:
        body += _u32(IFLA_MASTER, master)
    info = _str(IFLA_INFO_KIND, kind) + (_attr(IFLA_INFO_DATA, data) if data else b"")
    return RTM_NEWLINK, F_CREATE | F_EXCL, body + _attr(IFLA_LINKINFO, info)


def set_link(index: int, *, name: str | None = None, up: bool | None = None,
             mtu: int | None = None, mac: str | None = None, master: int | None = None,
             group: int | None = None, kind: str | None = None, data: bytes = b"",
             no_ipv6: bool = False) -> tuple[int, int, bytes]:
    body = ifinfo(index, up=up) + (_str(IFLA_IFNAME, name) if name and not index else b"")
    if no_ipv6:
        body += NO_IPV6_ADDR
    if mtu:
        body += _u32(IFLA_MTU, mtu)
    if mac:
        body += _mac(IFLA_ADDRESS, mac)
    if master is not None:
        body += _u32(IFLA_MASTER, master)  # 0 takes the port out of its bridge
    if group is not None:
        body += _u32(IFLA_GROUP, group)
    if kind:
        body += _attr(IFLA_LINKINFO, _str(IFLA_INFO_KIND, kind) + _attr(IFLA_INFO_DATA, data))
    return RTM_NEWLINK, 0, body


def no_ipv6(name: str) -> tuple[int, int, bytes]:
    return set_link(0, name=name, no_ipv6=True)


def fdb_append(index: int, dst: str) -> tuple[int, int, bytes]:
    """`bridge fdb append 00:00:00:00:00:00 dev VXLAN dst DST`: flood to a unicast peer
    (head-end replication), for a vxlan device without a multicast group."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    body = struct.pack("BxxxiHBB", AF_BRIDGE, index, NUD_PERMANENT, NTF_SELF, 0)
    body += _attr(NDA_LLADDR, bytes(6)) + _attr(NDA_DST, socket.inet_pton(family, dst))
    return RTM_NEWNEIGH, F_CREATE | F_APPEND, body


def del_link(index: int = 0, name: str | None = None) -> tuple[int, int, bytes]:
    """Delete by index, or by name (index 0), so a batch needs no lookup first."""
    return RTM_DELLINK, 0, ifinfo(index) + (_str(IFLA_IFNAME, name) if name else b"")


def del_group(group: int) -> tuple[int, int, bytes]:
    """Delete every link of `group` in one request: the kernel unregisters them as one
    batch, paying its RCU grace periods once instead of once per device."""
    return RTM_DELLINK, 0, ifinfo() + _u32(IFLA_GROUP, group)


def bridge_vlan(port: int, vid: int, *, access: bool, add: bool = True,
                ) -> tuple[int, int, bytes]:
    flags = BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED if access else 0
    spec = _attr(IFLA_BRIDGE_VLAN_INFO, struct.pack("HH", flags, vid))
    return (RTM_SETLINK if add else RTM_DELLINK, 0,
            ifinfo(port, family=AF_BRIDGE) + _attr(IFLA_AF_SPEC, spec))


def macvtap_data(mode: str) -> bytes:
    return _u32(IFLA_MACVLAN_MODE, MACVLAN_MODES[mode])


def vlan_filtering_data(on: bool) -> bytes:
    return _attr(IFLA_BR_VLAN_FILTERING, bytes([int(on)]))


def bridge_data(ageing: int, vlan_filtering: bool) -> bytes:
    # vlan_filtering only when wanted: kernels without CONFIG_BRIDGE_VLAN_FILTERING refuse
    # the attribute even when it says 0
    data = _u32(IFLA_BR_AGEING_TIME, ageing)
    return data + (_attr(IFLA_BR_VLAN_FILTERING, b"\1") if vlan_filtering else b"")


def vlan_data(vid: int) -> bytes:
    return _attr(IFLA_VLAN_ID, struct.pack("H", vid))


def vxlan_data(vni: int, lower: int, port: int, group: str | None, local: str | None) -> bytes:
    data = _u32(IFLA_VXLAN_ID, vni) + _u32(IFLA_VXLAN_LINK, lower)
    data += _attr(IFLA_VXLAN_PORT, struct.pack("!H", port))
    if group:
        data += _attr(IFLA_VXLAN_GROUP, socket.inet_aton(group))
    if local:
        data += _attr(IFLA_VXLAN_LOCAL, socket.inet_aton(local))
    return data


def _parse_link(payload: bytes) -> Link:
    _family, _type, index, flags, _change = struct.unpack_from("BxHiII", payload)
    fields: dict[str, object] = {"index": index, "up": bool(flags & IFF_UP)}
    for kind, value in _attrs(payload, 16):
        if kind == IFLA_IFNAME:
            fields["name"] = _cstr(value)
        elif kind == IFLA_MTU:
            fields["mtu"] = struct.unpack("I", value[:4])[0]
        elif kind == IFLA_ADDRESS and len(value) == 6:
            fields["address"] = ":".join(f"{b:02x}" for b in value)
        elif kind == IFLA_MASTER:
            fields["master"] = struct.unpack("I", value[:4])[0]
        elif kind == IFLA_LINK:
            fields["lower"] = struct.unpack("I", value[:4])[0]
        elif kind == IFLA_GROUP:
            fields["group"] = struct.unpack("I", value[:4])[0]
        elif kind == IFLA_LINKINFO:
            _parse_linkinfo(value, fields)
    return Link(**fields)  # type: ignore[arg-type]


def _parse_linkinfo(value: bytes, fields: dict[str, object]) -> None:
    info = dict(_attrs(value))
    kind = _cstr(info[IFLA_INFO_KIND]) if IFLA_INFO_KIND in info else None
    fields["kind"] = kind
    data = dict(_attrs(info.get(IFLA_INFO_DATA, b"")))
    if kind in ("macvtap", "macvlan") and IFLA_MACVLAN_MODE in data:
        mode = struct.unpack("I", data[IFLA_MACVLAN_MODE][:4])[0]
        fields["macvlan_mode"] = MACVLAN_MODE_NAMES.get(mode, str(mode))
    elif kind == "vlan" and IFLA_VLAN_ID in data:
        fields["vlan_id"] = struct.unpack("H", data[IFLA_VLAN_ID][:2])[0]
    elif kind == "vxlan":
        if IFLA_VXLAN_ID in data:
            fields["vni"] = struct.unpack("I", data[IFLA_VXLAN_ID][:4])[0]
        if IFLA_VXLAN_LINK in data:
            fields["vxlan_link"] = struct.unpack("I", data[IFLA_VXLAN_LINK][:4])[0]
    elif kind == "bridge":
        if IFLA_BR_VLAN_FILTERING in data:
            fields["vlan_filtering"] = bool(data[IFLA_BR_VLAN_FILTERING][0])
        if IFLA_BR_AGEING_TIME in data:
            fields["ageing"] = struct.unpack("I", data[IFLA_BR_AGEING_TIME][:4])[0]
