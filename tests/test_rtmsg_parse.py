"""Properties of rtmsg's parser, without root: link messages encoded by pyroute2 read back as
they were written; nested attribute trees from a reference encoder walk back exactly; and
truncated or garbage input never sends the walk outside the bytes it was given."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.rtnl import RTM_NEWLINK, RTM_NEWNEIGH
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg, macvx_data, state_by_name
from pyroute2.netlink.rtnl.ndmsg import NTF_SELF, NUD_PERMANENT, ndmsg

from netmap.netlink import rtmsg, rtnl, vxlan_match

NLA_F_NESTED, NLA_F_NET_BYTEORDER = 1 << 15, 1 << 14
AF_BRIDGE = 7
RTATTR = struct.Struct("=HH")
IFNAMES = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=15)
MACS = st.binary(min_size=6, max_size=6)
U32 = st.integers(0, 2**32 - 1)
U8 = st.integers(0, 255)
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# pyroute2's names of the kernel's values; 0 is no mode (pyroute2 says "none", netmap "0"),
# and the kernel never reports it: a new macvlan defaults to vepa
MACVLAN_MODE_NAMES = {value: name for value, name in macvx_data.mode.value_map.items() if value}


# --- link messages written by pyroute2 --------------------------------------------------------

def optional(draw: st.DrawFn, strategy: st.SearchStrategy) -> Any:
    return draw(st.one_of(st.none(), strategy))


def ip(text: str | None) -> object:
    return ipaddress.ip_address(text) if text else None


@st.composite
def vxlan_info(draw: st.DrawFn) -> tuple[list, dict]:
    data: list = []
    want: dict = {"vni": None, "vxlan_link": None, "vxlan_group": None, "vxlan_local": None}
    for attr, key in (("IFLA_VXLAN_ID", "vni"), ("IFLA_VXLAN_LINK", "vxlan_link")):
        value = optional(draw, U32)
        if value is not None:
            data.append((attr, value))
            want[key] = value
    port = optional(draw, st.integers(0, 0xFFFF))
    if port is not None:
        data.append(("IFLA_VXLAN_PORT", port))
        want["vxlan_port"] = port
    for name, key in (("GROUP", "vxlan_group"), ("LOCAL", "vxlan_local")):
        version = draw(st.sampled_from([None, 4, 6]))
        if version is not None:
            address = draw(st.ip_addresses(v=4) if version == 4 else st.ip_addresses(v=6))
            data.append((f"IFLA_VXLAN_{name}{'6' if version == 6 else ''}", str(address)))
            want[key] = address if int(address) else None  # all zeros: unset
    return data, want


@st.composite
def link_info(draw: st.DrawFn) -> tuple[list, dict]:
    """(IFLA_LINKINFO's attributes, what link_fields reports of them)."""
    kind = draw(st.sampled_from(["macvtap", "macvlan", "vlan", "vxlan", "bridge", "tun",
                                 "bond", "veth"]))
    want: dict = {"kind": kind}
    data: list = []
    if kind in ("macvtap", "macvlan"):
        mode = draw(st.one_of(st.sampled_from(sorted(MACVLAN_MODE_NAMES)), U32))
        data = [(f"IFLA_{kind.upper()}_MODE", mode)]
        want["macvlan_mode"] = MACVLAN_MODE_NAMES.get(mode, str(mode))
    elif kind == "vlan":
        vid = draw(st.integers(0, 0xFFFF))
        data, want["vlan_id"] = [("IFLA_VLAN_ID", vid)], vid
    elif kind == "vxlan":
        data, more = draw(vxlan_info())
        want.update(more)
    elif kind == "bridge":
        filtering, ageing = optional(draw, U8), optional(draw, U32)
        if filtering is not None:
            data.append(("IFLA_BR_VLAN_FILTERING", filtering))
            want["vlan_filtering"] = bool(filtering)
        if ageing is not None:
            data.append(("IFLA_BR_AGEING_TIME", ageing))
            want["ageing"] = ageing
    elif kind == "tun":
        tun_type = draw(U8)
        data, want["tun_type"] = [("IFLA_TUN_TYPE", tun_type)], tun_type
    elif kind == "bond":
        mode = draw(U8)
        data, want["bond_mode"] = [("IFLA_BOND_MODE", mode)], mode
    if not draw(st.booleans()):  # a kind without IFLA_INFO_DATA: the kind alone
        return [("IFLA_INFO_KIND", kind)], {"kind": kind}
    return [("IFLA_INFO_KIND", kind), ("IFLA_INFO_DATA", {"attrs": data})], want


@st.composite
def link_messages(draw: st.DrawFn) -> tuple[bytes, dict]:
    """(an RTM_NEWLINK message as pyroute2 encodes it, link_fields' expected result)."""
    index, flags, if_type = draw(st.integers(1, 2**31 - 1)), draw(U32), draw(st.integers(0, 0xFFFF))
    name = draw(IFNAMES)
    want: dict = {"index": index, "name": name, "up": bool(flags & 1), "flags": flags,
                  "if_type": if_type, "mtu": 0, "address": None, "master": None, "lower": None}
    attrs: list = []

    def maybe(attr: str, strategy: st.SearchStrategy, key: str, seen: Any = None) -> None:
        value = optional(draw, strategy)
        if value is not None:
            attrs.append((attr, value.hex(":") if isinstance(value, bytes) and attr ==
                          "IFLA_ADDRESS" else value))
            want[key] = seen(value) if seen else value

    maybe("IFLA_MTU", U32, "mtu")
    maybe("IFLA_ADDRESS", MACS, "address", lambda mac: mac.hex(":"))
    maybe("IFLA_MASTER", U32, "master")
    maybe("IFLA_LINK", U32, "lower")
    maybe("IFLA_GROUP", U32, "group")
    maybe("IFLA_PERM_ADDRESS", MACS, "perm_address", lambda mac: mac.hex(":"))
    maybe("IFLA_OPERSTATE", st.sampled_from(sorted(state_by_name)), "operstate",
          lambda state: state_by_name[state])
    maybe("IFLA_CARRIER", U8, "carrier", bool)
    maybe("IFLA_PARENT_DEV_NAME", IFNAMES, "parent")
    altnames = optional(draw, st.lists(IFNAMES, max_size=3))
    if altnames is not None:
        attrs.append(("IFLA_PROP_LIST", {"attrs": [("IFLA_ALT_IFNAME", n) for n in altnames]}))
        want["altnames"] = tuple(altnames)
    info = optional(draw, link_info())
    if info is not None:
        attrs.append(("IFLA_LINKINFO", {"attrs": info[0]}))
        want.update(info[1])
    # the name first, so that a truncation test can keep it; the rest in any order
    attrs = [("IFLA_IFNAME", name), *draw(st.permutations(attrs))]
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_NEWLINK
    msg.update(family=0, ifi_type=if_type, index=index, flags=flags, change=0)
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data), want


def comparable(fields: dict) -> dict:
    """Addresses as address objects: inet_ntop and ipaddress spell a few IPv6 forms apart."""
    return {key: ip(value) if key in ("vxlan_group", "vxlan_local") else value
            for key, value in fields.items()}


@settings(max_examples=400, deadline=None)
@given(link_messages(), st.binary(max_size=40), st.binary(max_size=40))
def test_a_link_message_reads_back_as_pyroute2_wrote_it(
        message: tuple[bytes, dict], before: bytes, after: bytes) -> None:
    data, want = message
    buf = before + data + after  # in place, in a buffer holding other messages too
    got = rtmsg.link_fields(buf, len(before) + 16, len(before) + len(data))
    assert comparable(dict(got)) == comparable(want)


# --- nested attribute trees from a reference encoder ----------------------------------------

Tree = list  # of (type, bytes | Tree, flags)


def encode_tree(tree: Tree) -> bytes:
    out = b""
    for kind, payload, flags in tree:
        body = encode_tree(payload) if isinstance(payload, list) else payload
        out += RTATTR.pack(4 + len(body), kind | flags) + body + bytes(-len(body) % 4)
    return out


def walk(buf: bytes, start: int, end: int, like: Tree) -> Tree:
    """What iter_attrs finds, nested where the tree that was encoded is."""
    found = list(rtmsg.iter_attrs(buf, start, end))
    assert len(found) == len(like)
    return [(kind, walk(buf, first, last, node[1]) if isinstance(node[1], list)
             else buf[first:last]) for (kind, first, last), node in zip(found, like, strict=True)]


def without_flags(tree: Tree) -> Tree:
    """The tree as a parser must see it: NLA_F_NESTED and NLA_F_NET_BYTEORDER are no part
    of an attribute's type."""
    return [(kind, without_flags(payload) if isinstance(payload, list) else payload)
            for kind, payload, _flags in tree]


TREES = st.recursive(
    st.binary(max_size=20),
    lambda children: st.lists(st.tuples(st.integers(0, 0x3FFF), children,
                                        st.sampled_from([0, NLA_F_NESTED, NLA_F_NET_BYTEORDER])),
                              max_size=5),
    max_leaves=25,
).filter(lambda tree: isinstance(tree, list))


@settings(max_examples=300, deadline=None)
@given(TREES, st.binary(max_size=12), st.binary(max_size=12))
def test_nested_attributes_walk_back_exactly(tree: Tree, before: bytes, after: bytes) -> None:
    data = encode_tree(tree)
    buf = before + data + after
    assert walk(buf, len(before), len(before) + len(data), tree) == without_flags(tree)
    # attr_spans is the same walk, the last of a repeated type kept
    last = {kind: (first, end) for kind, first, end
            in rtmsg.iter_attrs(buf, len(before), len(before) + len(data))}
    assert rtmsg.attr_spans(buf, len(before), len(before) + len(data)) == last


# --- truncated and garbage input -------------------------------------------------------------

@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.data())
def test_garbage_never_leads_the_walk_outside_its_bytes(buf: bytes, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(buf)))
    end = data.draw(st.integers(start, len(buf)))
    spans = list(rtmsg.iter_attrs(buf, start, end))
    assert all(start + 4 <= first <= last <= end for _kind, first, last in spans)
    assert set(rtmsg.attr_spans(buf, start, end).values()) <= {(f, e) for _k, f, e in spans}


@settings(max_examples=400, deadline=None)
@given(link_messages(), st.data())
def test_a_truncated_link_message_reads_only_its_whole_attributes(
        message: tuple[bytes, dict], data: st.DataObject) -> None:
    """As the kernel's nla_ok(): an attribute longer than what is left ends the walk. The
    bytes past `end` (here garbage; in a dump, the next message) are never read."""
    whole, _ = message
    attrs_at = 16 + rtmsg.IFINFOMSG.size
    name_end = attrs_at + (RTATTR.unpack_from(whole, attrs_at)[0] + 3 & ~3)
    cut = data.draw(st.integers(name_end, len(whole)))
    kept, offset = whole[:attrs_at], attrs_at
    while offset + 4 <= cut:
        length = RTATTR.unpack_from(whole, offset)[0]
        if offset + length > cut:
            break
        kept += whole[offset:offset + (length + 3 & ~3)]
        offset += length + 3 & ~3
    garbage = data.draw(st.binary(min_size=64, max_size=64))
    got = rtmsg.link_fields(whole[:cut] + garbage, 16, cut)
    assert got == rtmsg.link_fields(kept, 16, len(kept))


def parse_or_refuse(buf: bytes, offset: int, end: int) -> None:
    try:
        rtmsg.link_fields(buf, offset, end)
    except rtmsg.MalformedMessage as err:
        assert str(err).startswith(("malformed RTM_NEWLINK", "an RTM_NEWLINK"))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120), st.data())
def test_garbage_is_a_link_or_a_clean_refusal(buf: bytes, data: st.DataObject) -> None:
    """Any bytes: link_fields returns, or raises MalformedMessage; no other error."""
    offset = data.draw(st.integers(0, len(buf)))
    parse_or_refuse(buf, offset, data.draw(st.integers(offset, len(buf))))


@settings(max_examples=500, deadline=None)
@given(link_messages(), st.data())
def test_a_damaged_link_message_is_a_link_or_a_clean_refusal(
        message: tuple[bytes, dict], data: st.DataObject) -> None:
    """A real message with a few bytes overwritten (lengths, types, payloads) or cut."""
    buf = bytearray(message[0])
    for _ in range(data.draw(st.integers(1, 4))):
        buf[data.draw(st.integers(16, len(buf) - 1))] = data.draw(U8)
    parse_or_refuse(bytes(buf), 16, data.draw(st.integers(16, len(buf))))


# --- the other dumps' parsers: bridge port VLANs, vxlan flood entries -------------------------

@settings(max_examples=200, deadline=None)
@given(IFNAMES, st.dictionaries(st.integers(1, 4094), st.integers(0, 0xFFFF), max_size=6),
       st.binary(max_size=20))
def test_a_bridge_port_vlan_message_reads_back(name: str, vids: dict[int, int],
                                               after: bytes) -> None:
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_NEWLINK
    msg.update(family=AF_BRIDGE, ifi_type=1, index=4, flags=0, change=0)
    msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_AF_SPEC", {"attrs": [
        ("IFLA_BRIDGE_VLAN_INFO", {"flags": flags, "vid": vid}) for vid, flags in vids.items()]})]
    msg.encode()
    data = bytes(msg.data)
    assert rtnl._parse_port_vlans(data + after, 16, len(data)) == (name, vids)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2**31 - 1), st.one_of(st.none(), st.ip_addresses()),
       st.sampled_from(["00:00:00:00:00:00", "52:54:00:12:34:56"]), st.binary(max_size=20))
def test_an_fdb_entry_reads_back(index: int, dst: Address | None, mac: str,
                                 after: bytes) -> None:
    msg = ndmsg()
    msg["header"]["type"] = RTM_NEWNEIGH
    msg.update(family=AF_BRIDGE, ifindex=index, state=NUD_PERMANENT, flags=NTF_SELF, ndm_type=0)
    msg["attrs"] = [("NDA_LLADDR", mac)] + ([("NDA_DST", str(dst))] if dst else [])
    msg.encode()
    data = bytes(msg.data)
    index_read, read = vxlan_match.parse_flood_entry(data + after, 16, len(data))
    assert index_read == index
    # only an all-zero MAC floods; an all-zero address is no address
    flooding = mac == "00:00:00:00:00:00" and dst is not None and int(dst) != 0
    assert ip(read) == (dst if flooding else None)
