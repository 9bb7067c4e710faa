"""The only package that talks to the kernel (pyroute2, sysfs). Nothing outside it imports
pyroute2; a socket is opened here and passed in, never kept in a global."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyroute2 import IPRoute


def open_iproute(netns: str | None = None) -> IPRoute:
    """A netlink socket bound to `netns` (or the current namespace).

    pyroute2 creates the socket inside the namespace and returns: every request then goes
    there directly, unlike the NetNS proxy, which costs a process hop per call.
    """
    from pyroute2 import IPRoute

    return IPRoute(netns=netns) if netns else IPRoute()
