"""The underlay addresses of a vxlan binding, checked at load: what the kernel would only
refuse at realize (or accept and then never deliver) is an input error here. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Problem:
    """What is wrong with one key of the vxlan table, and how to fix it."""

    key: str
    problem: str
    fix: str


@dataclass(frozen=True)
class Underlay:
    """group, local and remotes in canonical text (so that "FF05::0100" and "ff05::100",
    which the kernel reports alike, compare equal)."""

    group: str | None
    local: str | None
    remotes: tuple[str, ...]


def _parse(key: str, text: str) -> Address | Problem:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return Problem(key, f"{text!r} is not an IPv4 or IPv6 address",
                       'write an address such as "239.1.1.1" or "ff05::100"')


def _unicast(key: str, text: str, role: str) -> Address | Problem:
    """`text` as a unicast address another host can reach, or what is wrong with it."""
    address = _parse(key, text)
    if isinstance(address, Problem):
        return address
    if address.is_multicast:
        return Problem(key, f"{address} is a multicast address; {role} must be unicast",
                       'put a multicast address under group, unicast ones under '
                       'remotes and local')
    if address.is_unspecified or address.is_loopback:
        return Problem(key, f"{address} is not an address another host can reach; {role} "
                       "must be a unicast address on the underlay",
                       "use the underlay address of a host (ip address show UPLINK)")
    return address


def check_underlay(group: str | None, local: str | None,
                   remotes: Sequence[str]) -> Underlay | Problem:
    """The binding's underlay in canonical form, or the first problem with it: the group
    must be multicast, local and remotes unicast, all of one address family (a vxlan
    device sends over IPv4 or IPv6, never both), and a group excludes remotes."""
    if group and remotes:
        return Problem("remotes", "a vxlan binding uses a multicast group or unicast remotes, "
                       "not both", "remove group or remotes")
    parsed: list[tuple[str, Address]] = []
    if group:
        address = _parse("group", group)
        if isinstance(address, Problem):
            return address
        if not address.is_multicast:
            return Problem("group", f"{address} is not a multicast address; a vxlan group "
                           "is the multicast group every VTEP of the VNI joins",
                           'use a multicast address (IPv4 224.0.0.0/4, e.g. "239.1.1.1"; '
                           'IPv6 ff00::/8, e.g. "ff05::100"), or list unicast peers '
                           "under remotes")
        parsed.append(("group", address))
    if local:
        address = _unicast("local", local, "the local source address")
        if isinstance(address, Problem):
            return address
        parsed.append(("local", address))
    seen: set[Address] = set()
    for text in remotes:
        address = _unicast("remotes", text, "a remote VTEP")
        if isinstance(address, Problem):
            return address
        if address in seen:
            return Problem("remotes", f"{address} is listed twice", "list each remote once")
        seen.add(address)
        parsed.append(("remotes", address))
    families = {address.version for _, address in parsed}
    if len(families) > 1:
        v4 = next(f"{k} {a}" for k, a in parsed if a.version == 4)
        v6 = next(f"{k} {a}" for k, a in parsed if a.version == 6)
        return Problem(parsed[-1][0], f"mixes IPv4 ({v4}) and IPv6 ({v6}); a vxlan device "
                       "runs over one address family", "make group, local and remotes all "
                       "IPv4 or all IPv6")
    return Underlay(str(ipaddress.ip_address(group)) if group else None,
                    str(ipaddress.ip_address(local)) if local else None,
                    tuple(str(ipaddress.ip_address(r)) for r in remotes))
