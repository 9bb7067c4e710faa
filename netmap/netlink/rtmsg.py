"""rtnetlink messages, packed and parsed with struct: netmap's one encoder and decoder.

Requests are (message type, extra flags, body) tuples that Rtnl.batch() numbers and sends.
Replies are read in place (attr_spans: attribute -> (start, end) in the receive buffer),
decoding only what a caller keeps. link_fields() is the one link parser: realize wraps its
result in a Link, discover in an Interface.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypedDict, overload

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_GETADDR = 22
IFA_ADDRESS, IFA_LOCAL, RT_SCOPE_UNIVERSE, RT_SCOPE_SITE = 1, 2, 0, 200
RTM_NEWNEIGH, NDA_DST, NDA_LLADDR, NUD_PERMANENT, NTF_SELF = 28, 1, 2, 0x80, 0x02
F_REQUEST, F_ACK, F_DUMP, F_DUMP_INTR = 0x1, 0x4, 0x300, 0x10
F_EXCL, F_CREATE, F_APPEND, F_ACK_TLVS = 0x200, 0x400, 0x800, 0x200
AF_UNSPEC, AF_BRIDGE = 0, 7
IFF_UP, IFF_LOOPBACK = 0x1, 0x8
ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_AF_SPEC, IFLA_GROUP, IFLA_EXT_MASK = 16, 18, 26, 27, 29
IFLA_CARRIER, IFLA_PROP_LIST, IFLA_ALT_IFNAME = 33, 52, 53
IFLA_PERM_ADDRESS, IFLA_PARENT_DEV_NAME = 54, 56
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_BR_AGEING_TIME, IFLA_BR_VLAN_FILTERING = 4, 7
IFLA_MACVLAN_MODE = 1
IFLA_VLAN_ID = 1
IFLA_VXLAN_ID, IFLA_VXLAN_GROUP, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL = 1, 2, 3, 4
IFLA_VXLAN_PORT, IFLA_VXLAN_GROUP6, IFLA_VXLAN_LOCAL6 = 15, 16, 17
IFLA_TUN_TYPE, IFLA_TUN_MULTI_QUEUE, IFLA_TUN_NUM_QUEUES, IFLA_TUN_NUM_DISABLED_QUEUES = 3, 7, 8, 9
IFLA_BOND_MODE = 1
IFLA_BRIDGE_VLAN_INFO = 2
BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED = 0x2, 0x4
RTEXT_FILTER_BRVLAN, RTEXT_FILTER_SKIP_STATS = 0x2, 0x8
NLMSGERR_ATTR_MSG = 1
MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8, "source": 16}
MACVLAN_MODE_NAMES = {v: k for k, v in MACVLAN_MODES.items()}
# <linux/if_tun.h>: the tun driver's ioctls, on an fd of /dev/net/tun (or of a macvtap)
TUNSETIFF, TUNSETPERSIST = 0x400454CA, 0x400454CB
TUNGETFEATURES, TUNGETIFF = 0x800454CF, 0x800454D2
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
IFF_MULTI_QUEUE = 0x0100
IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, flags, union padding (40 bytes)

NLMSGHDR = struct.Struct("=IHHII")
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_U16 = struct.Struct("=H")
_BE16 = struct.Struct("!H")


@dataclass(frozen=True)
class Link:
    """A live interface as rtnetlink reports it: ifindexes, not names; the kernel's own kind
    ("tun" for a tap, None for a NIC). What realize compares and discover reduces."""

    index: int
    name: str
    kind: str | None = None
    up: bool = False
    mtu: int = 0
    address: str | None = None
    master: int | None = None
    lower: int | None = None  # IFLA_LINK: the lower device of a macvtap, vlan; a veth's peer
    macvlan_mode: str | None = None
    vlan_id: int | None = None
    vni: int | None = None
    vxlan_link: int | None = None
    vlan_filtering: bool | None = None
    ageing: int | None = None
    group: int = 0
    # read by discover
    flags: int = 0  # IFF_*
    if_type: int = 0  # ARPHRD_*
    operstate: int | None = None  # IF_OPER_*
    carrier: bool | None = None
    perm_address: str | None = None
    parent: str | None = None
    altnames: tuple[str, ...] = ()
    tun_type: int | None = None  # IFF_TAP, or IFF_TUN (1)
    multi_queue: bool | None = None  # a tap made with IFF_MULTI_QUEUE (None: not a tap)
    tun_queues: int | None = None  # queues attached to a multi-queue tap, disabled ones too
    bond_mode: int | None = None
    vxlan_port: int | None = None
    vxlan_group: str | None = None
    vxlan_local: str | None = None


class _LinkHeader(TypedDict):
    """What link_fields() reads from every link message."""

    index: int
    name: str
    up: bool
    flags: int
    if_type: int
    mtu: int
    address: str | None
    master: int | None
    lower: int | None


class LinkFields(_LinkHeader, total=False):
    """link_fields()' result: Link's keyword arguments, those below only when reported."""

    group: int
    perm_address: str | None
    operstate: int
    carrier: bool
    parent: str
    altnames: tuple[str, ...]
    kind: str | None
    macvlan_mode: str
    vlan_id: int
    vni: int | None
    vxlan_link: int | None
    vxlan_port: int
    vxlan_group: str | None
    vxlan_local: str | None
    vlan_filtering: bool
    ageing: int | None
    tun_type: int
    multi_queue: bool
    tun_queues: int
    bond_mode: int


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("HH", size, kind) + payload + b"\0" * (-size % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("I", value))


def _str(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _mac(kind: int, mac: str) -> bytes:
    return _attr(kind, bytes.fromhex(mac.replace(":", "")))


def attr_spans(buf: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type -> (payload start, payload end) for one level of nesting; the last
    of a repeated type wins (see iter_attrs). Spans, not copies: a link dump's hot loop.
    Like the kernel's nla_ok(), an attribute longer than what is left ends the walk: a
    span never reaches past `end` into the next attribute or message."""
    found: dict[int, tuple[int, int]] = {}
    unpack = _RTATTR.unpack_from
    while start + 4 <= end:
        length, kind = unpack(buf, start)
        if length < 4 or start + length > end:
            break
        found[kind & 0x3FFF] = (start + 4, start + length)
        start += (length + 3) & ~3
    return found


def iter_attrs(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of every attribute of one level, repeats
    included (VLAN entries, alternative names). attr_spans is the same walk, kept inline
    for the dump's hot loop: a generator there costs discover a third more per link."""
    unpack = _RTATTR.unpack_from
    while start + 4 <= end:
        length, kind = unpack(buf, start)
        if length < 4 or start + length > end:
            return
        yield kind & 0x3FFF, start + 4, start + length
        start += (length + 3) & ~3


def span_str(buf: bytes, span: tuple[int, int]) -> str:
    return buf[span[0]:span[1]].split(b"\0", 1)[0].decode(errors="replace")


@overload
def span_u32(buf: bytes, span: tuple[int, int]) -> int: ...
@overload
def span_u32(buf: bytes, span: tuple[int, int] | None) -> int | None: ...
def span_u32(buf: bytes, span: tuple[int, int] | None) -> int | None:
    return None if span is None else _U32.unpack_from(buf, span[0])[0]


def span_mac(buf: bytes, span: tuple[int, int] | None) -> str | None:
    if span is None or span[1] - span[0] != 6:
        return None
    return buf[span[0]:span[1]].hex(":")


def span_ip(buf: bytes, span: tuple[int, int] | None) -> str | None:
    """An IPv4 or IPv6 address; None when absent or all zeros (unset)."""
    if span is None:
        return None
    raw = bytes(buf[span[0]:span[1]])
    if not any(raw):
        return None
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


# IFLA_AF_SPEC { AF_INET6 { IFLA_INET6_ADDR_GEN_MODE: NONE } }: the devices netmap makes are
# L2 plumbing for guests; like os-vif (which disables IPv6 on its bridges) the host gets no
# link-local address on them, so it neither talks on nor is reachable from guest segments,
# and a macvtap never sends DAD/MLD with the guest's MAC. The kernel accepts it only once
# the device exists (EAFNOSUPPORT in the creating request): a set right after, pipelined
# (set_link's no_ipv6).
AF_INET6, IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE = 10, 8, 1


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
             no_ipv6: bool = False, addr_gen_mode: int | None = None,
             ) -> tuple[int, int, bytes]:
    if no_ipv6:
        addr_gen_mode = IN6_ADDR_GEN_MODE_NONE
    if addr_gen_mode is not None and up:
        raise ValueError("the kernel brings a link up before it applies IFLA_AF_SPEC: "
                         "use up_without_ipv6")
    body = ifinfo(index, up=up) + (_str(IFLA_IFNAME, name) if name and not index else b"")
    if addr_gen_mode is not None:  # NONE, or the mode a device had before netmap (restored)
        body += _attr(IFLA_AF_SPEC, _attr(AF_INET6, _attr(IFLA_INET6_ADDR_GEN_MODE,
                                                          bytes([addr_gen_mode]))))
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


def up_without_ipv6(index: int = 0, *, name: str | None = None, up: bool = True,
                    **attrs: object) -> list[tuple[int, int, bytes]]:
    """IPv6 address generation off, then the other attributes and up: two requests, in
    this order. Within one request the kernel (do_setlink) applies IFF_UP before
    IFLA_AF_SPEC, so a link brought up by the same request already has its link-local
    address, and has sent DAD from its MAC, when generation is turned off."""
    return [set_link(index, name=name, no_ipv6=True),
            set_link(index, name=name, up=up, **attrs)]  # type: ignore[arg-type]


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


def vxlan_data(vni: int, lower: int, port: int, group: str | None, local: str | None,
               remotes: Sequence[str] = ()) -> bytes:
    """IFLA_INFO_DATA of a vxlan device; an IPv6 underlay takes the *6 attributes."""
    data = _u32(IFLA_VXLAN_ID, vni) + _u32(IFLA_VXLAN_LINK, lower)
    data += _attr(IFLA_VXLAN_PORT, struct.pack("!H", port))
    if group:
        data += _ip_attr(IFLA_VXLAN_GROUP, IFLA_VXLAN_GROUP6, group)
    if local:
        data += _ip_attr(IFLA_VXLAN_LOCAL, IFLA_VXLAN_LOCAL6, local)
    elif not group and any(":" in remote for remote in remotes):
        # The kernel opens an IPv6 socket only for a device whose group or local is IPv6;
        # without one, frames to IPv6 remotes (FDB entries) are dropped. "::" says IPv6
        # and still lets the route choose the source address.
        data += _attr(IFLA_VXLAN_LOCAL6, bytes(16))
    return data


def _ip_attr(v4_kind: int, v6_kind: int, address: str) -> bytes:
    if ":" in address:
        return _attr(v6_kind, socket.inet_pton(socket.AF_INET6, address))
    return _attr(v4_kind, socket.inet_pton(socket.AF_INET, address))


class MalformedMessage(ValueError):
    """A link message that does not parse. The kernel never sends one: this names a bug
    (in netmap, or in what fed it the bytes), not a state of the host."""


def link_fields(buf: bytes, offset: int, end: int) -> LinkFields:
    """The one RTM_NEWLINK parser: ifinfomsg at `offset`, attributes up to `end`, as Link's
    keyword arguments (only those present). Bytes that are no link message raise
    MalformedMessage, never another error."""
    try:
        return _link_fields(buf, offset, end)
    except (struct.error, IndexError, ValueError) as err:  # a payload of the wrong size
        if isinstance(err, MalformedMessage):
            raise
        raise MalformedMessage(f"malformed RTM_NEWLINK message: {err}") from err


def _link_fields(buf: bytes, offset: int, end: int) -> LinkFields:
    if end - offset < IFINFOMSG.size:
        raise MalformedMessage(f"an RTM_NEWLINK message of {end - offset} bytes, shorter "
                               f"than its ifinfomsg header ({IFINFOMSG.size})")
    _family, if_type, index, flags, _change = IFINFOMSG.unpack_from(buf, offset)
    attrs = attr_spans(buf, offset + IFINFOMSG.size, end)
    if IFLA_IFNAME not in attrs:
        raise MalformedMessage(f"an RTM_NEWLINK message (ifindex {index}) without IFLA_IFNAME")
    fields: LinkFields = {
        "index": index, "name": span_str(buf, attrs[IFLA_IFNAME]), "up": bool(flags & IFF_UP),
        "flags": flags, "if_type": if_type, "mtu": span_u32(buf, attrs.get(IFLA_MTU)) or 0,
        "address": span_mac(buf, attrs.get(IFLA_ADDRESS)),
        "master": span_u32(buf, attrs.get(IFLA_MASTER)),
        "lower": span_u32(buf, attrs.get(IFLA_LINK)),
    }
    if IFLA_GROUP in attrs:
        fields["group"] = span_u32(buf, attrs[IFLA_GROUP])
    if IFLA_PERM_ADDRESS in attrs:
        fields["perm_address"] = span_mac(buf, attrs[IFLA_PERM_ADDRESS])
    if IFLA_OPERSTATE in attrs:
        fields["operstate"] = buf[attrs[IFLA_OPERSTATE][0]]
    if IFLA_CARRIER in attrs:
        fields["carrier"] = bool(buf[attrs[IFLA_CARRIER][0]])
    if IFLA_PARENT_DEV_NAME in attrs:
        fields["parent"] = span_str(buf, attrs[IFLA_PARENT_DEV_NAME])
    if IFLA_PROP_LIST in attrs:
        fields["altnames"] = tuple(span_str(buf, (start, stop)) for kind, start, stop
                                   in iter_attrs(buf, *attrs[IFLA_PROP_LIST])
                                   if kind == IFLA_ALT_IFNAME)
    if IFLA_LINKINFO in attrs:
        _linkinfo(buf, attrs[IFLA_LINKINFO], fields)
    return fields


def _linkinfo(buf: bytes, span: tuple[int, int], fields: LinkFields) -> None:
    """IFLA_LINKINFO: the kind, and the IFLA_INFO_DATA of the kinds netmap reasons about."""
    info = attr_spans(buf, *span)
    kind = span_str(buf, info[IFLA_INFO_KIND]) if IFLA_INFO_KIND in info else None
    fields["kind"] = kind
    if IFLA_INFO_DATA not in info:
        return
    data = attr_spans(buf, *info[IFLA_INFO_DATA])
    if kind in ("macvtap", "macvlan") and IFLA_MACVLAN_MODE in data:
        mode = _U32.unpack_from(buf, data[IFLA_MACVLAN_MODE][0])[0]
        fields["macvlan_mode"] = MACVLAN_MODE_NAMES.get(mode, str(mode))
    elif kind == "vlan" and IFLA_VLAN_ID in data:
        fields["vlan_id"] = _U16.unpack_from(buf, data[IFLA_VLAN_ID][0])[0]
    elif kind == "vxlan":
        fields["vni"] = span_u32(buf, data.get(IFLA_VXLAN_ID))
        fields["vxlan_link"] = span_u32(buf, data.get(IFLA_VXLAN_LINK))
        if IFLA_VXLAN_PORT in data:
            fields["vxlan_port"] = _BE16.unpack_from(buf, data[IFLA_VXLAN_PORT][0])[0]
        fields["vxlan_group"] = span_ip(buf, data.get(IFLA_VXLAN_GROUP)
                                        or data.get(IFLA_VXLAN_GROUP6))
        fields["vxlan_local"] = span_ip(buf, data.get(IFLA_VXLAN_LOCAL)
                                        or data.get(IFLA_VXLAN_LOCAL6))
    elif kind == "bridge":
        if IFLA_BR_VLAN_FILTERING in data:
            fields["vlan_filtering"] = bool(buf[data[IFLA_BR_VLAN_FILTERING][0]])
        if IFLA_BR_AGEING_TIME in data:
            fields["ageing"] = span_u32(buf, data[IFLA_BR_AGEING_TIME])
    elif kind == "tun":
        if IFLA_TUN_TYPE in data:
            fields["tun_type"] = buf[data[IFLA_TUN_TYPE][0]]
        if IFLA_TUN_MULTI_QUEUE in data:
            fields["multi_queue"] = bool(buf[data[IFLA_TUN_MULTI_QUEUE][0]])
        if IFLA_TUN_NUM_QUEUES in data:  # reported for multi-queue taps only
            fields["tun_queues"] = span_u32(buf, data[IFLA_TUN_NUM_QUEUES]) + (
                span_u32(buf, data.get(IFLA_TUN_NUM_DISABLED_QUEUES)) or 0)
    elif kind == "bond" and IFLA_BOND_MODE in data:
        fields["bond_mode"] = buf[data[IFLA_BOND_MODE][0]]


def parse_link(buf: bytes, offset: int, end: int) -> Link:
    return Link(**link_fields(buf, offset, end))
