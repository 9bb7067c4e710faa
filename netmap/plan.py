"""What realize would do on a host for a guest: an ordered list of small steps. Pure.

A step names one kernel object (a bridge, a port, a tap...) and the state it must be in;
apply (netmap/netlink/apply.py) makes it so, idempotently, and undoes it through the step's
`inverse()` when a later step fails or the guest is released. Steps that several guests share
(a bridge, the uplink's enslavement, a vxlan device) carry the same `resource` key, so a
plan lists each once and state can count who still uses it. Which steps a NIC needs is its
mode's answer (netmap/modes); netmap/planner.py asks it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import ClassVar

OVS_OWNER_KEY = "netmap-owner"  # on every OVS port netmap adds: release takes out only these
OVS_NETWORK_KEY = "netmap-network"  # on a guest's port: the logical network (drift reads it)
OVS_RUNDIR = "/var/run/openvswitch"


def default_ovsdb() -> str:
    """Where ovs-vsctl finds OVSDB: $OVS_RUNDIR/db.sock, else /var/run/openvswitch's."""
    return f"unix:{os.environ.get('OVS_RUNDIR') or OVS_RUNDIR}/db.sock"

# Bridge FDB ageing, in clock_t (1/100 s), as IFLA_BR_AGEING_TIME wants it. Not 0: os-vif
# set 0 so frames were not lost while a live-migrated guest's MAC moved (LP #1715317) and
# that turned every bridge into a hub leaking tenant frames to all ports (OSSA-2019-004,
# LP #1837252). Not the kernel's 300 s either: a stale entry pointing at the old port would
# then black-hole a migrated MAC for minutes if the guest's RARP announce is lost. 30 s
# bounds that window while still learning.
BRIDGE_AGEING = 3000
DEFAULT_PVID = 1  # the bridge's default_pvid: untagged traffic of a vlan-filtering bridge


@dataclass(frozen=True)
class Step:
    """One object in one state. Subclasses say what; apply knows how."""

    kind: ClassVar[str] = "step"
    shared: ClassVar[bool] = False  # may be used by other guests (kept until the last leaves)

    @property
    def resource(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def inverse(self) -> Step | None:
        """The step that undoes this one (None: nothing to undo)."""
        return None

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class LinkStep(Step):
    """A step that creates the link `name`; deleting that link undoes it."""

    link_kind: ClassVar[str] = ""  # the kind DeleteLink names ("bridge", "tun", ...)
    name: str

    @property
    def resource(self) -> str:
        return f"link:{self.name}"

    def inverse(self) -> Step | None:
        return DeleteLink(self.name, self.link_kind)


@dataclass(frozen=True)
class RequireLink(Step):
    """An interface the host must already have (an uplink): up, or brought up."""

    kind: ClassVar[str] = "require-link"
    shared: ClassVar[bool] = True
    name: str
    mtu: int = 0  # the MTU the endpoints need through it (vxlan: plus its overhead)

    @property
    def resource(self) -> str:
        return f"up:{self.name}"

    def describe(self) -> str:
        need = f" with MTU >= {self.mtu}" if self.mtu else ""
        return f"uplink {self.name} must exist{need}; bring it up if it is down"

    def inverse(self) -> Step | None:
        return SetDown(self.name)


@dataclass(frozen=True)
class SetDown(Step):
    kind: ClassVar[str] = "set-down"
    name: str

    @property
    def resource(self) -> str:
        return f"up:{self.name}"

    def describe(self) -> str:
        return f"set {self.name} down again"


@dataclass(frozen=True)
class EnsureBridge(LinkStep):
    kind: ClassVar[str] = "bridge"
    link_kind: ClassVar[str] = "bridge"
    shared: ClassVar[bool] = True
    mtu: int
    vlan_filtering: bool = False
    ageing: int = BRIDGE_AGEING

    def describe(self) -> str:
        extra = ", vlan_filtering" if self.vlan_filtering else ""
        return (f"bridge {self.name} (mtu {self.mtu}, ageing {self.ageing // 100}s{extra}), "
                "up")


@dataclass(frozen=True)
class EnslavePort(Step):
    """Make `port` (the uplink or the vxlan device) a port of `bridge`."""

    kind: ClassVar[str] = "enslave"
    shared: ClassVar[bool] = True
    port: str
    bridge: str

    @property
    def resource(self) -> str:
        return f"port:{self.port}"

    def describe(self) -> str:
        return f"enslave {self.port} to bridge {self.bridge}"

    def inverse(self) -> Step | None:
        return ReleasePort(self.port, self.bridge)


@dataclass(frozen=True)
class ReleasePort(Step):
    kind: ClassVar[str] = "release-port"
    port: str
    bridge: str

    @property
    def resource(self) -> str:
        return f"port:{self.port}"

    def describe(self) -> str:
        return f"take {self.port} out of bridge {self.bridge}"


@dataclass(frozen=True)
class BridgeVlan(Step):
    """A VLAN on a port of a vlan-filtering bridge: tagged on the uplink (trunk), or the
    port's only VLAN, untagged, as its PVID (an access port: the guest's tap)."""

    kind: ClassVar[str] = "bridge-vlan"
    shared: ClassVar[bool] = True
    port: str
    vid: int
    access: bool = False

    @property
    def resource(self) -> str:
        return f"vlan:{self.port}:{self.vid}"

    def describe(self) -> str:
        how = "untagged PVID, only VLAN (access port)" if self.access else "tagged (trunk)"
        return f"bridge VLAN {self.vid} on {self.port}: {how}"

    def inverse(self) -> Step | None:
        return DropBridgeVlan(self.port, self.vid)


@dataclass(frozen=True)
class DropBridgeVlan(Step):
    kind: ClassVar[str] = "drop-bridge-vlan"
    port: str
    vid: int

    @property
    def resource(self) -> str:
        return f"vlan:{self.port}:{self.vid}"

    def describe(self) -> str:
        return f"remove bridge VLAN {self.vid} from {self.port}"


@dataclass(frozen=True)
class EnsureVlanLink(LinkStep):
    """An 802.1Q sub-interface, the lower device of a macvtap on a VLAN."""

    kind: ClassVar[str] = "vlan-link"
    link_kind: ClassVar[str] = "vlan"
    shared: ClassVar[bool] = True
    lower: str
    vid: int
    mtu: int

    def describe(self) -> str:
        return f"802.1Q {self.name} on {self.lower} (VLAN {self.vid}, mtu {self.mtu}), up"


@dataclass(frozen=True)
class EnsureVxlan(LinkStep):
    kind: ClassVar[str] = "vxlan"
    link_kind: ClassVar[str] = "vxlan"
    shared: ClassVar[bool] = True
    vni: int
    underlay: str
    mtu: int
    port: int = 4789
    group: str | None = None
    remotes: tuple[str, ...] = ()
    local: str | None = None

    def describe(self) -> str:
        where = (f"group {self.group}" if self.group
                 else f"remotes {', '.join(self.remotes)}" if self.remotes else "no peers")
        return (f"vxlan {self.name} VNI {self.vni} on {self.underlay} port {self.port}, "
                f"{where} (mtu {self.mtu}), up")


@dataclass(frozen=True)
class CreateTap(LinkStep):
    """The guest's tap, persistent, IFF_TAP|IFF_NO_PI|IFF_VNET_HDR as QEMU opens it, and
    IFF_MULTI_QUEUE for a NIC with several queues: QEMU and libvirt open a tap with that
    flag exactly when they want more than one queue, and the kernel refuses (EINVAL) a
    tap whose flag differs, so the flag follows the NIC's queues both ways."""

    kind: ClassVar[str] = "tap"
    link_kind: ClassVar[str] = "tun"
    mac: str  # the host side's MAC (see host_side_mac)
    guest_mac: str
    mtu: int
    bridge: str
    multi_queue: bool = False

    def describe(self) -> str:
        queues = ", multi-queue" if self.multi_queue else ""
        where = f" in bridge {self.bridge}" if self.bridge else ""  # "": an OVS port
        return (f"tap {self.name} for {self.guest_mac} (host side {self.mac}, mtu {self.mtu}"
                f"{queues}){where}, up")


@dataclass(frozen=True)
class CreateMacvtap(LinkStep):
    kind: ClassVar[str] = "macvtap"
    link_kind: ClassVar[str] = "macvtap"
    lower: str
    mode: str  # bridge | vepa | private | passthru (the kernel's names)
    mac: str
    mtu: int

    def describe(self) -> str:
        return f"macvtap {self.name} on {self.lower}, mode {self.mode}, {self.mac}, " \
               f"mtu {self.mtu}, up"


@dataclass(frozen=True)
class ClaimVf(Step):
    """A free VF of `pf`, chosen under the host lock: MAC, VLAN and spoof-check are set on
    the PF's VF entry. With `macvtap`, the VF netdev then carries a passthru macvtap."""

    kind: ClassVar[str] = "vf"
    pf: str
    mac: str
    vlan: int | None
    spoofchk: bool
    macvtap: str | None = None
    mtu: int = 1500

    @property
    def resource(self) -> str:
        return f"vf:{self.pf}:{self.mac}"

    def describe(self) -> str:
        vlan = f"VLAN {self.vlan}" if self.vlan else "untagged"
        tail = f", VF netdev as passthru macvtap {self.macvtap}" if self.macvtap else ""
        return (f"claim a free VF of {self.pf}: MAC {self.mac}, {vlan}, spoofchk "
                f"{'on' if self.spoofchk else 'off'}{tail}")

    def inverse(self) -> Step | None:
        return ReleaseVf(self.pf, self.mac, self.macvtap)


@dataclass(frozen=True)
class ReleaseVf(Step):
    kind: ClassVar[str] = "release-vf"
    pf: str
    mac: str
    macvtap: str | None = None

    @property
    def resource(self) -> str:
        return f"vf:{self.pf}:{self.mac}"

    def describe(self) -> str:
        return f"reset the VF of {self.pf} that holds {self.mac} (MAC 0, VLAN 0)"


@dataclass(frozen=True)
class EnsureOvsBridge(Step):
    """An Open vSwitch bridge in the OVSDB at `ovsdb`: used as it is when it exists (its
    datapath type is the operator's), else created with `datapath_type`."""

    kind: ClassVar[str] = "ovs-bridge"
    shared: ClassVar[bool] = True
    name: str
    ovsdb: str
    datapath_type: str | None = None

    @property
    def resource(self) -> str:
        return f"ovs-bridge:{self.name}"

    def describe(self) -> str:
        datapath = f", datapath {self.datapath_type}" if self.datapath_type else ""
        return f"OVS bridge {self.name}{datapath} (OVSDB {self.ovsdb})"

    def inverse(self) -> Step | None:
        return DeleteOvsBridge(self.name, self.ovsdb)


@dataclass(frozen=True)
class DeleteOvsBridge(Step):
    kind: ClassVar[str] = "delete-ovs-bridge"
    name: str
    ovsdb: str

    @property
    def resource(self) -> str:
        return f"ovs-bridge:{self.name}"

    def describe(self) -> str:
        return f"delete OVS bridge {self.name}"


@dataclass(frozen=True)
class EnsureOvsPort(Step):
    """`port` on OVS bridge `bridge`: the uplink as a trunk (no tag: every VLAN), or the
    guest's tap as an access port (`tag`) with the external_ids an SDN finds it by."""

    kind: ClassVar[str] = "ovs-port"
    shared: ClassVar[bool] = True  # the uplink's port; a tap's has one guest
    port: str
    bridge: str
    ovsdb: str
    tag: int | None = None
    external_ids: tuple[tuple[str, str], ...] = ()

    @property
    def resource(self) -> str:
        return f"ovs-port:{self.port}"

    def describe(self) -> str:
        how = f"access port, tag {self.tag}" if self.tag is not None else "trunk, every VLAN"
        ids = ", " + ", ".join(f"{k}={v}" for k, v in self.external_ids) \
            if self.external_ids else ""
        return f"OVS port {self.port} on {self.bridge} ({how}{ids})"

    def inverse(self) -> Step | None:
        return DeleteOvsPort(self.port, self.bridge, self.ovsdb)


@dataclass(frozen=True)
class DeleteOvsPort(Step):
    kind: ClassVar[str] = "delete-ovs-port"
    port: str
    bridge: str
    ovsdb: str

    @property
    def resource(self) -> str:
        return f"ovs-port:{self.port}"

    def describe(self) -> str:
        return f"take port {self.port} out of OVS bridge {self.bridge}"


OVS_STEPS = (EnsureOvsBridge, EnsureOvsPort)


@dataclass(frozen=True)
class DeleteLink(Step):
    kind: ClassVar[str] = "delete"
    name: str
    link_kind: str

    @property
    def resource(self) -> str:
        return f"link:{self.name}"

    def describe(self) -> str:
        return f"delete {self.link_kind} {self.name}"


STEP_TYPES: dict[str, type[Step]] = {cls.kind: cls for cls in (
    RequireLink, SetDown, EnsureBridge, EnslavePort, ReleasePort, BridgeVlan, DropBridgeVlan,
    EnsureVlanLink, EnsureVxlan, CreateTap, CreateMacvtap, ClaimVf, ReleaseVf, DeleteLink,
    EnsureOvsBridge, DeleteOvsBridge, EnsureOvsPort, DeleteOvsPort)}


def step_from_dict(data: dict[str, object]) -> Step:
    """The inverse of Step.as_dict (state keeps steps as JSON)."""
    fields = dict(data)
    cls = STEP_TYPES[str(fields.pop("kind"))]
    remotes = fields.get("remotes")
    if isinstance(remotes, (list, tuple)):  # JSON has lists only
        fields["remotes"] = tuple(remotes)
    ids = fields.get("external_ids")
    if isinstance(ids, (list, tuple)):
        fields["external_ids"] = tuple((str(k), str(v)) for k, v in ids)
    return cls(**fields)


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
                           "undo": undo.describe() if (undo := s.inverse()) else None}
                          for i, s in self.steps],
                "problems": list(self.problems)}

    def lines(self) -> list[str]:
        """The plan as numbered text lines, each step followed by its undo where it has one."""
        lines = []
        for n, (i, step) in enumerate(self.steps, 1):
            lines.append(f"{n}. [nic {i}] {step.describe()}")
            undo = step.inverse()
            if undo is not None:
                lines.append(f"{' ' * len(str(n))}  undo: {undo.describe()}")
        return lines
