"""Kernel work for the QEMU bridge helper: enter the host's namespace, open a tap (or a
macvtap queue) as a file descriptor, ensure the bridge it joins (the fd is sent by
netmap/qemu/helper.py).

Every `ensure_*` leaves alone what exists and says whether it created something, so the
caller can undo exactly what it made when a later step fails. A tap opened from
/dev/net/tun without TUNSETPERSIST lives as long as its last fd: when QEMU exits, the kernel
removes it, and a failed helper leaves nothing by closing the fd.

Namespace, tun device, socket, messages, deletes, vxlan remotes and access ports are
realize's (rtnl, rtmsg, kernel_steps), with realize's parameters (plan.py), so a bridge the
helper makes is the one realize would make; no pyroute2 (~90 ms per guest start). Unlike
realize's Transaction: no per-guest state, and a link another helper made a moment earlier
(EEXIST: QEMUs starting together on one network) is used, not an error.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import os
import random
import select
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from netmap.errors import ApplyError, InputError
from netmap.netlink import rtmsg, rtnl, vxlan_match
from netmap.netlink.rtmsg import IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, IFREQ, TUNGETFEATURES, TUNGETIFF
from netmap.netlink.rtnl import TUN_DEVICE

# kernel_steps (and the plan's steps it brings) are imported where a VLAN, a vxlan device or
# a rollback needs them: not on the QEMU helper's usual path, which QEMU waits for

if TYPE_CHECKING:
    from netmap.model.fleet import Vxlan

CLONE_NEWNS = 0x00020000

_libc = ctypes.CDLL(None, use_errno=True)


def _os_error(what: str) -> ApplyError:
    return ApplyError(f"{what}: {os.strerror(ctypes.get_errno())}",
                      fix="run the helper as root (CAP_SYS_ADMIN)")


def _errno_text(err: OSError) -> str:
    """The system's text for the error's errno; an OSError raised without one has only its
    own message."""
    return os.strerror(err.errno) if err.errno is not None else str(err)


# --- namespaces ----------------------------------------------------------------------------

def enter_netns(name: str) -> None:
    """Move this short-lived process into the named network namespace, for good: all it
    opens from now on (the tun fd, netlink sockets) belongs to the host's namespace."""
    try:
        rtnl.enter_netns(name)
    except OSError as err:
        if err.errno == errno.ENOENT:
            raise InputError(f"network namespace {name!r} does not exist "
                             f"({rtnl.netns_path(name)})", key="host.netns",
                             fix="build the lab first (scripts/lab up) or remove netns from "
                             "the host mapping") from err
        raise ApplyError(f"cannot enter network namespace {name!r}: "
                         f"{_errno_text(err)}",
                         fix="run the helper as root (CAP_SYS_ADMIN)") from err


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
    try:
        return rtnl.open_tun(name, IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0))
    except OSError as err:
        if err.filename:  # the open of /dev/net/tun, not the ioctl
            raise ApplyError(f"cannot open {TUN_DEVICE}: {err.strerror}",
                             fix="load the tun module (modprobe tun) and run the helper as "
                             "root") from err
        raise ApplyError(f"cannot create tap {name}: TUNSETIFF: {err.strerror}",
                         fix="run the helper as root (CAP_NET_ADMIN)") from err


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


# --- links ---------------------------------------------------------------------------------

@contextmanager
def netlink_step(what: str, fix: str = "check the host mapping against the live host"
                 ) -> Iterator[None]:
    """Turn a kernel refusal into an ApplyError that says which step failed."""
    try:
        yield
    except OSError as err:  # rtnl.NetlinkError: errno + the kernel's extended ack
        raise ApplyError(f"{what}: {err.strerror}", fix=fix) from err


def require_link(kernel: rtnl.Rtnl, name: str, role: str) -> rtmsg.Link:
    link = kernel.get(name)
    if link is None:
        raise ApplyError(f"{role} {name} does not exist on this host",
                         fix=f"fix the host mapping or bring {name} up")
    return link


def _create(kernel: rtnl.Rtnl, what: str, request: tuple[int, int, bytes], name: str) -> bool:
    """RTM_NEWLINK; False when another helper made the same link a moment ago (EEXIST).

    Like realize, no IPv6 address generation on L2 plumbing: a link-local address on a
    bridge or vxlan would make the host answer on the guests' segment."""
    try:
        with netlink_step(what):
            kernel.call(request)  # made down: see rtmsg.up_without_ipv6
            for step in rtmsg.up_without_ipv6(name=name):
                kernel.call(step)
    except ApplyError as err:
        if isinstance(err.__cause__, OSError) and err.__cause__.errno == errno.EEXIST:
            return False
        raise
    return True


@contextmanager
def _undo_on_error(kernel: rtnl.Rtnl, name: str | None) -> Iterator[None]:
    """Delete `name` (a link just created) if the block fails; None: nothing to undo."""
    try:
        yield
    except BaseException:
        if name is not None:
            delete_links(kernel, [name])
        raise


def ensure_vlan(kernel: rtnl.Rtnl, uplink: str, vlan: int, name: str) -> tuple[int, bool]:
    """The 802.1Q sub-interface `name` of `uplink`, up: (index, created)."""
    link = kernel.get(name)
    if link is not None:
        return link.index, False
    lower = require_link(kernel, uplink, "uplink").index
    made = _create(kernel, f"cannot create VLAN {vlan} interface {name} on {uplink}",
                   rtmsg.new_link(name, "vlan", up=False, lower=lower,
                                  data=rtmsg.vlan_data(vlan)), name)
    return require_link(kernel, name, "vlan").index, made


def ensure_bridge(kernel: rtnl.Rtnl, name: str, port: str | None, *, mtu: int,
                  vlan: int | None = None) -> tuple[int, bool]:
    """Bridge `name`, up, `port` (uplink or vxlan device) enslaved and, with a VLAN, tagged
    on it: (index, created). Made as realize's plan makes it (EnsureBridge: FDB ageing,
    vlan_filtering when the network has a VLAN). An existing bridge is used as it is
    (realize or the operator made it); a port with another master is refused.
    """
    link = kernel.get(name)
    created = False
    if link is None:
        from netmap.plan import BRIDGE_AGEING  # only to make one: not on the helper's path

        what = f"cannot create bridge {name}" + (f" filtering VLAN {vlan}" if vlan else "")
        created = _create(kernel, what, rtmsg.new_link(
            name, "bridge", up=False, mtu=mtu,
            data=rtmsg.bridge_data(BRIDGE_AGEING, vlan is not None)),
            name)
        link = require_link(kernel, name, "bridge")
    if link.kind != "bridge":
        raise ApplyError(f"{name} exists but is not a bridge",
                         fix=f"rename the bridge in the host mapping, or remove {name}")
    with _undo_on_error(kernel, name if created else None):
        if port is not None:
            port_index = _enslave(kernel, name, link.index, port)
            if vlan is not None and created:
                with netlink_step(f"cannot tag VLAN {vlan} on {port}, the port of {name}"):
                    kernel.call(rtmsg.bridge_vlan(port_index, vlan, access=False))
        if not link.up:
            with netlink_step(f"cannot bring up bridge {name}"):
                kernel.call(rtmsg.set_link(link.index, up=True))
    return link.index, created


def _enslave(kernel: rtnl.Rtnl, bridge: str, index: int, port: str) -> int:
    live = require_link(kernel, port, "bridge port")
    if live.master not in (None, 0, index):
        raise ApplyError(f"{port} is already a port of another bridge",
                         fix="an uplink can belong to one bridge only")
    with netlink_step(f"cannot enslave {port} to bridge {bridge}"):
        kernel.call(rtmsg.set_link(live.index, master=index, up=True))
    return live.index


def set_access_vlan(kernel: rtnl.Rtnl, port: int, vlan: int) -> None:
    """Make a new tap an access port of `vlan` (realize's BridgeVlan, access)."""
    from netmap.netlink.kernel_steps import make_access_port

    with netlink_step(f"cannot put the tap on VLAN {vlan}"):
        make_access_port(kernel, port, vlan, drop_default=True)  # a new port has VLAN 1


def ensure_vxlan(kernel: rtnl.Rtnl, name: str, vni: int, underlay: str,
                 options: Vxlan | None, mtu: int) -> tuple[int, bool]:
    """vxlan device `name` for `vni` over `underlay`, up: (index, created)."""
    from netmap.netlink.kernel_steps import add_vxlan_remotes

    lower = require_link(kernel, underlay, "underlay uplink")
    group, local = (options.group, options.local) if options else (None, None)
    port, remotes = (options.port, options.remotes) if options else (4789, ())
    link = kernel.get(name)
    if link is not None:
        wrong = [f"kind {link.kind}"] if link.kind != "vxlan" else vxlan_match.differences(
            kernel, link, vni=vni, underlay=lower.index, port=port, group=group, local=local,
            remotes=remotes, name_of=lambda index: underlay if index == lower.index
            else f"ifindex {index}")
        if wrong:
            raise ApplyError(f"{name} exists but is not the vxlan the binding needs: "
                             f"{'; '.join(wrong)}",
                             fix=f"delete {name} if nothing uses it ('ip link del {name}'), "
                             "or make the binding in the host mapping say what it is")
        return link.index, False
    created = _create(kernel, f"cannot create vxlan {name} (VNI {vni}) on {underlay}",
                      rtmsg.new_link(name, "vxlan", up=False, mtu=mtu, data=rtmsg.vxlan_data(
                          vni, lower.index, port, group, local, remotes)),
                      name)
    index = require_link(kernel, name, "vxlan").index
    if created and remotes:
        with _undo_on_error(kernel, name):
            for remote, err in add_vxlan_remotes(kernel, index, remotes):
                raise ApplyError(f"cannot add vxlan remote {remote} to {name}: "
                                 f"{_errno_text(err)}") from err
    return index, created


def attach_tap(kernel: rtnl.Rtnl, tap: str, bridge: int | None, mtu: int, mac: str) -> int:
    """MTU, host-side MAC, bridge (None: an OVS port, which OVSDB adds) and up."""
    index = require_link(kernel, tap, "tap").index
    with netlink_step(f"cannot attach {tap} to its bridge (MTU {mtu}, MAC {mac})"):
        for request in rtmsg.up_without_ipv6(index, mtu=mtu, mac=mac, master=bridge):
            kernel.call(request)
    return index


def ensure_macvtap(kernel: rtnl.Rtnl, name: str, lower: int, mode: str, mac: str,
                   mtu: int) -> int:
    """A new macvtap `name` on `lower`, up, in `mode` (bridge, vepa, private, passthru)."""
    if kernel.get(name) is not None:
        raise ApplyError(f"macvtap {name} already exists",
                         fix=f"another guest NIC uses it; release it (ip link del {name})")
    with netlink_step(f"cannot create macvtap {name} (mode {mode})",
                      "a bridge port or a passthru macvtap's uplink takes no macvtap "
                      "(EBUSY); check the host mapping"):
        kernel.call(rtmsg.new_link(name, "macvtap", up=False, mtu=mtu, mac=mac, lower=lower,
                                  data=rtmsg.macvtap_data(mode)))
        for request in rtmsg.up_without_ipv6(name=name):
            kernel.call(request)
    return require_link(kernel, name, "macvtap").index


def delete_links(kernel: rtnl.Rtnl, names: list[str]) -> None:
    """Remove links this helper created, newest first; a link already gone is fine."""
    from netmap.netlink.kernel_steps import delete_quietly

    for name in reversed(names):
        delete_quietly(kernel, name)


def wait_and_delete(pid: int, index: int) -> None:
    """In a detached child: wait for process `pid` (QEMU) to exit, then delete link `index`.

    A macvtap, unlike a tap, outlives the fds opened on it, and QEMU's helper protocol has
    no "release" call, so the helper leaves this watcher behind to remove it when QEMU goes.
    """
    def delete() -> None:
        with rtnl.Rtnl() as kernel:
            kernel.call(rtmsg.del_link(index))

    wait_then(pid, delete)


def wait_then(pid: int, action: Callable[[], object]) -> None:
    """In a detached child: wait for process `pid` (QEMU) to exit, then run `action`."""
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
        action()
    finally:
        os._exit(0)
