"""What realize would do on a host for a guest: an ordered list of small steps. Pure.

A step names one kernel object (a bridge, a port, a tap...) and the state it must be in;
its class (netmap/steps) describes it, decides it against the live host, applies it
idempotently and undoes it (a later step failed, or the guest is released) through the host
views netmap/netlink implements. Steps that several guests share (a bridge, the uplink's
enslavement, a vxlan device) carry the same `resource` key, so a plan lists each once and
state can count who still uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from netmap.model import MACVTAP_MODES, VXLAN_OVERHEAD, Guest, GuestNic, Host
from netmap.steps import (  # noqa: F401  (the plan's vocabulary, imported from here too)
    BRIDGE_AGEING,
    DEFAULT_PVID,
    STEP_TYPES,
    BridgeVlan,
    ClaimVf,
    CreateMacvtap,
    CreateTap,
    EnslavePort,
    EnsureBridge,
    EnsureVlanLink,
    EnsureVxlan,
    LinkStep,
    RequireLink,
    Step,
    step_from_dict,
)

if TYPE_CHECKING:  # the steps are also what the QEMU helper and release import: no networkx
    import networkx as nx

    from netmap import graph as g


def host_side_mac(guest_mac: str) -> str:
    """The tap's own MAC: the guest's with the first byte 0xfe, as libvirt does, so a bridge
    (which takes the lowest port MAC as its own) never claims the guest's address and the
    host never answers for it."""
    return "fe" + guest_mac[2:]


@dataclass(frozen=True)
class NicPlan:
    nic: int
    network: str
    mode: str
    mac: str
    model: str
    device: str | None  # the endpoint QEMU/libvirt attaches: tap or macvtap name
    uplink: str
    vlan: int | None
    mtu: int
    bridge: str | None = None
    steps: tuple[Step, ...] = ()
    queues: int = 1

    def as_dict(self) -> dict[str, object]:
        return {"nic": self.nic, "network": self.network, "mode": self.mode, "mac": self.mac,
                "model": self.model, "device": self.device, "uplink": self.uplink,
                "vlan": self.vlan, "mtu": self.mtu, "bridge": self.bridge,
                "queues": self.queues,
                "steps": [s.as_dict() for s in self.steps]}


@dataclass(frozen=True)
class Plan:
    guest: str
    host: str
    netns: str | None
    nics: tuple[NicPlan, ...] = ()
    problems: tuple[str, ...] = field(default=())  # why some NIC cannot be planned

    @property
    def steps(self) -> list[tuple[int, Step]]:
        """Every step once, in order, with the NIC that first needs it."""
        seen: set[str] = set()
        out = []
        for nic in self.nics:
            for step in nic.steps:
                if step.resource not in seen:
                    seen.add(step.resource)
                    out.append((nic.nic, step))
        return out

    def as_dict(self) -> dict[str, object]:
        return {"guest": self.guest, "host": self.host, "netns": self.netns,
                "nics": [n.as_dict() for n in self.nics],
                "steps": [{"nic": i, **s.as_dict(), "do": s.describe(),
                           "undo": s.describe_undo()}
                          for i, s in self.steps],
                "problems": list(self.problems)}

    def lines(self) -> list[str]:
        """The plan as numbered text lines, each step followed by its undo where it has one."""
        lines = []
        for n, (i, step) in enumerate(self.steps, 1):
            lines.append(f"{n}. [nic {i}] {step.describe()}")
            undo = step.describe_undo()
            if undo is not None:
                lines.append(f"{' ' * len(str(n))}  undo: {undo}")
        return lines


def _bridged_steps(nic: GuestNic, view: g.NicView, mtu: int, port: str, bridge: str,
                   tap: str) -> list[Step]:
    mac = nic.mac
    vlan = view.vlan
    steps: list[Step] = [EnsureBridge(bridge, mtu, vlan_filtering=vlan is not None),
                         EnslavePort(port, bridge)]
    if vlan is not None:
        steps.append(BridgeVlan(port, vlan))
    steps.append(CreateTap(tap, host_side_mac(mac), mac, mtu, bridge,
                           multi_queue=nic.queues > 1))
    if vlan is not None:
        steps.append(BridgeVlan(tap, vlan, access=True))
    return steps


def nic_plan(graph: nx.DiGraph, guest: Guest, nic_index: int, host: Host) -> NicPlan | str:
    """The steps for one NIC, or why it cannot be planned on this host."""
    from netmap import graph as g

    nic = guest.nics[nic_index]
    view = g.nic_view(graph, guest.name, nic, host.name)
    if not view.bound or view.uplink is None or view.mode is None:
        return f"NIC {nic.index}: {host.name} has no binding for network {nic.network}"
    binding = host.bindings[nic.network]
    devices = dict(view.devices)
    # What the guest uses, even where the mapping gives less (check's MTU_TOO_SMALL): a
    # realize --force then asks the uplink for it and is refused there, rather than
    # building an endpoint that drops the guest's larger frames. The source is where the
    # guest runs now (check compares with the same view).
    source = g.nic_view(graph, guest.name, nic, guest.host) if guest.host else None
    mtu = max(view.mtu or 1500, g.needed_mtu(graph, guest, nic, source))
    overhead = binding.vxlan.overhead if binding.vxlan else VXLAN_OVERHEAD
    through = mtu + overhead if view.mode == "vxlan" else mtu
    # a VF's frames leave through its PF, whose MTU bounds the VF's (igb, ixgbe, i40e)
    steps: list[Step] = [RequireLink(view.uplink, through)]
    device: str | None = devices.get("tap") or devices.get("macvtap")
    bridge = devices.get("bridge")
    if view.mode == "bridge":
        steps += _bridged_steps(nic, view, mtu, view.uplink, devices["bridge"],
                                devices["tap"])
    elif view.mode == "vxlan":
        network = g.fleet_of(graph).networks[nic.network]
        options = binding.vxlan
        vx = devices["vxlan"]
        steps.append(EnsureVxlan(vx, int(network.vni or 0), view.uplink, mtu,
                                 options.port if options else 4789,
                                 options.group if options else None,
                                 options.remotes if options else (),
                                 options.local if options else None))
        steps += _bridged_steps(nic, view, mtu, vx, devices["bridge"], devices["tap"])
    elif view.mode in MACVTAP_MODES:
        lower = view.uplink
        if "vlan" in devices:
            lower = devices["vlan"]
            steps.append(EnsureVlanLink(lower, view.uplink, int(view.vlan or 0), mtu))
        steps.append(CreateMacvtap(devices["macvtap"], lower, MACVTAP_MODES[view.mode],
                                   nic.mac, mtu))
    elif view.mode == "sriov-vf":
        steps.append(ClaimVf(view.uplink, nic.mac, view.vlan, binding.spoofchk,
                             devices.get("macvtap"), mtu))
    else:  # a mode the model knows and the plan does not: never silently skip it
        return f"NIC {nic.index}: mode {view.mode} cannot be realized by this netmap"
    return NicPlan(nic=nic.index, network=nic.network, mode=view.mode, mac=nic.mac,
                   model=nic.model, device=device, uplink=view.uplink, vlan=view.vlan, mtu=mtu,
                   bridge=bridge, steps=tuple(steps), queues=nic.queues)


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
