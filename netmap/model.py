"""The fleet as frozen dataclasses: what the mappings say, nothing derived, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

# mode -> forwarding semantic class (DESIGN.md, "Modes and their forwarding semantics")
SEMANTIC_CLASS: dict[str, str] = {
    "bridge": "local-switching",
    "macvtap-bridge": "local-switching",
    "macvtap-vepa": "external-hairpin",
    "macvtap-private": "isolated",
    "macvtap-passthrough": "dedicated",
    "sriov-vf": "dedicated",
    "vxlan": "local-switching",
}
MODES = tuple(SEMANTIC_CLASS)
SEMANTIC_CLASSES = tuple(dict.fromkeys(SEMANTIC_CLASS.values()))
MACVTAP_MODES = {
    "macvtap-bridge": "bridge",
    "macvtap-vepa": "vepa",
    "macvtap-private": "private",
    "macvtap-passthrough": "passthru",
}
# Modes whose endpoint is a tap enslaved to a Linux bridge on this host.
BRIDGED_MODES = frozenset({"bridge", "vxlan"})
VHOST_POLICIES = ("required", "preferred", "off")
KNOWN_FEATURES = ("vhost-net", "tun", "macvtap", "vxlan", "bridge", "sriov")
VF_ATTACH = ("hostdev", "macvtap")

VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
IFNAMSIZ = 16  # the kernel's limit includes the NUL: names have at most 15 bytes


@dataclass(frozen=True)
class Source:
    """Where a piece of the model came from, for messages."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True)
class Network:
    """A fleet-wide logical network: its identity is a segment + VLAN, or a VNI."""

    name: str
    mtu: int = 1500
    segment: str | None = None
    vlan: int | None = None
    vni: int | None = None
    description: str = ""
    source: Source | None = field(default=None, compare=False)

    @property
    def is_overlay(self) -> bool:
        return self.vni is not None

    @property
    def segment_id(self) -> str:
        """The L2 domain the network lives in: a physical segment or a VNI."""
        return f"vni:{self.vni}" if self.vni is not None else f"{self.segment}"


@dataclass(frozen=True)
class SriovPool:
    total_vfs: int


@dataclass(frozen=True)
class Uplink:
    name: str
    segments: tuple[str, ...] = ()
    mtu: int = 1500
    sriov: SriovPool | None = None
    source: Source | None = field(default=None, compare=False)
    mac: str | None = None  # the NIC's hardware address: finds the uplink again after a rename


@dataclass(frozen=True)
class Vxlan:
    """Underlay parameters of a vxlan binding: a multicast group or unicast remotes."""

    port: int = 4789
    group: str | None = None
    remotes: tuple[str, ...] = ()
    local: str | None = None


@dataclass(frozen=True)
class Binding:
    """How one host realizes one logical network."""

    network: str
    mode: str
    uplink: str
    bridge: str | None = None  # bridge/vxlan: the Linux bridge; default derived
    vlan: int | None = None  # override of the network's VLAN as seen on this uplink
    mtu: int | None = None  # override of the network's MTU on this host
    vf_attach: str = "hostdev"  # sriov-vf: hand the VF over whole, or as macvtap passthru
    spoofchk: bool = True
    vxlan: Vxlan | None = None
    source: Source | None = field(default=None, compare=False)

    @property
    def semantic(self) -> str:
        return SEMANTIC_CLASS[self.mode]


@dataclass(frozen=True)
class Host:
    name: str
    uplinks: dict[str, Uplink] = field(default_factory=dict)
    bindings: dict[str, Binding] = field(default_factory=dict)
    features: frozenset[str] = frozenset()
    netns: str | None = None
    max_guests: int | None = None
    max_endpoints: int | None = None
    source: Source | None = field(default=None, compare=False)


@dataclass(frozen=True)
class GuestNic:
    index: int
    network: str
    mac: str
    model: str = "virtio"
    vhost: str = "preferred"
    semantic: str | None = None  # pinned forwarding class: a change is an error
    mtu: int | None = None  # the MTU the guest is configured with, if known
    source: Source | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Guest:
    name: str
    host: str | None
    nics: tuple[GuestNic, ...] = ()
    source: Source | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Fleet:
    """Everything the mappings directory says, plus the files that could not be read.

    A broken host or guest file is kept in `problems` rather than raised, so that one bad
    file never makes the rest of the fleet unusable; commands that need it raise it.
    """

    networks: dict[str, Network]
    hosts: dict[str, Host]
    guests: dict[str, Guest]
    problems: tuple = ()  # tuple[InputError, ...], one per unreadable file
    root: str = ""
