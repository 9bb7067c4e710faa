"""The fleet as a graph, and the questions asked of it.

The fleet graph (`FleetGraph`) reads the model's own dicts as its adjacency; nothing is
copied. Nodes (id prefix: kind)
  host:H, uplink:H/IF, segment:S (S is a segment name or vni:N), network:N,
  binding:H/N (how H realizes N), guest:G, nic:G/I
Edges (attribute `rel`)
  host -has-> uplink -reaches-> segment;  network -lives-on-> segment
  host -has-> binding -realizes-> network;  binding -via-> uplink
  guest -runs-on-> host;  guest -has-> nic -attaches-> network
`FleetGraph.digraph()` gives exactly that as a networkx DiGraph, for whoever asks it more.

Where one dict step is the whole answer, it is read from the model and networkx is not
imported (check, hosts-for, show, diff, the libvirt hook and the QEMU helper start without
it): the guests on a host, which hosts bind a network, a NIC's view on a host (`nic_view`,
the comparison check makes of "the same topology"), VF and passthrough use, and a NIC's
path and the L2 domain nodes its wire is in (`nic_path`).

networkx runs where a graph algorithm is the answer, imported inside those functions:
L2 domains as the connected components of the NICs' paths, which MAC_DUPLICATE, show's MAC
clash and reachability use (netmap.query.l2), and drain's capacities as flows
(netmap.query.drain.flow: max-flow, min-cost flow).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from netmap.model.fleet import (
    Binding,
    Fleet,
    Guest,
    GuestNic,
    Host,
    Network,
    guests_placed_on,
)
from netmap.model.fleet import hosts_binding as indexed_binders
from netmap.model.mtu import effective_mtu
from netmap.modes import REGISTRY
from netmap.modes.base import Claim

if TYPE_CHECKING:
    import networkx as nx


def host_id(host: str) -> str:
    return f"host:{host}"


def uplink_id(host: str, uplink: str) -> str:
    return f"uplink:{host}/{uplink}"


def binding_id(host: str, network: str) -> str:
    return f"binding:{host}/{network}"


class FleetGraph:
    """The fleet graph of some hosts (all, or those a query reads), over the model's dicts.

    `graph` holds what networkx keeps in a graph's `graph` attribute: "fleet" (the fleet
    of these hosts, every guest kept, so that MACs are looked up fleet-wide) and the memos
    of the queries asked of it. `everywhere`: every host of the fleet, read only for the
    hosts of other NICs with one MAC (a large fleet's other hosts are never read else)."""

    __slots__ = ("_on", "everywhere", "graph", "hosts", "networks", "placed")

    def __init__(self, fleet: Fleet, hosts: Mapping[str, Host], placed: Mapping[str, Guest],
                 networks: Collection[str] | None = None,
                 everywhere: Mapping[str, Host] | None = None) -> None:
        self.graph: dict[str, Any] = {"fleet": fleet}
        self.hosts = hosts
        self.placed = placed  # the guests whose nodes the graph holds
        self.networks = None if networks is None else frozenset(networks)
        self.everywhere = hosts if everywhere is None else everywhere
        self._on: dict[str, list[Guest]] | None = None

    def binding(self, host: str, network: str) -> Binding | None:
        """The node binding:host/network, if the graph holds it."""
        if self.networks is not None and network not in self.networks:
            return None
        found = self.hosts.get(host)
        return None if found is None else found.bindings.get(network)

    def guests_by_host(self) -> dict[str, list[Guest]]:
        """host -> the guests that run on it (guest -runs-on-> host), in the fleet's order."""
        if self._on is None:
            on: dict[str, list[Guest]] = {}
            for guest in self.placed.values():
                if guest.host is not None:
                    on.setdefault(guest.host, []).append(guest)
            self._on = on
        return self._on

    def digraph(self) -> nx.DiGraph:
        """This graph as a networkx DiGraph (nodes, then edges, in the order above)."""
        import networkx as nx

        fleet = fleet_of(self)
        nodes: list[tuple[str, dict[str, Any]]] = []
        edges: list[tuple[str, str, dict[str, str]]] = []
        for network in fleet.networks.values():
            nodes += [(f"network:{network.name}", {"kind": "network", "obj": network}),
                      (f"segment:{network.segment_id}", {"kind": "segment"})]
            edges.append((f"network:{network.name}", f"segment:{network.segment_id}",
                          {"rel": "lives-on"}))
        host_edges: list[tuple[str, str, dict[str, str]]] = []
        for host in self.hosts.values():
            name, hid = host.name, f"host:{host.name}"
            chosen = [b for b in host.bindings.values()
                      if self.networks is None or b.network in self.networks]
            used = {b.uplink for b in chosen}
            nodes.append((hid, {"kind": "host", "obj": host}))
            for uplink in host.uplinks.values():
                if self.networks is not None and uplink.name not in used:
                    continue
                uid = uplink_id(name, uplink.name)
                nodes.append((uid, {"kind": "uplink", "obj": uplink, "host": name}))
                host_edges.append((hid, uid, {"rel": "has"}))
                for segment in uplink.segments:
                    nodes.append((f"segment:{segment}", {"kind": "segment"}))
                    host_edges.append((uid, f"segment:{segment}", {"rel": "reaches"}))
            for binding in chosen:
                bid = binding_id(name, binding.network)
                nodes.append((bid, {"kind": "binding", "obj": binding, "host": name}))
                host_edges += [(hid, bid, {"rel": "has"}),
                               (bid, f"network:{binding.network}", {"rel": "realizes"}),
                               (bid, uplink_id(name, binding.uplink), {"rel": "via"})]
        edges += host_edges
        for guest in self.placed.values():
            gid = f"guest:{guest.name}"
            nodes.append((gid, {"kind": "guest", "obj": guest}))
            if guest.host is not None:
                edges.append((gid, host_id(guest.host), {"rel": "runs-on"}))
            for nic in guest.nics:
                nid = f"nic:{guest.name}/{nic.index}"
                nodes.append((nid, {"kind": "nic", "obj": nic, "guest": guest.name}))
                edges += [(gid, nid, {"rel": "has"}),
                          (nid, f"network:{nic.network}", {"rel": "attaches"})]
        graph: nx.DiGraph = nx.DiGraph(fleet=fleet)
        graph.add_nodes_from(nodes)
        graph.add_edges_from(edges)
        return graph


def build_graph(fleet: Fleet) -> FleetGraph:
    return FleetGraph(fleet, fleet.hosts, fleet.guests)


def build_graph_of(fleet: Fleet, hosts: Collection[str], guest: str) -> FleetGraph:
    """The graph of `hosts` alone, with the guests placed on them and `guest` (the one
    checked): all that a check of `guest` between those hosts reads. What it looks up
    fleet-wide (MACs, unreadable guest files) it finds in graph.graph["fleet"], which
    keeps every guest. A placement query builds the graph of its candidates so, and
    `netmap check` two hosts of it."""
    kept = {name: fleet.hosts[name] for name in fleet.hosts if name in hosts}
    placed = guests_placed_on(fleet.guests, kept, also=guest)
    # of each host, only how it binds the guest's networks: a check reads no other
    # binding through the graph (other guests' NICs are counted from the hosts' mappings)
    return FleetGraph(Fleet(fleet.networks, kept, fleet.guests, fleet.problems, fleet.root),
                      kept, placed, {nic.network for nic in fleet.guests[guest].nics},
                      fleet.hosts)


def fleet_of(graph: FleetGraph) -> Fleet:
    return graph.graph["fleet"]


def guests_on(graph: FleetGraph, host: str) -> list[Guest]:
    """Guests that run on `host` now."""
    return list(graph.guests_by_host().get(host, ()))


def hosts_binding(graph: FleetGraph, network: str) -> set[str]:
    """Hosts that have a binding for `network`."""
    if graph.networks is not None and network not in graph.networks:
        return set()
    # from the load's index where it has one: the other hosts are not read
    return set(indexed_binders(graph.hosts, network))


def reaches(graph: FleetGraph, host: str, uplink: str, segment_id: str) -> bool:
    """The edge uplink:host/uplink -reaches-> segment:segment_id."""
    found = graph.hosts.get(host)
    if found is None or uplink not in found.uplinks:
        return False
    if segment_id not in found.uplinks[uplink].segments:
        return False
    # the graph of some networks holds only the uplinks their bindings use
    return graph.networks is None or any(
        b.uplink == uplink for n, b in found.bindings.items() if n in graph.networks)


@dataclass(frozen=True)
class NicView:
    """How one guest NIC is realized on one host: the path NIC -> network -> mode ->
    uplink -> segment/VLAN/MTU, or why there is no such path."""

    nic: int
    network: str
    host: str
    segment: str  # the network's identity: a segment name or vni:N
    mode: str | None = None  # None: the host does not bind the network
    semantic: str | None = None
    uplink: str | None = None
    reaches_segment: bool = False
    vlan: int | None = None
    mtu: int | None = None
    mtu_reason: str = ""
    devices: tuple[tuple[str, str], ...] = ()  # (role, interface name) that realize creates

    @property
    def bound(self) -> bool:
        return self.mode is not None

    def as_dict(self) -> dict[str, object]:
        return {
            "nic": self.nic, "network": self.network, "host": self.host,
            "segment": self.segment, "mode": self.mode, "semantic": self.semantic,
            "uplink": self.uplink, "reaches_segment": self.reaches_segment, "vlan": self.vlan,
            "mtu": self.mtu, "mtu_reason": self.mtu_reason,
            "devices": [{"role": role, "name": name} for role, name in self.devices],
        }


def endpoint_devices(guest: str, nic: GuestNic, binding: Binding,
                     network: Network) -> tuple[tuple[str, str], ...]:
    """The interfaces realize would create or use for this NIC, by role (its mode names them)."""
    return REGISTRY[binding.mode].devices(guest, nic.index, binding, network)


def nic_view(graph: FleetGraph, guest: str, nic: GuestNic, host: str) -> NicView:
    fleet = fleet_of(graph)
    network = fleet.networks[nic.network]
    binding = graph.binding(host, nic.network)
    if binding is None:
        return NicView(nic.index, network.name, host, network.segment_id)
    host_obj = fleet.hosts[host]
    mtu, mtu_reason = effective_mtu(network, binding, host_obj)
    if network.is_overlay:
        # an overlay reaches its VNI through any underlay that has an uplink
        reach = binding.uplink in host_obj.uplinks
    else:
        reach = reaches(graph, host, binding.uplink, network.segment_id)
    return NicView(
        nic=nic.index, network=network.name, host=host, segment=network.segment_id,
        mode=binding.mode, semantic=REGISTRY[binding.mode].semantic, uplink=binding.uplink,
        reaches_segment=reach,
        vlan=binding.vlan if binding.vlan is not None else network.vlan,
        mtu=mtu, mtu_reason=mtu_reason,
        devices=endpoint_devices(guest, nic, binding, network),
    )


def needed_mtu(graph: FleetGraph, guest: Guest, nic: GuestNic,
               source: NicView | None) -> int:
    """The MTU the guest uses on `nic`: its own when the guest file says it, else what its
    source host gives it (`source`, its view there, when bound), else the network's. check
    compares a destination with it, and realize builds (or refuses) it."""
    reference = source.mtu if source is not None and source.bound else None
    return nic.mtu or reference or fleet_of(graph).networks[nic.network].mtu


def guest_view(graph: FleetGraph, guest: Guest, host: str) -> list[NicView]:
    return [nic_view(graph, guest.name, nic, host) for nic in guest.nics]


def vf_usage(graph: FleetGraph, host: str, *, excluding: str | None = None) -> Counter[str]:
    """VFs in use per PF uplink on `host`, counting the guests placed there."""
    return _endpoint_usage(graph, host, excluding, "vf")


def passthrough_usage(graph: FleetGraph, host: str, *,
                      excluding: str | None = None) -> Counter[str]:
    """Guest NICs holding each uplink of `host` in macvtap passthrough."""
    return _endpoint_usage(graph, host, excluding, "uplink")


def _endpoint_usage(graph: FleetGraph, host: str, excluding: str | None,
                    claim: Claim) -> Counter[str]:
    """Guest NICs on `host` whose mode claims `claim` of their uplink, per uplink."""
    fleet = fleet_of(graph)
    bindings = fleet.hosts[host].bindings
    used: Counter[str] = Counter()
    for guest in guests_on(graph, host):
        if guest.name == excluding:
            continue
        for nic in guest.nics:
            binding = bindings.get(nic.network)
            if binding is not None and REGISTRY[binding.mode].claims == claim:
                used[binding.uplink] += 1
    return used


def mac_owners(graph: FleetGraph) -> dict[str, list[tuple[str, int]]]:
    """MAC -> every (guest, NIC index) that uses it; built once per graph."""
    owners = graph.graph.get("mac_owners")
    if owners is None:
        owners = {}
        for guest in fleet_of(graph).guests.values():
            for nic in guest.nics:
                owners.setdefault(nic.mac, []).append((guest.name, nic.index))
        graph.graph["mac_owners"] = owners
    return owners
