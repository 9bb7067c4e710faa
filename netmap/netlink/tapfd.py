"""Kernel work for the QEMU bridge helper around realize's transaction: enter the host's
namespace, open the fd of the tap (or macvtap) that realize's steps made, and watch for
QEMU's exit (the fd is sent by netmap/qemu/helper.py).

The devices themselves are made, recorded in state and rolled back by realize's
Transaction (netlink/apply.py). A tap is made persistent there, as realize makes every tap;
the helper opens it and drops the persistence, so it lives as long as QEMU's fd: when QEMU
exits (or closes it: a hot-unplug), the kernel removes it, and a watcher releases the
endpoint's state record as `netmap release` would.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import os
import select
import socket
import stat
import struct
from collections.abc import Callable

from netmap.errors import ApplyError, InputError
from netmap.netlink import rtmsg, rtnl
from netmap.netlink.rtmsg import (
    IFF_NO_PI,
    IFF_TAP,
    IFF_VNET_HDR,
    IFREQ,
    TUNGETFEATURES,
    TUNGETIFF,
    TUNSETPERSIST,
)
from netmap.netlink.rtnl import TUN_DEVICE

CLONE_NEWNS = 0x00020000
MNT_DETACH = 2
RTMGRP_LINK = 1  # rtnetlink's multicast group of link changes

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
    try:
        os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
        try:
            fd = os.open(node, os.O_RDWR | os.O_CLOEXEC)
        finally:
            os.unlink(node)
    finally:
        # the host's /tmp again: state (and its lock) may live there ($NETMAP_STATE_DIR)
        _libc.umount2(b"/tmp", MNT_DETACH)
    name, _ = tap_info(fd)
    if name != ifname:  # cannot happen with the number from sysfs; never hand over a stranger
        os.close(fd)
        raise ApplyError(f"char device {major}:{minor} is {name}, not {ifname}")
    return fd


# --- the endpoint realize made ------------------------------------------------------------

def refuse_existing(name: str) -> None:
    """The helper makes its endpoint anew: one of that name is a realized guest's (QEMU
    attaches to it with -netdev tap,ifname=) or someone else's."""
    with rtnl.Rtnl() as kernel:
        if kernel.get(name) is not None:
            raise ApplyError(f"interface {name} already exists",
                             fix="it was realized already: give QEMU -netdev tap,"
                             f"ifname={name},script=no,downscript=no instead")


def open_made_tap(name: str, *, vnet_hdr: bool) -> int:
    """Attach to the persistent tap `name` realize made (its flags become this fd's: no
    IFF_VNET_HDR unless asked) and drop the persistence: it goes with the last fd, QEMU's."""
    use_vnet = vnet_hdr and bool(tun_features() & IFF_VNET_HDR)
    fd = open_tap(name, vnet_hdr=use_vnet)
    try:
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
    except OSError as err:
        os.close(fd)
        raise ApplyError(f"cannot hand tap {name} to QEMU: TUNSETPERSIST: {err.strerror}"
                         ) from err
    return fd


def release_when_gone(pid: int, name: str, tap: str | None, caller: int,
                      action: Callable[[], object]) -> None:
    """In a detached child: wait until process `pid` (QEMU) exits or, with `tap`, the tap
    `name` is gone (QEMU closed its last fd: a hot-unplug), then run `action`. `caller`:
    the fd of the socket to QEMU, which the child must not hold.

    QEMU's helper protocol has no "release" call, so the helper leaves this watcher behind
    to release what it made (a macvtap, unlike a tap, outlives its fds).
    """
    if os.fork() != 0:
        return
    try:
        # Only the fds named here are closed, never a range: the parent's objects and
        # libraries live on in this child and would use a closed number again once it is
        # reused (libuuid's clock file, under the OVSDB client, then blocked on a socket).
        os.setsid()
        os.close(caller)  # the endpoint's fd is QEMU's alone already
        null = os.open(os.devnull, os.O_RDWR)
        for fd in range(3):  # QEMU reads the helper's stderr; do not hold it open
            os.dup2(null, fd)
        os.close(null)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = None  # QEMU is gone already
        if pidfd is not None:
            _wait(pidfd, name if tap else None)
        action()
    finally:
        os._exit(0)


def _wait(pidfd: int, tap: str | None) -> None:
    """Until `pidfd` is readable (its process exited) or link `tap` is deleted."""
    if tap is None:
        select.select([pidfd], [], [])
        return
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, rtnl.NETLINK_ROUTE) as events:
        events.bind((0, RTMGRP_LINK))
        with rtnl.Rtnl() as kernel:  # after subscribing: a delete since is not missed
            live = kernel.get(tap)
        if live is None:
            return
        while True:
            ready, _, _ = select.select([pidfd, events.fileno()], [], [])
            if pidfd in ready:
                return
            try:
                data = events.recv(65536)
            except OSError as err:  # ENOBUFS: events were lost; ask the kernel instead
                if err.errno != errno.ENOBUFS:
                    raise
                with rtnl.Rtnl() as kernel:
                    now = kernel.get(tap)
                if now is None or now.index != live.index:
                    return
                continue
            if live.index in _deleted_links(data):
                return


def _deleted_links(data: bytes) -> set[int]:
    """The ifindexes of the RTM_DELLINK messages in one read of a link-event socket."""
    gone, offset = set(), 0
    while offset + 32 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if kind == rtmsg.RTM_DELLINK:
            gone.add(struct.unpack_from("=i", data, offset + 20)[0])  # ifinfomsg.ifi_index
        offset += (length + 3) & ~3
    return gone
