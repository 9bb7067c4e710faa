"""Which host of the fleet this machine is: for the commands and for the integrations that
run without them (the QEMU helper), alike."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from netmap.errors import InputError

if TYPE_CHECKING:
    from netmap.model.fleet import Fleet, Host


def host_name(explicit: str | None = None) -> str:
    """`explicit` (--host NAME), else $NETMAP_HOST, else the machine's hostname (DESIGN.md)."""
    import socket

    return explicit or os.environ.get("NETMAP_HOST") or socket.gethostname()


def this_host(fleet: Fleet, explicit: str | None = None) -> Host:
    """The mapping of host_name(explicit)."""
    from netmap.load import require_host

    name = host_name(explicit)
    try:
        return require_host(fleet, name)
    except InputError as err:
        if explicit or os.environ.get("NETMAP_HOST"):
            raise
        raise InputError(f"this machine's hostname {name!r} has no mapping",
                         fix="pass --host NAME or set $NETMAP_HOST") from err
