"""What a guest NIC's MAC and MTU may be, whichever description gives them: a guest's TOML
file (load), a libvirt domain's XML (libvirt.domain), the QEMU helper's --mac. Below all of
them, so each checks alike without importing another."""

from __future__ import annotations

import re

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")

MTU_RANGE = (68, 65535)

# no MAC: what a PF reports for a VF entry nobody set, and what lifts a MAC it enforces
ZERO_MAC = "00:00:00:00:00:00"


def mac_problem(mac: str) -> str | None:
    if not _MAC.fullmatch(mac.lower()):
        return f"{mac!r} is not a MAC address"
    first = int(mac[:2], 16)
    if first & 1:
        return f"{mac} is a multicast address; a NIC needs a unicast MAC"
    if mac.lower() == ZERO_MAC:
        return f"{ZERO_MAC} is not a usable MAC"
    return None
