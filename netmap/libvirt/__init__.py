"""libvirt integration: domain XML import, the qemu hook, <network> definitions.

Kept free of imports: the hook's pass-through path imports this package and must start
without networkx, rich or pyroute2.
"""

from __future__ import annotations

# The namespace of netmap's element in a domain's <metadata>, e.g.
#   <netmap:guest xmlns:netmap="https://netmap.dev/xmlns/1">
#     <netmap:nic mac="52:54:00:12:34:56" network="prod"/>
#   </netmap:guest>
NAMESPACE = "https://netmap.dev/xmlns/1"


def vf_pool_network(uplink: str) -> str:
    """The libvirt network that hands out the VFs of one PF (forward mode hostdev or
    passthrough). One per PF, never one per logical network: libvirt tracks which VF is in
    use per network, so two networks on one PF would hand the same VF out twice. Each
    logical network on the PF is a portgroup of it, carrying that network's VLAN."""
    return f"netmap-vf-{uplink}"
