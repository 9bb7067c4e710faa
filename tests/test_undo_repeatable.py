"""Release undoes what a realize recorded as pending, also what that realize never got to
do (it crashed first: tests/vm/test_rollback_vm.py kills it at its sendtos). Each undo must
then find its change absent and be done, not fail: a failed undo stays in state, and the
next release fails the same way, for ever (real kernel, namespaces, prefix nmvo)."""

from __future__ import annotations

import subprocess

from conftest import needs_netns

from netmap.netlink.kernel_steps import RtnlKernel
from netmap.netlink.rtnl import Rtnl

PREFIX = "nmvo"


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


@needs_netns
def test_a_bridge_vlan_never_added_is_undone_without_error(netns_factory) -> None:
    """The uplink of a VLAN bridge: crashed before it became the bridge's port, and as a
    port that never got the VLAN (the kernel refused the first with EOPNOTSUPP)."""
    ns = netns_factory(PREFIX)
    ip(ns, "link", "add", "nmvoport", "type", "veth", "peer", "name", "nmvopeer")
    with Rtnl(ns) as kernel:
        undo = RtnlKernel(kernel)
        undo.drop_bridge_vlan("nmvoport", 152)  # no bridge's port
        ip(ns, "link", "add", "nmvobr", "type", "bridge")
        ip(ns, "link", "set", "nmvoport", "master", "nmvobr")
        undo.drop_bridge_vlan("nmvoport", 152)  # a port, without VLAN 152
        undo.drop_bridge_vlan("nmvogone", 152)  # no such device
