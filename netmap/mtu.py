"""The MTU a guest gets on a host: pure, apart from the graph, so that the QEMU helper
(which QEMU waits for at every guest start) resolves it without importing networkx."""

from __future__ import annotations

from netmap.model import VXLAN_OVERHEAD, Binding, Host, Network

__all__ = ["effective_mtu"]


def effective_mtu(network: Network, binding: Binding, host: Host) -> tuple[int, str]:
    """The MTU a guest gets on this host, and what limits it."""
    mtu, reason = network.mtu, f"network {network.name}"
    if binding.mtu is not None:
        mtu, reason = binding.mtu, f"binding on {host.name}"
    uplink = host.uplinks[binding.uplink]
    ceiling, why = uplink.mtu, f"uplink {uplink.name} MTU {uplink.mtu}"
    if binding.mode == "vxlan":
        overhead = binding.vxlan.overhead if binding.vxlan else VXLAN_OVERHEAD
        ceiling -= overhead
        why = f"underlay {uplink.name} MTU {uplink.mtu} - {overhead} vxlan overhead"
    if ceiling < mtu:
        mtu, reason = ceiling, why
    return mtu, reason
