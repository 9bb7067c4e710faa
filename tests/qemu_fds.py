"""What a QEMU process holds open, for the namespace tier (test_qemu_real, test_multiqueue)
and the VM tier (tests/vm/test_vhost.py; tests/vm/vmhost.py puts this folder on the path)."""

from __future__ import annotations

import os
from pathlib import Path


def fds_of(pid: int) -> list[str]:
    """What each of the process's fds is, with the tun interface (fdinfo `iff:`) where it
    is one: "/dev/net/tun TAP", "/dev/vhost-net", "/dev/tapN (deleted)" ..."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue  # closed since the listing
        found.append(" ".join([target, *(line.split()[1] for line in info.splitlines()
                                         if line.startswith("iff:"))]))
    return found
