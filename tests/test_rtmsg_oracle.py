"""netmap's rtnetlink encoder (rtmsg.py) against pyroute2's, byte for byte, without root.

Each request netmap sends goes through a real Rtnl (its framing: header, flags, sequence
number) into a socket that records it and acks it. The same message is then built with
pyroute2's own message classes (ifinfmsg, ndmsg, ifaddrmsg), from the kernel's attribute
names and pyroute2's own constants, never from netmap's, and the two are compared whole.
The only thing carried over from netmap's message is its sequence number: the socket's
bookkeeping, not the encoding. pid is 0 in both (the kernel fills it in).

Taps are not here: netmap makes them with the tun driver's ioctls, not with rtnetlink.
"""

from __future__ import annotations

import errno
import itertools
import struct
from typing import Any

import pytest
from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_APPEND,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    nlmsg,
)
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_SETLINK,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import NTF_SELF, NUD_PERMANENT, ndmsg

from netmap.netlink import rtmsg, rtnl, vxlan_match

AF_UNSPEC, AF_BRIDGE = 0, 7
# <linux/rtnetlink.h>; pyroute2 has no names for these
RTEXT_FILTER_BRVLAN, RTEXT_FILTER_SKIP_STATS = 1 << 1, 1 << 3
# <linux/if_link.h>: enum in6_addr_gen_mode
IN6_ADDR_GEN_MODE_NONE = 1
HEADER = struct.Struct("=IHHII")


class RecordingSocket:
    """Keeps every message Rtnl sends and answers it as the kernel would a valid one: an
    ack, DONE for a dump, ENODEV for a lookup (so Rtnl.get returns None)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.replies: list[bytes] = []

    def send(self, data: bytes) -> int:
        offset = 0
        while offset < len(data):
            length, _kind, flags, seq, _pid = HEADER.unpack_from(data, offset)
            self.sent.append(bytes(data[offset:offset + length]))
            if flags & NLM_F_DUMP == NLM_F_DUMP:
                self.replies.append(HEADER.pack(20, NLMSG_DONE, 0, seq, 0) + bytes(4))
            else:
                code = 0 if flags & NLM_F_ACK else -errno.ENODEV
                self.replies.append(HEADER.pack(36, NLMSG_ERROR, 0, seq, 0)
                                    + struct.pack("i", code) + data[offset:offset + 16])
            offset += (length + 3) & ~3
        return len(data)

    def recv_into(self, view: memoryview) -> int:
        if not self.replies:
            raise BlockingIOError
        reply = b"".join(self.replies)
        self.replies.clear()
        view[:len(reply)] = reply
        return len(reply)

    def setblocking(self, _flag: bool) -> None:
        pass


def recording_rtnl() -> tuple[rtnl.Rtnl, RecordingSocket]:
    sock = RecordingSocket()
    kernel = rtnl.Rtnl.__new__(rtnl.Rtnl)
    kernel.netns, kernel.seq = None, 41  # any start: copied, not assumed
    kernel.sock = sock  # type: ignore[assignment]
    kernel._view = memoryview(bytearray(rtnl.RECV_BUFFER))
    return kernel, sock


def sent_by_netmap(request: tuple[int, int, bytes]) -> bytes:
    """The bytes Rtnl.call() puts on the wire for one rtmsg request."""
    kernel, sock = recording_rtnl()
    kernel.call(request)
    [message] = sock.sent
    return message


def pyroute2_message(cls: type[nlmsg], kind: int, header_flags: int, seq: int, attrs: list,
                     **fields: object) -> bytes:
    """`fields`: the fixed header after the netlink one (ifinfomsg, ndmsg, ifaddrmsg)."""
    msg = cls()
    for key, value in fields.items():
        msg[key] = value
    msg["attrs"] = attrs
    msg["header"]["type"] = kind
    msg["header"]["flags"] = header_flags
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    msg.encode()
    return bytes(msg.data)


def seq_of(message: bytes) -> int:
    return HEADER.unpack_from(message)[3]


def link_request(flags: int, message: bytes, attrs: list, *, kind: int = RTM_NEWLINK,
                 index: int = 0, up: bool | None = None, family: int = AF_UNSPEC) -> bytes:
    """An acked ifinfmsg request as pyroute2 encodes it; `up` None leaves IFF_UP alone."""
    return pyroute2_message(ifinfmsg, kind, NLM_F_REQUEST | NLM_F_ACK | flags, seq_of(message),
                            attrs, family=family, index=index, ifi_type=0,
                            flags=IFF_UP if up else 0, change=0 if up is None else IFF_UP)


def linkinfo(kind: str, data: list | None = None) -> tuple[str, dict]:
    attrs: list = [("IFLA_INFO_KIND", kind)]
    if data is not None:
        attrs.append(("IFLA_INFO_DATA", {"attrs": data}))
    return ("IFLA_LINKINFO", {"attrs": attrs})


NO_IPV6 = ("IFLA_AF_SPEC", {"attrs": [("AF_INET6", {"attrs": [
    ("IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE)]})]})
NEW = NLM_F_CREATE | NLM_F_EXCL
MAC = "52:54:00:12:34:56"


def assert_same(netmap: bytes, oracle: bytes) -> None:
    """Whole messages equal; on failure both decoded by pyroute2, easier to read than hex."""
    if netmap != oracle:
        def decoded(data: bytes) -> object:
            msg = ifinfmsg(data)
            msg.decode()
            return msg
        pytest.fail(f"netmap sent  {netmap.hex()}\npyroute2 says {oracle.hex()}\n"
                    f"netmap decoded:   {decoded(netmap)}\npyroute2 decoded: {decoded(oracle)}")


# --- RTM_NEWLINK: what realize and the QEMU helper create ----------------------------------

@pytest.mark.parametrize("vlan_filtering", [False, True])
@pytest.mark.parametrize("mtu", [None, 9000])
def test_new_bridge(vlan_filtering: bool, mtu: int | None) -> None:
    sent = sent_by_netmap(rtmsg.new_link("nmbr-prod", "bridge", mtu=mtu,
                                         data=rtmsg.bridge_data(3000, vlan_filtering)))
    data: list = [("IFLA_BR_AGEING_TIME", 3000)]
    if vlan_filtering:  # only when wanted: see rtmsg.bridge_data
        data.append(("IFLA_BR_VLAN_FILTERING", 1))
    attrs: list = [("IFLA_IFNAME", "nmbr-prod")]
    attrs += [("IFLA_MTU", mtu)] if mtu else []
    assert_same(sent, link_request(NEW, sent, [*attrs, linkinfo("bridge", data)], up=True))


@pytest.mark.parametrize("mtu", [None, 1500])
def test_new_vlan(mtu: int | None) -> None:
    sent = sent_by_netmap(rtmsg.new_link("eth0.100", "vlan", mtu=mtu, lower=2,
                                         data=rtmsg.vlan_data(100)))
    attrs: list = [("IFLA_IFNAME", "eth0.100")] + ([("IFLA_MTU", mtu)] if mtu else [])
    attrs += [("IFLA_LINK", 2), linkinfo("vlan", [("IFLA_VLAN_ID", 100)])]
    assert_same(sent, link_request(NEW, sent, attrs, up=True))


# (group, local, unicast remotes) -> the address attributes the kernel needs
VXLAN_ADDRESSES = {
    "v4-group": ("239.1.1.1", None, (), [("IFLA_VXLAN_GROUP", "239.1.1.1")]),
    "v6-group": ("ff05::100", None, (), [("IFLA_VXLAN_GROUP6", "ff05::100")]),
    "v4-local": (None, "192.0.2.1", (), [("IFLA_VXLAN_LOCAL", "192.0.2.1")]),
    "v6-local": (None, "2001:db8::1", (), [("IFLA_VXLAN_LOCAL6", "2001:db8::1")]),
    "v4-group-and-local": ("239.1.1.1", "192.0.2.1", (), [
        ("IFLA_VXLAN_GROUP", "239.1.1.1"), ("IFLA_VXLAN_LOCAL", "192.0.2.1")]),
    "v6-group-and-local": ("ff05::100", "2001:db8::1", (), [
        ("IFLA_VXLAN_GROUP6", "ff05::100"), ("IFLA_VXLAN_LOCAL6", "2001:db8::1")]),
    "v4-remotes": (None, None, ("192.0.2.2", "192.0.2.3"), []),
    "v4-remotes-and-local": (None, "192.0.2.1", ("192.0.2.2",), [
        ("IFLA_VXLAN_LOCAL", "192.0.2.1")]),
    # no address says IPv6, so "::" does (see rtmsg.vxlan_data)
    "v6-remotes": (None, None, ("2001:db8::2",), [("IFLA_VXLAN_LOCAL6", "::")]),
    "mixed-remotes": (None, None, ("192.0.2.2", "2001:db8::2"), [("IFLA_VXLAN_LOCAL6", "::")]),
    "v6-remotes-and-local": (None, "2001:db8::1", ("2001:db8::2",), [
        ("IFLA_VXLAN_LOCAL6", "2001:db8::1")]),
    "none": (None, None, (), []),
}


@pytest.mark.parametrize("case", VXLAN_ADDRESSES)
@pytest.mark.parametrize("port", [4789, 8472])
def test_new_vxlan(case: str, port: int) -> None:
    group, local, remotes, addresses = VXLAN_ADDRESSES[case]
    sent = sent_by_netmap(rtmsg.new_link("nmvx5001", "vxlan", mtu=1450, data=rtmsg.vxlan_data(
        5001, 3, port, group, local, remotes)))
    data = [("IFLA_VXLAN_ID", 5001), ("IFLA_VXLAN_LINK", 3), ("IFLA_VXLAN_PORT", port)]
    attrs = [("IFLA_IFNAME", "nmvx5001"), ("IFLA_MTU", 1450),
             linkinfo("vxlan", data + addresses)]
    assert_same(sent, link_request(NEW, sent, attrs, up=True))


MACVTAP_MODES = ["private", "vepa", "bridge", "passthru", "source"]


@pytest.mark.parametrize("mode", MACVTAP_MODES)
@pytest.mark.parametrize("mac", [MAC, None])
def test_new_macvtap(mode: str, mac: str | None) -> None:
    sent = sent_by_netmap(rtmsg.new_link("nmt0123456789", "macvtap", up=False, mtu=1500,
                                         mac=mac, lower=4, data=rtmsg.macvtap_data(mode)))
    attrs: list = [("IFLA_IFNAME", "nmt0123456789"), ("IFLA_MTU", 1500)]
    attrs += [("IFLA_ADDRESS", mac)] if mac else []
    # pyroute2 maps the mode's name to the kernel's value itself: MACVLAN_MODES is checked
    attrs += [("IFLA_LINK", 4), linkinfo("macvtap", [("IFLA_MACVTAP_MODE", mode)])]
    assert_same(sent, link_request(NEW, sent, attrs, up=False))


def test_new_link_with_a_master() -> None:
    sent = sent_by_netmap(rtmsg.new_link("nmx", "bridge", master=9))
    assert_same(sent, link_request(NEW, sent, [("IFLA_IFNAME", "nmx"), ("IFLA_MASTER", 9),
                                               linkinfo("bridge")], up=True))


# --- RTM_NEWLINK on an existing link: every combination set_link can send ------------------

SET_OPTIONS: dict[str, list[Any]] = {
    "up": [None, True, False],
    "mtu": [None, 9000],
    "mac": [None, MAC],
    "master": [None, 0, 7],  # 0: out of its bridge
    "no_ipv6": [False, True],
}


@pytest.mark.parametrize("by_name", [False, True], ids=["by-index", "by-name"])
@pytest.mark.parametrize("combination", list(itertools.product(*SET_OPTIONS.values())),
                         ids=lambda values: "-".join(map(str, values)))
def test_set_link(by_name: bool, combination: tuple) -> None:
    options = dict(zip(SET_OPTIONS, combination, strict=True))
    index = 0 if by_name else 5
    if options["up"] and options["no_ipv6"]:  # up first, then AF_SPEC: two requests
        with pytest.raises(ValueError, match="up_without_ipv6"):
            rtmsg.set_link(index, name="nmtap0", **options)
        return
    sent = sent_by_netmap(rtmsg.set_link(index, name="nmtap0", **options))
    # with an index the name would rename the link: netmap never renames, so it goes
    # only into a request by name
    attrs: list = [("IFLA_IFNAME", "nmtap0")] if by_name else []
    attrs += [NO_IPV6] if options["no_ipv6"] else []
    attrs += [("IFLA_MTU", options["mtu"])] if options["mtu"] else []
    attrs += [("IFLA_ADDRESS", options["mac"])] if options["mac"] else []
    attrs += [("IFLA_MASTER", options["master"])] if options["master"] is not None else []
    assert_same(sent, link_request(0, sent, attrs, index=index, up=options["up"]))


def test_set_group() -> None:
    sent = sent_by_netmap(rtmsg.set_link(5, group=0x6E6D0001))
    assert_same(sent, link_request(0, sent, [("IFLA_GROUP", 0x6E6D0001)], index=5))


def test_no_ipv6_by_name() -> None:
    sent = sent_by_netmap(rtmsg.no_ipv6("nmbr-prod"))
    assert_same(sent, link_request(0, sent, [("IFLA_IFNAME", "nmbr-prod"), NO_IPV6]))


def test_up_without_ipv6_turns_generation_off_before_up() -> None:
    first, second = (sent_by_netmap(r) for r in rtmsg.up_without_ipv6(name="nmtap0", mtu=9000))
    assert_same(first, link_request(0, first, [("IFLA_IFNAME", "nmtap0"), NO_IPV6]))
    assert_same(second, link_request(0, second, [("IFLA_IFNAME", "nmtap0"),
                                                 ("IFLA_MTU", 9000)], up=True))


# what realize's repair (ensure._set) changes on a live bridge or macvtap
LIVE_CHANGES: dict[str, tuple[str, bytes, list]] = {
    "vlan-filtering-on": ("bridge", rtmsg.vlan_filtering_data(True),
                          [("IFLA_BR_VLAN_FILTERING", 1)]),
    "vlan-filtering-off": ("bridge", rtmsg.vlan_filtering_data(False),
                           [("IFLA_BR_VLAN_FILTERING", 0)]),
    "ageing": ("bridge", rtmsg.bridge_data(3000, False), [("IFLA_BR_AGEING_TIME", 3000)]),
    **{f"macvtap-{mode}": ("macvtap", rtmsg.macvtap_data(mode), [("IFLA_MACVTAP_MODE", mode)])
       for mode in MACVTAP_MODES},
}


@pytest.mark.parametrize("change", LIVE_CHANGES)
def test_set_kind_data(change: str) -> None:
    kind, data, oracle_data = LIVE_CHANGES[change]
    sent = sent_by_netmap(rtmsg.set_link(5, kind=kind, data=data, mtu=1500))
    assert_same(sent, link_request(0, sent, [("IFLA_MTU", 1500), linkinfo(kind, oracle_data)],
                                   index=5))


# --- bridge VLANs: RTM_SETLINK / RTM_DELLINK of family AF_BRIDGE -----------------------------

@pytest.mark.parametrize("add", [True, False], ids=["add", "delete"])
@pytest.mark.parametrize("access", [True, False], ids=["access", "tagged"])
@pytest.mark.parametrize("vid", [1, 100, 4094])
def test_bridge_vlan(add: bool, access: bool, vid: int) -> None:
    sent = sent_by_netmap(rtmsg.bridge_vlan(6, vid, access=access, add=add))
    info = {"flags": ["pvid", "untagged"] if access else 0, "vid": vid}
    attrs = [("IFLA_AF_SPEC", {"attrs": [("IFLA_BRIDGE_VLAN_INFO", info)]})]
    assert_same(sent, link_request(0, sent, attrs, kind=RTM_SETLINK if add else RTM_DELLINK,
                                   index=6, family=AF_BRIDGE))


# --- deletions ------------------------------------------------------------------------------

def test_delete_by_index() -> None:
    sent = sent_by_netmap(rtmsg.del_link(8))
    assert_same(sent, link_request(0, sent, [], kind=RTM_DELLINK, index=8))


def test_delete_by_name() -> None:
    sent = sent_by_netmap(rtmsg.del_link(name="nmt0123456789"))
    assert_same(sent, link_request(0, sent, [("IFLA_IFNAME", "nmt0123456789")],
                                   kind=RTM_DELLINK))


def test_delete_a_group() -> None:
    sent = sent_by_netmap(rtmsg.del_group(0x6E6D0001))
    assert_same(sent, link_request(0, sent, [("IFLA_GROUP", 0x6E6D0001)], kind=RTM_DELLINK))


# --- vxlan head-end replication: RTM_NEWNEIGH ------------------------------------------------

@pytest.mark.parametrize("remote", ["192.0.2.7", "2001:db8::7", "::ffff:192.0.2.7"])
def test_fdb_append(remote: str) -> None:
    sent = sent_by_netmap(rtmsg.fdb_append(9, remote))
    oracle = pyroute2_message(
        ndmsg, RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
        seq_of(sent), [("NDA_LLADDR", "00:00:00:00:00:00"), ("NDA_DST", remote)],
        family=AF_BRIDGE, ifindex=9, state=NUD_PERMANENT, flags=NTF_SELF, ndm_type=0)
    assert sent == oracle


# --- dumps and lookups ----------------------------------------------------------------------

def only_request(run: object) -> bytes:
    kernel, sock = recording_rtnl()
    run(kernel)  # type: ignore[operator]
    [message] = sock.sent
    return message


def dump_request(cls: type[nlmsg], kind: int, message: bytes, attrs: list,
                 **fields: object) -> bytes:
    return pyroute2_message(cls, kind, NLM_F_REQUEST | NLM_F_DUMP, seq_of(message), attrs,
                            **fields)


def test_link_dump() -> None:
    sent = only_request(lambda kernel: kernel.links())
    assert_same(sent, dump_request(ifinfmsg, RTM_GETLINK, sent,
                                   [("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS)], family=AF_UNSPEC))


def test_link_dump_with_counters() -> None:
    sent = only_request(lambda kernel: kernel.dump_links(ext_mask=0))
    assert_same(sent, dump_request(ifinfmsg, RTM_GETLINK, sent, [], family=AF_UNSPEC))


def test_bridge_vlan_dump() -> None:
    sent = only_request(lambda kernel: kernel.bridge_vlans())
    assert_same(sent, dump_request(ifinfmsg, RTM_GETLINK, sent,
                                   [("IFLA_EXT_MASK", RTEXT_FILTER_BRVLAN)], family=AF_BRIDGE))


def test_address_dump() -> None:
    sent = only_request(lambda kernel: kernel.addresses())
    assert sent == dump_request(ifaddrmsg, RTM_GETADDR, sent, [], family=AF_UNSPEC)


def test_fdb_dump() -> None:
    sent = only_request(lambda kernel: vxlan_match.flood_table(kernel))
    assert sent == dump_request(ndmsg, RTM_GETNEIGH, sent, [], family=AF_BRIDGE)


def test_lookup_by_name() -> None:
    sent = only_request(lambda kernel: kernel.get("eth0"))
    assert_same(sent, pyroute2_message(ifinfmsg, RTM_GETLINK, NLM_F_REQUEST, seq_of(sent),
                                       [("IFLA_IFNAME", "eth0")]))


def test_a_batch_numbers_each_request_and_acks_every_one() -> None:
    kernel, sock = recording_rtnl()
    requests = [rtmsg.del_link(index) for index in (3, 4, 5)]
    assert kernel.batch(requests) == [None, None, None]
    assert [seq_of(message) for message in sock.sent] == [42, 43, 44]
    for message, index in zip(sock.sent, (3, 4, 5), strict=True):
        assert_same(message, link_request(0, message, [], kind=RTM_DELLINK, index=index))
