"""What realize would do on a host for a guest: an ordered list of small steps. Pure.

A step names one kernel object (a bridge, a port, a tap...) and the state it must be in;
its class (netmap/steps) describes it, decides it against the live host, applies it
idempotently and undoes it (a later step failed, or the guest is released) through the host
views netmap/netlink implements. Steps that several guests share (a bridge, the uplink's
enslavement, a vxlan device) carry the same `resource` key, so a plan lists each once and
state can count who still uses it. Which steps a NIC needs is its mode's answer
(netmap/modes); netmap/plan/planner.py asks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from netmap.model.names import host_side_mac  # noqa: F401  (the plan's vocabulary too)
from netmap.steps import (  # noqa: F401  (the plan's vocabulary, imported from here too)
    BRIDGE_AGEING,
    DEFAULT_PVID,
    OVS_STEPS,
    STEP_TYPES,
    BridgeVlan,
    ClaimVf,
    CreateMacvtap,
    CreateTap,
    EnslavePort,
    EnsureBridge,
    EnsureOvsBridge,
    EnsureOvsPort,
    EnsureVlanLink,
    EnsureVxlan,
    LinkStep,
    RequireLink,
    Step,
    step_from_dict,
)
from netmap.steps.ovs import (  # noqa: F401
    OVS_NETWORK_KEY,
    OVS_OWNER_KEY,
    OVS_RUNDIR,
    UPLINK_OWNER,
    default_ovsdb,
)

S = TypeVar("S", bound=Step)


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

    def step_of(self, kind: type[S], target: str | None = None) -> S | None:
        """The NIC's first step of `kind` (about `target`, if given): what an endpoint
        that verifies or attaches what its mode planned looks up (the mode made it)."""
        return next((step for step in self.steps if isinstance(step, kind)
                     and (target is None or step.target == target)), None)

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
