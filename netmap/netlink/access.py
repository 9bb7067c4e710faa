"""Reaching a host's network stack: what this process may do there, asked before the
kernel says EPERM, and the socket, with an error that says why it cannot be had.

Changing links needs CAP_NET_ADMIN; entering another network namespace (setns) needs
CAP_SYS_ADMIN. Without them the kernel refuses mid-way with EPERM, which reads like a
missing namespace or a broken host; here the missing capability is named up front, and an
EPERM that still arrives (a namespace owned by another user namespace) is told apart from
ENOENT (no such namespace: then the lab hint is the right one).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable
from pathlib import Path

from netmap.errors import ApplyError, PrivilegeError
from netmap.netlink import rtnl

CAP_DAC_OVERRIDE = 1
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
STATUS = Path("/proc/self/status")
GRANT = ("run netmap as root (sudo netmap ...), or grant the service that runs it "
         "{caps} (systemd: AmbientCapabilities={caps})")


def effective_capabilities(status: Path = STATUS) -> int | None:
    """The capability set the kernel checks (CapEff), None when it cannot be read."""
    try:
        match = re.search(r"^CapEff:\s*([0-9a-fA-F]+)$", status.read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1), 16) if match else None


def missing_capabilities(netns: str | None, *, changes: bool,
                         status: Path = STATUS) -> list[tuple[str, str]]:
    """(capability, what it is needed for) that this process lacks for acting on a host
    (inside `netns`); empty when they are there or cannot be read (the kernel decides)."""
    have = effective_capabilities(status)
    if have is None:
        return []
    needed = []
    if changes:
        needed.append((CAP_NET_ADMIN, "CAP_NET_ADMIN", "to create and change interfaces"))
    if netns:
        needed.append((CAP_SYS_ADMIN, "CAP_SYS_ADMIN", f"to enter network namespace {netns}"))
    return [(name, why) for bit, name, why in needed if not have & (1 << bit)]


def require_capabilities(action: str, host: str, netns: str | None, *, changes: bool,
                         status: Path = STATUS) -> None:
    """Refuse `action` (nothing was changed) when a capability it needs is missing."""
    missing = missing_capabilities(netns, changes=changes, status=status)
    if missing:
        raise PrivilegeError(
            f"{action} on {host} needs {' and '.join(f'{n} ({why})' for n, why in missing)}, "
            f"which this process (user id {os.geteuid()}) does not have; nothing was changed",
            fix=grant(name for name, _ in missing))


def grant(names: Iterable[str]) -> str:
    return GRANT.format(caps=" ".join(names))


def open_kernel(host: str, netns: str | None) -> rtnl.Rtnl:
    """An rtnetlink socket in `host`'s namespace (`netns`, else this one's)."""
    try:
        return rtnl.Rtnl(netns)
    except OSError as err:
        if netns and err.errno in (errno.EPERM, errno.EACCES):  # there, but not for us
            raise namespace_denied(host, netns, err) from err
        if netns and err.errno == errno.ENOENT:
            raise ApplyError(f"cannot reach host {host}'s network stack: network namespace "
                             f"{netns} does not exist",
                             fix="build the lab first (scripts/lab up), or correct netns in "
                             f"{host}'s mapping") from err
        where = f"network namespace {netns}" if netns else "this machine"
        raise ApplyError(f"cannot reach host {host}'s network stack ({where}): "
                         f"{err.strerror or err}") from err


def namespace_denied(host: str, netns: str, err: OSError) -> PrivilegeError:
    """setns (or opening the namespace) refused: a privilege, not a missing namespace."""
    return PrivilegeError(
        f"may not enter network namespace {netns} of host {host}: "
        f"{os.strerror(err.errno or errno.EPERM)}; "
        "entering a network namespace needs CAP_SYS_ADMIN over it (and changing its "
        "interfaces CAP_NET_ADMIN)",
        fix=grant(["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]))
