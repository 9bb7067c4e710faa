"""The plan realizing a guest on a host: each NIC's steps, as its binding's mode gives them.
Pure. (The step classes are netmap/plan.py's; the modes build them, so this is not there.)"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from netmap.model.fleet import Guest, Host
from netmap.modes import REGISTRY, NicContext
from netmap.plan import NicPlan, Plan, RequireLink, Step

if TYPE_CHECKING:  # the graph is built by the caller: no networkx import here
    import networkx as nx

__all__ = ["build_plan", "nic_plan"]


def nic_plan(graph: nx.DiGraph, guest: Guest, nic_index: int, host: Host) -> NicPlan | str:
    """The steps for one NIC, or why it cannot be planned on this host."""
    from netmap.query import graph as g

    nic = guest.nics[nic_index]
    view = g.nic_view(graph, guest.name, nic, host.name)
    if not view.bound or view.uplink is None or view.mode is None:
        return f"NIC {nic.index}: {host.name} has no binding for network {nic.network}"
    binding = host.bindings[nic.network]
    mode = REGISTRY.get(view.mode)
    if mode is None:  # a mode the model knows and the plan does not: never silently skip it
        return f"NIC {nic.index}: mode {view.mode} cannot be realized by this netmap"
    devices = dict(view.devices)
    # What the guest uses, even where the mapping gives less (check's MTU_TOO_SMALL): a
    # realize --force then asks the uplink for it and is refused there, rather than
    # building an endpoint that drops the guest's larger frames. The source is where the
    # guest runs now (check compares with the same view).
    source = g.nic_view(graph, guest.name, nic, guest.host) if guest.host else None
    mtu = max(view.mtu or 1500, g.needed_mtu(graph, guest, nic, source))
    network = g.fleet_of(graph).networks[nic.network]
    # a VF's frames leave through its PF, whose MTU bounds the VF's (igb, ixgbe, i40e)
    steps: list[Step] = [RequireLink(view.uplink, mtu + mode.underlay_overhead(binding))]
    steps += mode.steps(NicContext(guest, nic, binding, network, view.uplink, view.vlan, mtu,
                                   devices))
    device: str | None = devices.get("tap") or devices.get("macvtap")
    return NicPlan(nic=nic.index, network=nic.network, mode=view.mode, mac=nic.mac,
                   model=nic.model, device=device, uplink=view.uplink, vlan=view.vlan, mtu=mtu,
                   bridge=devices.get("bridge"), steps=tuple(steps), queues=nic.queues)


def build_plan(graph: nx.DiGraph, guest: Guest, host: Host) -> Plan:
    """The plan realizing every NIC of `guest` on `host`; NICs that cannot be planned are
    listed in `problems` (realize refuses such a plan)."""
    nics: list[NicPlan] = []
    problems: list[str] = []
    for index in range(len(guest.nics)):
        planned = nic_plan(graph, guest, index, host)
        if isinstance(planned, str):
            problems.append(planned)
        else:
            nics.append(planned)
    # an uplink shared by several NICs must carry the largest MTU any of them needs
    need: dict[str, int] = {}
    for nic in nics:
        for step in nic.steps:
            if isinstance(step, RequireLink):
                need[step.name] = max(need.get(step.name, 0), step.mtu)
    nics = [replace(nic, steps=tuple(
        RequireLink(s.name, need[s.name]) if isinstance(s, RequireLink) else s
        for s in nic.steps)) for nic in nics]
    return Plan(guest.name, host.name, host.netns, tuple(nics), tuple(problems))
