"""L2 domains: the connected components of the guest NICs' paths in the fleet graph.

A NIC's path on a host (`nic_path`, dict lookups only)
    nic -> binding -> uplink.VLAN (the wire) -> segment S/VLAN V, for each S the uplink reaches
    nic -> binding -> VTEP -> vni:N                                  (an overlay)
    nic -> network -> the network's own domain              (placed nowhere, or unbound)
The paths of the NICs asked about, in one undirected networkx graph (`l2_graph`), have the
L2 domains as their connected components. An uplink that reaches two segments is one wire
in both, so it joins them (at each VLAN it carries); the VLAN a host tags on its uplink (its
binding's override) is the one its guests are in. Which uplinks join segments is read from
the paths asked about: a host whose uplink alone would join two segments is not read.

Answers (networkx is imported inside the functions that build or search the graph, and only
when there is something to join: a MAC no other NIC uses needs no graph)
  * MAC_DUPLICATE (check) and show's MAC clash (`mac_sharers`, `mac_clashes`): two NICs with
    one MAC in one component. The same MAC on two isolated VLANs is no clash; on two hosts
    of one segment + VLAN it is, and so where a host tags another network into that VLAN.
  * reachability (`reachable`): two NICs reach each other at L2 iff one component holds
    both; the route between them is what a finding prints.
  * a NIC's path as text (`path_text`): check's SEGMENT_UNREACHABLE and VLAN_MISMATCH say
    where the NIC would land.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from netmap.model.fleet import Guest, GuestNic, mac_users
from netmap.query.graph import FleetGraph, binding_id, fleet_of, mac_owners, uplink_id

if TYPE_CHECKING:
    import networkx as nx


def domain_id(segment_id: str, vlan: int | None) -> str:
    """The node of one L2 domain piece: a segment carrying one VLAN (or none), or a VNI."""
    if segment_id.startswith("vni:"):
        return segment_id
    return f"segment:{segment_id}/" + ("untagged" if vlan is None else f"vlan:{vlan}")


@dataclass(frozen=True)
class NicPath:
    """One guest NIC's way into L2 on one host: `nodes` from the NIC to the wire its frames
    leave on (nic, binding, uplink.VLAN or VTEP), and `domains`, the domain nodes that wire
    is in. A NIC placed nowhere, or on a host that does not bind its network, is counted
    where its network says (nic, network; the network's own domain): where it would be."""

    nodes: tuple[str, ...]
    domains: tuple[str, ...]

    @property
    def nic(self) -> str:
        return self.nodes[0]


def nic_node(guest: str, index: int, host: str | None) -> str:
    return f"nic:{guest}/{index}@{host}" if host is not None else f"nic:{guest}/{index}"


def nic_path(graph: FleetGraph, guest: str, nic: GuestNic, host: str | None) -> NicPath:
    """The NIC's path on `host` (dict lookups only). The host's binding is read from every
    host of the fleet, not only those of the graph: another guest's NIC is asked about
    where it runs."""
    network = fleet_of(graph).networks[nic.network]
    start = nic_node(guest, nic.index, host)
    mapping = graph.everywhere.get(host) if host is not None else None
    binding = mapping.bindings.get(nic.network) if mapping is not None else None
    if mapping is None or binding is None:
        return NicPath((start, f"network:{network.name}"),
                       (domain_id(network.segment_id, network.vlan),))
    bid = binding_id(mapping.name, nic.network)
    if network.is_overlay:
        # the VNI's frames ride the underlay inside UDP: the underlay's segments are not
        # the guest's L2 domain
        return NicPath((start, bid, f"vtep:{mapping.name}/{network.vni}"),
                       (network.segment_id,))
    vlan = binding.vlan if binding.vlan is not None else network.vlan
    wire = uplink_id(mapping.name, binding.uplink) + ("" if vlan is None else f".{vlan}")
    uplink = mapping.uplinks.get(binding.uplink)
    segments = uplink.segments if uplink is not None else ()
    return NicPath((start, bid, wire), tuple(domain_id(s, vlan) for s in segments))


def path_text(path: NicPath) -> str:
    """A NIC's path as findings print it: its nodes, then the domains its wire is in."""
    return " -> ".join([*path.nodes, ", ".join(path.domains) or "no segment"])


def l2_graph(paths: Iterable[NicPath]) -> nx.Graph:
    """The undirected graph of these paths: each path's nodes in a chain, its wire joined to
    every domain node it is in. Its connected components are the L2 domains."""
    import networkx as nx

    l2: nx.Graph = nx.Graph()
    for path in paths:
        nx.add_path(l2, path.nodes)
        for domain in path.domains:
            l2.add_edge(path.nodes[-1], domain)
            l2.nodes[domain]["domain"] = True
    return l2


def reachable(l2: nx.Graph, one: str, other: str) -> list[str] | None:
    """The path between two NIC nodes of `l2` when they reach each other at L2 (one
    component holds both), else None."""
    import networkx as nx

    try:
        return nx.shortest_path(l2, one, other)
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        return None


def meeting_domain(l2: nx.Graph, route: list[str], first: NicPath) -> str:
    """Where the frames of two NICs meet: the first domain node on the route between them;
    NICs that share their wire (one host) meet before it, in the domain of that wire (or
    on the wire alone, when it reaches no segment)."""
    on_route = next((node for node in route if l2.nodes[node].get("domain")), None)
    return on_route or (first.domains[0] if first.domains else first.nodes[-1])


def route_text(route: Iterable[str]) -> str:
    """A route between two NICs as text: out of the first NIC to the domain, and in."""
    return " -> ".join(route)


def domain_text(domain: str) -> str:
    """A domain node as findings have always named it: (segment, VLAN n) or (vni:N, ...)."""
    if domain.startswith("vni:"):
        return f"{domain}, VLAN untagged"
    if not domain.startswith("segment:"):  # a wire that reaches no segment
        return f"the wire {domain}"
    segment, _, tag = domain.removeprefix("segment:").rpartition("/")
    return f"{segment}, VLAN {tag.removeprefix('vlan:')}"


@dataclass(frozen=True)
class MacSharer:
    """Another guest NIC with the same MAC in the same L2 domain, and the route between."""

    guest: str
    nic: int
    host: str | None
    domain: str  # the first domain node the route crosses
    route: tuple[str, ...]


def mac_sharers(graph: FleetGraph, guest: str, nic: GuestNic,
                host: str | None) -> list[MacSharer]:
    """The other guests' NICs that use `nic`'s MAC in the L2 domain `nic` is in on `host`.
    No other owner of the MAC (the common case): a dict lookup, and no graph is built."""
    fleet = fleet_of(graph)
    others = [(name, index) for name, index in
              mac_users(fleet.guests, {nic.mac}).get(nic.mac, ()) if name != guest]
    if not others:
        return []
    mine = nic_path(graph, guest, nic, host)
    theirs = []
    for name, index in others:
        other = fleet.guests[name]
        theirs.append((other, index, nic_path(graph, name, other.nics[index], other.host)))
    l2 = l2_graph([mine, *(path for _, _, path in theirs)])
    out = []
    for other, index, path in theirs:
        route = reachable(l2, mine.nic, path.nic)
        if route is not None:
            out.append(MacSharer(other.name, index, other.host, meeting_domain(l2, route, mine),
                                 tuple(route)))
    return out


def mac_clashes(graph: FleetGraph,
                guests: Iterable[Guest] | None = None) -> dict[tuple[str, int], list[str]]:
    """(guest, NIC) -> the other guests using its MAC in its L2 domain, where each runs, or
    on its own host (one MAC twice on one host clashes whatever the networks). `guests`:
    only the NICs of those (the ones shown), else every guest's."""
    fleet = fleet_of(graph)
    clashes: dict[tuple[str, int], list[str]] = {}
    everyone = (mac_owners(graph) if guests is None else
                mac_users(fleet.guests, {nic.mac for guest in guests for nic in guest.nics}))
    for owners in everyone.values():
        if len(owners) < 2:
            continue
        paths = {(name, index): nic_path(graph, name, fleet.guests[name].nics[index],
                                         fleet.guests[name].host)
                 for name, index in owners}
        l2 = l2_graph(paths.values())
        for name, index in owners:
            guest = fleet.guests[name]
            for other_name, other_index in owners:
                if other_name == name:
                    continue
                same_host = guest.host is not None and guest.host == fleet.guests[other_name].host
                if same_host or reachable(l2, paths[name, index].nic,
                                          paths[other_name, other_index].nic) is not None:
                    clashes.setdefault((name, index), []).append(other_name)
    return clashes
