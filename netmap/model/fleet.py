"""The fleet as frozen dataclasses: what the mappings say, nothing derived, no I/O."""

from __future__ import annotations

import dataclasses
import operator
import sys
from abc import abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

# tells type checkers that @frozen makes a dataclass; typing has it from Python 3.11 on,
# and a checker always knows typing_extensions' (which needs not be installed to run)
if TYPE_CHECKING:
    from _typeshed import DataclassInstance
    from typing_extensions import dataclass_transform
elif sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # pragma: no cover - Python 3.10
    def dataclass_transform(**_: Any) -> Any:
        return lambda decorator: decorator

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def frozen(cls: type[T]) -> type[T]:
    """dataclass(frozen=True, slots=True), pickled as a call of its __init__.

    Slots, not an instance dict: a large fleet is hundreds of thousands of these objects,
    an instance dict would more than double each, and memory first touched is paid in
    page faults. A frozen dataclass with slots would otherwise unpickle through a
    Python __setstate__ that sets each field with object.__setattr__ (the load's store
    and its second parsing process pickle tens of thousands of them)."""
    cls = dataclass(frozen=True, slots=True)(cls)
    specs = dataclasses.fields(cast("type[DataclassInstance]", cls))
    values = operator.attrgetter(*(spec.name for spec in specs))
    if len(specs) == 1:  # attrgetter of one name gives the value alone
        cls.__reduce__ = lambda self: (cls, (values(self),))  # type: ignore[method-assign]
    else:
        cls.__reduce__ = lambda self: (cls, values(self))  # type: ignore[method-assign]
    return cls


# A binding's mode is a name in netmap.modes.REGISTRY; all it means is said there.
VHOST_POLICIES = ("required", "preferred", "off")
KNOWN_FEATURES = ("vhost-net", "tun", "macvtap", "vxlan", "bridge", "sriov")
VF_ATTACH = ("hostdev", "macvtap")

VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
VXLAN6_OVERHEAD = 70  # the same over IPv6: its header is 40 bytes, not 20
IFNAMSIZ = 16  # the kernel's limit includes the NUL: names have at most 15 bytes
# the models whose NIC is virtio-net, the only one with several queues
VIRTIO_MODELS = frozenset({"virtio", "virtio-transitional", "virtio-non-transitional"})
MAX_QUEUES = 256  # MAX_TAP_QUEUES of the kernel's tun and macvtap drivers


@frozen
class Source:
    """Where a piece of the model came from, for messages."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@frozen
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


@frozen
class SriovPool:
    total_vfs: int


@frozen
class Uplink:
    name: str
    segments: tuple[str, ...] = ()
    mtu: int = 1500
    sriov: SriovPool | None = None
    source: Source | None = field(default=None, compare=False)
    mac: str | None = None  # the NIC's hardware address: finds the uplink again after a rename


@frozen
class Vxlan:
    """Underlay parameters of a vxlan binding: a multicast group or unicast remotes."""

    port: int = 4789
    group: str | None = None
    remotes: tuple[str, ...] = ()
    local: str | None = None

    @property
    def ipv6(self) -> bool:
        """Whether the underlay is IPv6 (load makes group, local and remotes agree)."""
        return any(":" in address for address in (self.group or "", self.local or "",
                                                      *self.remotes))

    @property
    def overhead(self) -> int:
        return VXLAN6_OVERHEAD if self.ipv6 else VXLAN_OVERHEAD


@frozen
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
    # ovs: set on the guest's port for the operator's SDN (OVN, Neutron), sorted by key
    external_ids: tuple[tuple[str, str], ...] = ()
    datapath_type: str | None = None  # ovs: of a bridge netmap creates (system, netdev)
    ovsdb: str | None = None  # ovs: the host's OVSDB remote ([host] ovsdb); None: the default


@frozen
class Host:
    name: str
    uplinks: dict[str, Uplink] = field(default_factory=dict)
    bindings: dict[str, Binding] = field(default_factory=dict)
    features: frozenset[str] = frozenset()
    netns: str | None = None
    max_guests: int | None = None
    max_endpoints: int | None = None
    source: Source | None = field(default=None, compare=False)
    # where libvirt answers for this host (qemu+ssh://host-a/system); None: not asked
    libvirt_uri: str | None = None
    ovsdb: str | None = None  # the OVSDB remote ("unix:PATH"); None: where ovs-vsctl looks


def mapping_file(host: Host) -> str:
    """The file a user edits to change `host`: the one it was read from, else the file
    hosts/NAME.toml it would be read from. (Anything with a name and a source will do.)"""
    return host.source.file if host.source else f"hosts/{host.name}.toml"


class IndexedHosts(Mapping[str, Host]):
    """Hosts that know which of them bind a network, and each one's mapping file, without
    reading every host: netmap.load's store keeps both beside each host, so a query over
    a large fleet reads only the hosts it needs (hosts_binding, host_mapping_file)."""

    @abstractmethod
    def binding(self, network: str) -> frozenset[str]:
        """The names of the hosts that bind `network`."""

    @abstractmethod
    def mapping_file(self, name: str) -> str:
        """mapping_file(self[name])."""

    def read(self, names: Collection[str]) -> None:
        """Read these hosts at once: they are about to be asked for."""


def read_ahead(hosts: Mapping[str, Host], names: Collection[str]) -> None:
    """Have `hosts` read those hosts at once, where it reads them as they are asked for."""
    if isinstance(hosts, IndexedHosts):
        hosts.read(names)


def hosts_binding(hosts: Mapping[str, Host], network: str) -> frozenset[str]:
    """The names of the hosts that bind `network`, reading only them when `hosts` can."""
    if isinstance(hosts, IndexedHosts):
        return hosts.binding(network)
    return frozenset(name for name, host in hosts.items() if network in host.bindings)


def host_mapping_file(hosts: Mapping[str, Host], name: str) -> str:
    """mapping_file(hosts[name]), without reading the host when `hosts` can."""
    if isinstance(hosts, IndexedHosts):
        return hosts.mapping_file(name)
    return mapping_file(hosts[name])



class IndexedGuests(Mapping[str, "Guest"]):
    """Guests that know each one's host and who uses a MAC without reading every guest:
    netmap.load's store keeps both beside each guest (guest_hosts, guests_placed_on,
    mac_users)."""

    @abstractmethod
    def hosts(self) -> Mapping[str, str | None]:
        """name -> host of every guest, in order."""

    @abstractmethod
    def mac_users(self, mac: str) -> list[tuple[str, int]]:
        """(guest, NIC index) of every NIC with `mac`, in the fleet's order."""

    def read(self, names: Collection[str]) -> None:
        """Read these guests at once: they are about to be asked for."""


def guest_hosts(guests: Mapping[str, Guest]) -> Mapping[str, str | None]:
    """name -> host of every guest, reading no guest when `guests` can."""
    if isinstance(guests, IndexedGuests):
        return guests.hosts()
    return {name: guest.host for name, guest in guests.items()}


def guests_placed_on(guests: Mapping[str, Guest], hosts: Collection[str],
                     also: str | None = None) -> dict[str, Guest]:
    """The guests that run on one of `hosts` (and `also`), in the fleet's order, reading
    no other guest when `guests` can."""
    if not isinstance(guests, IndexedGuests):
        return {name: guest for name, guest in guests.items()
                if guest.host in hosts or name == also}
    names = [name for name, host in guests.hosts().items() if host in hosts or name == also]
    guests.read(names)
    return {name: guests[name] for name in names}


def mac_users(guests: Mapping[str, Guest], macs: Collection[str],
              ) -> dict[str, list[tuple[str, int]]]:
    """MAC -> (guest, NIC index) of every NIC using it, for each of `macs` in use, in the
    fleet's order; reading only those guests when `guests` can."""
    if isinstance(guests, IndexedGuests):
        return {mac: users for mac in macs if (users := guests.mac_users(mac))}
    out: dict[str, list[tuple[str, int]]] = {}
    for guest in guests.values():
        for nic in guest.nics:
            if nic.mac in macs:
                out.setdefault(nic.mac, []).append((guest.name, nic.index))
    return out

@frozen
class GuestNic:
    index: int
    network: str
    mac: str
    model: str = "virtio"
    vhost: str = "preferred"
    semantic: str | None = None  # pinned forwarding class: a change is an error
    mtu: int | None = None  # the MTU the guest is configured with, if known
    source: Source | None = field(default=None, compare=False)
    queues: int = 1  # virtio-net queue pairs: >1 needs a multi-queue tap (IFF_MULTI_QUEUE)


@frozen
class Guest:
    name: str
    host: str | None
    nics: tuple[GuestNic, ...] = ()
    source: Source | None = field(default=None, compare=False)


@frozen
class Fleet:
    """Everything the mappings directory says, plus the files that could not be read.

    A broken host or guest file is kept in `problems` rather than raised, so that one bad
    file never makes the rest of the fleet unusable; commands that need it raise it.
    """

    networks: dict[str, Network]
    hosts: Mapping[str, Host]  # read-only: a large fleet's may be read host by host
    guests: Mapping[str, Guest]  # read-only: a large fleet's may be read guest by guest
    problems: tuple = ()  # tuple[InputError, ...], one per unreadable file
    root: str = ""
