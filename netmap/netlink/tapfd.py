"""Kernel work for the QEMU bridge helper: enter the host's namespace, open a tap (or a
macvtap queue) as a file descriptor, ensure the bridge it joins, hand the fd over a socket.

Every `ensure_*` leaves alone what exists and says whether it created something, so the
caller can undo exactly what it made when a later step fails. A tap opened from
/dev/net/tun without TUNSETPERSIST lives as long as its last fd: when QEMU exits, the kernel
removes it, and a failed helper leaves nothing by closing the fd.

Bridges take realize's parameters (netmap/plan.py: ageing, VLAN filtering, host-side MAC).
TODO(merge): the ensure_* here re-implement in pyroute2 what ensure.Transaction does for
realize; that transaction is bound to realize's per-guest state, so sharing it needs a
state-free entry point for shared steps (bridge, port, vxlan, VLAN link) there.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import os
import random
import select
import socket
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from netmap.errors import ApplyError, InputError

if TYPE_CHECKING:
    from pyroute2 import IPRoute

    from netmap.model import Vxlan

TUN_DEVICE = "/dev/net/tun"
NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
TUNGETIFF = 0x800454D2
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, flags, union padding (40 bytes)

_libc = ctypes.CDLL(None, use_errno=True)


def _os_error(what: str) -> ApplyError:
    return ApplyError(f"{what}: {os.strerror(ctypes.get_errno())}",
                      fix="run the helper as root (CAP_SYS_ADMIN)")


# --- namespaces ----------------------------------------------------------------------------

def enter_netns(name: str) -> None:
    """Move this short-lived process into the named network namespace, for good: all it
    opens from now on (the tun fd, netlink sockets) belongs to the host's namespace."""
    path = os.path.join(NETNS_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise InputError(f"network namespace {name!r} does not exist ({path})",
                         key="host.netns",
                         fix="build the lab first (scripts/lab up) or remove netns from the "
                         "host mapping") from err
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise ApplyError(f"cannot enter network namespace {name!r}: "
                             f"{os.strerror(ctypes.get_errno())}",
                             fix="run the helper as root (CAP_SYS_ADMIN)")
    finally:
        os.close(fd)


def private_sysfs() -> None:
    """A private mount namespace with the sysfs of this network namespace (as `ip netns
    exec` does): a macvtap's char device number is only visible there."""
    ms_rec, ms_private = 0x4000, 0x40000
    if _libc.unshare(CLONE_NEWNS) != 0:
        raise _os_error("unshare(CLONE_NEWNS)")
    if _libc.mount(None, b"/", None, ms_rec | ms_private, None) != 0:
        raise _os_error("making / private")
    # EBUSY: this very sysfs is mounted on /sys already (we run under `ip netns exec`)
    if _libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None) != 0 \
            and ctypes.get_errno() != errno.EBUSY:
        raise _os_error("mounting sysfs")


# --- tun/tap -------------------------------------------------------------------------------

def tun_features() -> int:
    """TUNGETFEATURES: the IFF_* flags this kernel's tun driver accepts."""
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        buf = array.array("I", [0])
        fcntl.ioctl(fd, TUNGETFEATURES, buf, True)
        return buf[0]
    finally:
        os.close(fd)


def open_tap(name: str, *, vnet_hdr: bool) -> int:
    """A new tap named `name`, as an fd; it vanishes when the last copy of the fd closes."""
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise ApplyError(f"cannot open {TUN_DEVICE}: {err.strerror}",
                         fix="load the tun module (modprobe tun) and run the helper as root"
                         ) from err
    try:
        fcntl.ioctl(fd, TUNSETIFF, IFREQ.pack(name.encode(), flags))
    except OSError as err:
        os.close(fd)
        raise ApplyError(f"cannot create tap {name}: TUNSETIFF: {err.strerror}",
                         fix="run the helper as root (CAP_NET_ADMIN)") from err
    return fd


def tap_info(fd: int) -> tuple[str, int]:
    """TUNGETIFF on a tap or macvtap fd: (interface name, IFF_* flags)."""
    raw = fcntl.ioctl(fd, TUNGETIFF, bytes(IFREQ.size))
    name, flags = IFREQ.unpack(raw)
    return name.rstrip(b"\0").decode(), flags


def open_macvtap(ifname: str, ifindex: int) -> int:
    """Open the char device of macvtap `ifname` (call `private_sysfs` first).

    The node is made in a private tmpfs from the number sysfs gives: devtmpfs names nodes
    /dev/tapIFINDEX, and interface indexes repeat across namespaces, so /dev/tapN may be
    another namespace's macvtap (or missing after a collision). Needs `private_sysfs` first:
    it reads that sysfs and mounts over /tmp of the same private mount namespace.
    """
    sys_dev = f"/sys/class/net/{ifname}/macvtap/tap{ifindex}/dev"
    try:
        with open(sys_dev) as handle:
            major, minor = (int(part) for part in handle.read().split(":"))
    except OSError as err:
        raise ApplyError(f"cannot find the char device of macvtap {ifname}: {err}",
                         fix="is the macvtap module loaded?") from err
    # A tmpfs over /tmp of this process's private mount namespace: nothing is written to
    # any file system that others see, and it goes when the process does.
    if _libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, b"mode=0700") != 0:
        raise _os_error("mounting a private tmpfs for the macvtap node")
    node = f"/tmp/{ifname}"
    os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
    try:
        fd = os.open(node, os.O_RDWR | os.O_CLOEXEC)
    finally:
        os.unlink(node)
    name, _ = tap_info(fd)
    if name != ifname:  # cannot happen with the number from sysfs; never hand over a stranger
        os.close(fd)
        raise ApplyError(f"char device {major}:{minor} is {name}, not {ifname}")
    return fd


def random_tap_mac() -> str:
    """A MAC for the host side of a tap: fe:… like qemu-bridge-helper and libvirt, so the
    bridge, which takes the lowest MAC of its ports, keeps the uplink's."""
    return "fe:" + ":".join(f"{random.randrange(256):02x}" for _ in range(5))


def send_fd(sock: socket.socket, fd: int) -> None:
    """One byte with one SCM_RIGHTS fd: what QEMU's net/tap.c recv_fd() reads."""
    sock.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def peer_pid(sock: socket.socket) -> int:
    """The process at the other end: for a socketpair, the one that made it (QEMU)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)[0]


# --- links ---------------------------------------------------------------------------------

def find_link(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _kind(ipr: IPRoute, index: int) -> str | None:
    link = ipr.get_links(index)[0]
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")


@contextmanager
def netlink_step(what: str, fix: str = "check the host mapping against the live host"
                 ) -> Iterator[None]:
    """Turn a kernel refusal into an ApplyError that says which step failed."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        yield
    except NetlinkError as err:
        raise ApplyError(f"{what}: {os.strerror(err.code)}", fix=fix) from err


def require_link(ipr: IPRoute, name: str, role: str) -> int:
    index = find_link(ipr, name)
    if index is None:
        raise ApplyError(f"{role} {name} does not exist on this host",
                         fix=f"fix the host mapping or bring {name} up")
    return index


def ensure_vlan(ipr: IPRoute, uplink: str, vlan: int, name: str) -> tuple[int, bool]:
    """The 802.1Q sub-interface `name` of `uplink`: (index, created)."""
    index = find_link(ipr, name)
    if index is not None:
        return index, False
    lower = require_link(ipr, uplink, "uplink")
    with netlink_step(f"cannot create VLAN {vlan} interface {name} on {uplink}",
                      "load the 8021q module, or let netmap realize prepare the VLAN"):
        ipr.link("add", ifname=name, kind="vlan", link=lower, vlan_id=vlan)
    index = require_link(ipr, name, "vlan")
    with _undo_on_error(ipr, name), netlink_step(f"cannot bring up {name}"):
        ipr.link("set", index=index, state="up")
    return index, True


def ensure_bridge(ipr: IPRoute, name: str, port: int | None, *, mtu: int,
                  vlan: int | None = None) -> tuple[int, bool]:
    """Bridge `name`, up, `port` (uplink or vxlan device) enslaved and, with a VLAN, tagged
    on it: (index, created). Made as realize's plan makes it (netmap/plan.py EnsureBridge:
    FDB ageing, vlan_filtering when the network has a VLAN). An existing bridge is used as
    it is (realize or the operator made it); a port with another master is refused.
    """
    from netmap.plan import BRIDGE_AGEING

    index = find_link(ipr, name)
    created = index is None
    if created:
        spec = {"br_ageing_time": BRIDGE_AGEING, **({"br_vlan_filtering": 1} if vlan else {})}
        created = _add_unless_racing(ipr, f"cannot create bridge {name}"
                                     + (f" filtering VLAN {vlan}" if vlan else ""),
                                     ifname=name, kind="bridge", mtu=mtu, **spec)
        index = require_link(ipr, name, "bridge")
    if _kind(ipr, index) != "bridge":
        raise ApplyError(f"{name} exists but is not a bridge",
                         fix=f"rename the bridge in the host mapping, or remove {name}")
    with _undo_on_error(ipr, name if created else None):
        _enslave_and_up(ipr, name, index, port)
        if vlan is not None and port is not None and created:
            with netlink_step(f"cannot tag VLAN {vlan} on the uplink port of {name}"):
                ipr.vlan_filter("add", index=port, vlan_info={"vid": vlan})
    return index, created


def filters_vlans(ipr: IPRoute, bridge: int) -> bool:
    link = ipr.get_links(bridge)[0]
    return bool(link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_BR_VLAN_FILTERING"))


def set_access_vlan(ipr: IPRoute, port: int, vlan: int) -> None:
    """Make a bridge port an access port of `vlan`: PVID and untagged, without VLAN 1."""
    from netmap.plan import DEFAULT_PVID

    with netlink_step(f"cannot put the tap on VLAN {vlan}"):
        ipr.vlan_filter("add", index=port, vlan_info={"vid": vlan, "flags": 6})  # PVID|UNTAG
        if vlan != DEFAULT_PVID:
            ipr.vlan_filter("del", index=port, vlan_info={"vid": DEFAULT_PVID})


def _enslave_and_up(ipr: IPRoute, name: str, index: int, port: int | None) -> None:
    if port is not None:
        master = ipr.get_links(port)[0].get("IFLA_MASTER")
        if master not in (None, 0, index):
            raise ApplyError(f"interface {port} is already enslaved to another master",
                             fix="the uplink can belong to one bridge only")
        with netlink_step(f"cannot enslave interface {port} to bridge {name}"):
            ipr.link("set", index=port, master=index, state="up")
    with netlink_step(f"cannot bring up bridge {name}"):
        ipr.link("set", index=index, state="up")


def _add_unless_racing(ipr: IPRoute, what: str, **spec: object) -> bool:
    """RTM_NEWLINK; False when another helper made the same link a moment ago (EEXIST):
    two NICs of one guest on one network start their helpers at the same time."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with netlink_step(what):
            ipr.link("add", **spec)
    except ApplyError as err:
        if isinstance(err.__cause__, NetlinkError) and err.__cause__.code == errno.EEXIST:
            return False
        raise
    return True


@contextmanager
def _undo_on_error(ipr: IPRoute, name: str | None) -> Iterator[None]:
    """Delete `name` (a link just created) if the block fails; None: nothing to undo."""
    try:
        yield
    except BaseException:
        if name is not None:
            delete_links(ipr, [name])
        raise


def ensure_vxlan(ipr: IPRoute, name: str, vni: int, underlay: str, options: Vxlan | None,
                 mtu: int) -> tuple[int, bool]:
    """vxlan device `name` for `vni` over `underlay`: (index, created)."""
    index = find_link(ipr, name)
    if index is not None:
        return index, False
    lower = require_link(ipr, underlay, "underlay uplink")
    spec: dict[str, object] = {"vxlan_id": vni, "vxlan_link": lower,
                               "vxlan_port": options.port if options else 4789}
    if options and options.group:
        spec["vxlan_group" if ":" not in options.group else "vxlan_group6"] = options.group
    if options and options.local:
        spec["vxlan_local" if ":" not in options.local else "vxlan_local6"] = options.local
    created = _add_unless_racing(ipr, f"cannot create vxlan {name} (VNI {vni}) on {underlay}",
                                 ifname=name, kind="vxlan", mtu=mtu, **spec)
    index = require_link(ipr, name, "vxlan")
    with _undo_on_error(ipr, name if created else None):
        for remote in options.remotes if options and created else ():
            # head-end replication: broadcast and unknown frames go to every remote
            with netlink_step(f"cannot add vxlan remote {remote} to {name}"):
                ipr.fdb("append", ifindex=index, lladdr="00:00:00:00:00:00", dst=remote)
    return index, created


def attach_tap(ipr: IPRoute, tap: str, bridge_index: int, mtu: int, mac: str) -> int:
    index = require_link(ipr, tap, "tap")
    with netlink_step(f"cannot set MTU {mtu} and MAC {mac} on {tap}"):
        ipr.link("set", index=index, mtu=mtu, address=mac)
    with netlink_step(f"cannot attach {tap} to its bridge"):
        ipr.link("set", index=index, master=bridge_index)
    with netlink_step(f"cannot bring up {tap}"):
        ipr.link("set", index=index, state="up")
    return index


def ensure_macvtap(ipr: IPRoute, name: str, lower: int, mode: str, mac: str,
                   mtu: int) -> int:
    """A new macvtap `name` on `lower` in `mode` (bridge, vepa, private, passthru)."""
    if find_link(ipr, name) is not None:
        raise ApplyError(f"macvtap {name} already exists",
                         fix=f"another guest NIC uses it; release it (ip link del {name})")
    with netlink_step(f"cannot create macvtap {name} (mode {mode})"):
        ipr.link("add", ifname=name, kind="macvtap", link=lower, macvtap_mode=mode,
                 address=mac, mtu=mtu)
    index = require_link(ipr, name, "macvtap")
    with _undo_on_error(ipr, name), netlink_step(f"cannot bring up {name}"):
        ipr.link("set", index=index, state="up")
    return index


def delete_links(ipr: IPRoute, names: list[str]) -> None:
    """Remove links this helper created, newest first; a link already gone is fine."""
    from pyroute2.netlink.exceptions import NetlinkError

    for name in reversed(names):
        index = find_link(ipr, name)
        if index is None:
            continue
        try:
            ipr.link("del", index=index)
        except NetlinkError as err:
            if err.code != errno.ENODEV:
                raise


def wait_and_delete(pid: int, index: int) -> None:
    """In a detached child: wait for process `pid` (QEMU) to exit, then delete link `index`.

    A macvtap, unlike a tap, outlives the fds opened on it, and QEMU's helper protocol has
    no "release" call, so the helper leaves this watcher behind to remove it when QEMU goes.
    The child speaks raw rtnetlink: the parent's pyroute2 socket and event loop must not be
    reused across fork().
    """
    if os.fork() != 0:
        return
    try:
        os.setsid()
        os.closerange(3, 65536)  # the socket to QEMU and the macvtap fd are QEMU's now
        null = os.open(os.devnull, os.O_RDWR)
        for fd in range(3):  # QEMU reads the helper's stderr; do not hold it open
            os.dup2(null, fd)
        try:
            pidfd = os.pidfd_open(pid)
            select.select([pidfd], [], [])
        except ProcessLookupError:
            pass  # QEMU is gone already
        delete_link_by_index(index)
    finally:
        os._exit(0)


def delete_link_by_index(index: int) -> int:
    """RTM_DELLINK for `index` in this namespace: 0, or the errno the kernel answered."""
    rtm_dellink, nlm_f_request, nlm_f_ack, nlmsg_error = 17, 0x1, 0x4, 2
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0)  # struct ifinfomsg
    header = struct.pack("=IHHII", 16 + len(body), rtm_dellink, nlm_f_request | nlm_f_ack, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.send(header + body)
        reply = sock.recv(4096)
    _, kind, _, _, _ = struct.unpack_from("=IHHII", reply)
    return -struct.unpack_from("=i", reply, 16)[0] if kind == nlmsg_error else 0
