"""Which processes hold a macvtap's char device open: QEMU (or libvirt, which opens it and
hands the fd over) while its guest runs.

A tap tells this through rtnetlink (carrier, its queue count); a macvtap does not: its
carrier follows its lower device and nothing counts its queues. So the char device's number
is read from sysfs (the namespace's own: devtmpfs names nodes /dev/tapIFINDEX, and
ifindexes repeat across namespaces) and every process's open files are matched against it,
as fuser(1) does. Deleting a macvtap that a running guest holds cuts the guest's NIC: the
fd stays open but reaches no device any more.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

PROC = Path("/proc")


def macvtap_number(name: str, ifindex: int, netns: str | None) -> int | None:
    """The dev_t of macvtap `name`'s char device (None: sysfs does not show one)."""
    if netns is None:
        return _read_number(name, ifindex)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child of its own: the namespace's sysfs is seen only from inside it
        try:
            os.close(read)
            from netmap.netlink import rtnl, tapfd

            rtnl.enter_netns(netns)
            tapfd.private_sysfs()
            number = _read_number(name, ifindex)
            os.write(write, str(number if number is not None else "").encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as answer:
            text = answer.read().decode()
    finally:
        os.waitpid(pid, 0)
    return int(text) if text else None


def _read_number(name: str, ifindex: int) -> int | None:
    try:
        text = Path(f"/sys/class/net/{name}/macvtap/tap{ifindex}/dev").read_text()
    except OSError:
        return None
    major, minor = (int(part) for part in text.split(":"))
    return os.makedev(major, minor)


def holders(number: int, proc: Path = PROC) -> list[str]:
    """Each process with char device `number` open, as "COMMAND (pid N)". A process whose
    files this one may not read (another user's, without CAP_SYS_PTRACE) is not seen."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list(os.scandir(entry / "fd"))
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if any(_is_device(fd, number) for fd in fds):
            comm = ""
            with contextlib.suppress(OSError):
                comm = (entry / "comm").read_text().strip()
            found.append(f"{comm or 'a process'} (pid {entry.name})")
    return found


def _is_device(fd: os.DirEntry[str], number: int) -> bool:
    try:
        info = fd.stat()  # of what the fd is open on
    except OSError:
        return False
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == number


def macvtap_holders(name: str, ifindex: int, netns: str | None) -> list[str]:
    """The processes that hold macvtap `name` (ifindex `ifindex`) open."""
    number = macvtap_number(name, ifindex, netns)
    return holders(number) if number is not None else []
