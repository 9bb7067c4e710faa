"""Waiting for udev to have handled a link netmap made, where udev manages the namespace.

udev's default link policy (systemd's 99-default.link, MACAddressPolicy=persistent) gives
a link whose MAC the kernel chose at random a MAC of its own while it handles the link's
add event. A tap is made by TUNSETIFF with a random MAC and gets netmap's only after, so
udev may read "random" first and write its MAC after netmap's: the race Docker's bridge had
(moby/libnetwork#2380), seen here in the VM lab as a realized tap with another MAC. udev
records an event it has handled in /run/udev/data/n<ifindex>; once that file exists, udev
writes that link's MAC no more.

udev hears the add events of the namespace it runs in only: a link made in another one (a
lab host's) is never handled, and nothing is waited for there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from pathlib import Path

UDEV_RUN = Path("/run/udev")
TIMEOUT = 5.0  # seconds: udev handles an add event in milliseconds on a host, seconds in a VM


def manages(netns: str | None) -> bool:
    """Whether udev runs and hears the links of this namespace (the machine's own)."""
    if netns is not None or not (UDEV_RUN / "control").exists():
        return False
    try:
        return os.stat("/proc/self/ns/net").st_ino == os.stat("/proc/1/ns/net").st_ino
    except OSError:  # PID 1's namespace unreadable: not the machine's init, so not its udev
        return False


def wait_handled(indexes: Collection[int], timeout: float = TIMEOUT) -> list[int]:
    """Wait until udev has handled the add event of each link; the ones it had not by then."""
    pending = set(indexes)
    deadline = time.monotonic() + timeout
    while pending:
        pending = {i for i in pending if not (UDEV_RUN / "data" / f"n{i}").exists()}
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return sorted(pending)
