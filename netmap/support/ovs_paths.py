"""Where Open vSwitch's database listens when nothing says otherwise.

Apart from the OVS steps (netmap/steps/ovs.py re-exports it) so that `netmap discover`,
which only asks whether that socket exists, does not import every step kind to learn it.
"""

from __future__ import annotations

import os

OVS_RUNDIR = "/var/run/openvswitch"


def default_ovsdb() -> str:
    """Where ovs-vsctl finds OVSDB: $OVS_RUNDIR/db.sock, else /var/run/openvswitch's."""
    return f"unix:{os.environ.get('OVS_RUNDIR') or OVS_RUNDIR}/db.sock"
