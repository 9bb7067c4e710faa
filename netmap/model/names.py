"""Interface names: validation and the deterministic names netmap gives what it creates."""

from __future__ import annotations

import functools
import hashlib
import re

from netmap.model.fleet import IFNAMSIZ

MAX_IFNAME = IFNAMSIZ - 1
# The kernel's dev_valid_name() refuses "/", ":" and white space; "%" would be a
# format for the kernel's own numbering, never what a mapping means.
_ILLEGAL = re.compile(r"[/:%\s]")


@functools.lru_cache(maxsize=4096)  # a fleet's hosts repeat a few names (eno1, eth0...)
def ifname_problem(name: str) -> str | None:
    """Why `name` cannot be a Linux interface name, or None when it can."""
    if not name:
        return "is empty"
    if name in (".", ".."):
        return f"{name!r} is reserved"
    size = len(name.encode())
    if size > MAX_IFNAME:
        return f"{name!r} has {size} bytes; Linux allows at most {MAX_IFNAME} (IFNAMSIZ)"
    if _ILLEGAL.search(name):
        return f"{name!r} contains '/', ':', '%' or white space, which Linux refuses"
    return None


def _short_hash(text: str, size: int) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()[:size]


@functools.lru_cache(maxsize=4096)  # a placement query asks it per NIC and candidate host
def tap_name(guest: str, index: int) -> str:
    """The guest NIC's endpoint (tap, macvtap): `nm` + a hash of guest and NIC index."""
    return f"nm{_short_hash(f'{guest}#{index}', 9)}{index % 10}"


def bridge_name(uplink: str, declared: str | None = None) -> str:
    """A bridge-mode binding's bridge: one per uplink, since an uplink has one master."""
    if declared:
        return declared
    name = f"br-{uplink}"
    return name if len(name.encode()) <= MAX_IFNAME else f"nmbr{_short_hash(uplink, 8)}"


def vxlan_name(vni: int) -> str:
    return f"vx{vni}"


def vxlan_bridge_name(vni: int, declared: str | None = None) -> str:
    return declared or f"brvx{vni}"


def vlan_name(uplink: str, vlan: int) -> str:
    """The 802.1Q sub-interface a macvtap binding with a VLAN sits on (may be too long)."""
    return f"{uplink}.{vlan}"


def host_side_mac(guest_mac: str) -> str:
    """The tap's own MAC: the guest's with the first byte 0xfe, as libvirt does, so a bridge
    (which takes the lowest port MAC as its own) never claims the guest's address and the
    host never answers for it."""
    return "fe" + guest_mac[2:]
