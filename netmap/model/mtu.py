"""The MTU a guest gets on a host: pure, apart from the graph, so that the QEMU helper
(which QEMU waits for at every guest start) resolves it without importing networkx."""

from __future__ import annotations

from netmap.model.fleet import Binding, Host, Network
from netmap.modes import REGISTRY

__all__ = ["effective_mtu"]


def effective_mtu(network: Network, binding: Binding, host: Host) -> tuple[int, str]:
    """The MTU a guest gets on this host, and what limits it."""
    mtu, reason = network.mtu, f"network {network.name}"
    if binding.mtu is not None:
        mtu, reason = binding.mtu, f"binding on {host.name}"
    ceiling, why = REGISTRY[binding.mode].mtu_ceiling(binding, host.uplinks[binding.uplink])
    if ceiling < mtu:
        mtu, reason = ceiling, why
    return mtu, reason
