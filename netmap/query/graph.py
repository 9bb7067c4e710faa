"""The fleet graph (networkx) and what is derived from it: a guest's view on a host.

Nodes (id prefix: kind)
  host:H, uplink:H/IF, segment:S (S is a segment name or vni:N), network:N,
  binding:H/N (how H realizes N), guest:G, nic:G/I
Edges (attribute `rel`)
  host -has-> uplink -reaches-> segment;  network -lives-on-> segment
  host -has-> binding -realizes-> network;  binding -via-> uplink
  guest -runs-on-> host;  guest -has-> nic -attaches-> network

A guest's path on a host is NIC -> network <- binding(host) -> uplink -> segment; "the same
topology" on two hosts is a comparison of those paths (`nic_view`), done in check.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol, cast

import networkx as nx

from netmap.model.fleet import (
    Binding,
    Fleet,
    Guest,
    GuestNic,
    Network,
    Uplink,
)
from netmap.model.mtu import effective_mtu
from netmap.modes import REGISTRY
from netmap.modes.base import Claim
from netmap.support.gcpause import gc_paused


def host_id(host: str) -> str:
    return f"host:{host}"


def uplink_id(host: str, uplink: str) -> str:
    return f"uplink:{host}/{uplink}"


def binding_id(host: str, network: str) -> str:
    return f"binding:{host}/{network}"


def build_graph(fleet: Fleet) -> nx.DiGraph:
    with gc_paused():  # the graph is many small dicts that all live on
        return _build_graph(fleet)


def build_graph_of(fleet: Fleet, hosts: Collection[str], guest: str) -> nx.DiGraph:
    """The graph of `hosts` alone, with the guests placed on them and `guest` (the one
    checked): all that a check of `guest` between those hosts reads. What it looks up
    fleet-wide (MACs, unreadable guest files) it finds in graph.graph["fleet"], which
    keeps every guest. A placement query builds a fifth of a 10k-host graph so, and
    `netmap check` two hosts of it."""
    kept = {name: fleet.hosts[name] for name in fleet.hosts if name in hosts}
    placed = {name: other for name, other in fleet.guests.items()
              if other.host in kept or name == guest}
    with gc_paused():
        # of each host, only how it binds the guest's networks: a check reads no other
        # binding through the graph (other guests' NICs are counted from the hosts'
        # mappings, in graph.graph["fleet"])
        graph = _build_graph(Fleet(fleet.networks, kept, placed),
                             {nic.network for nic in fleet.guests[guest].nics})
    graph.graph["fleet"] = Fleet(fleet.networks, kept, fleet.guests, fleet.problems,
                                 fleet.root)
    return graph


def build_graph_of_hosts(fleet: Fleet, hosts: Collection[str]) -> nx.DiGraph:
    """The graph of `hosts` alone, every binding of theirs, and the guests placed on them:
    all that `netmap show HOST` reads of it, without reading the other hosts."""
    kept = {name: fleet.hosts[name] for name in fleet.hosts if name in hosts}
    placed = {name: guest for name, guest in fleet.guests.items() if guest.host in kept}
    with gc_paused():
        graph = _build_graph(Fleet(fleet.networks, kept, placed))
    graph.graph["fleet"] = Fleet(fleet.networks, kept, fleet.guests, fleet.problems,
                                 fleet.root)
    return graph


class _DiGraphStorage(Protocol):
    """The dicts a networkx DiGraph keeps its nodes and edges in (private, so not in its
    type stubs): node -> attributes, and node -> neighbour -> the edge's attributes."""

    _node: dict[str, dict[str, Any]]
    _succ: dict[str, dict[str, dict[str, Any]]]
    _pred: dict[str, dict[str, dict[str, Any]]]


def _build_graph(fleet: Fleet, networks: Collection[str] | None = None) -> nx.DiGraph:
    """Written straight into the DiGraph's node/succ/pred dicts, all nodes first and then
    all edges: the same graph (order included) as `add_nodes_from(nodes)` then
    `add_edges_from(edges)`, without networkx's per-item bookkeeping, nor the lists of
    tuples that fed it (a 10k-host graph: 0.2 s -> 0.1 s). `networks`: only the bindings
    of those (and the uplinks they use), else all."""
    graph: nx.DiGraph = nx.DiGraph(fleet=fleet)
    storage = cast(_DiGraphStorage, graph)
    node, succ, pred = storage._node, storage._succ, storage._pred

    def add_node(name: str, attrs: dict[str, Any]) -> None:
        have = node.get(name)
        if have is None:
            node[name] = attrs
            succ[name] = {}
            pred[name] = {}
        else:
            have.update(attrs)

    for network in fleet.networks.values():
        add_node(f"network:{network.name}", {"kind": "network", "obj": network})
        add_node(f"segment:{network.segment_id}", {"kind": "segment"})
    hosts = fleet.hosts.values()
    bindings_of: dict[str, list[Binding]] = {}
    uplinks_of: dict[str, list[Uplink]] = {}
    for host in hosts:
        chosen = [b for b in host.bindings.values() if networks is None or b.network in networks]
        used = {b.uplink for b in chosen}
        bindings_of[host.name] = chosen
        uplinks_of[host.name] = [u for u in host.uplinks.values()
                                 if networks is None or u.name in used]
    for host in hosts:
        name = host.name
        add_node(f"host:{name}", {"kind": "host", "obj": host})
        for uplink in uplinks_of[name]:
            add_node(f"uplink:{name}/{uplink.name}", {"kind": "uplink", "obj": uplink,
                                                      "host": name})
            for segment in uplink.segments:
                add_node(f"segment:{segment}", {"kind": "segment"})
        for binding in bindings_of[name]:
            add_node(f"binding:{name}/{binding.network}", {"kind": "binding", "obj": binding,
                                                           "host": name})
    for guest in fleet.guests.values():
        add_node(f"guest:{guest.name}", {"kind": "guest", "obj": guest})
        for nic in guest.nics:
            add_node(f"nic:{guest.name}/{nic.index}", {"kind": "nic", "obj": nic,
                                                       "guest": guest.name})

    def add_edge(u: str, v: str, rel: str) -> None:
        if u not in node:
            node[u], succ[u], pred[u] = {}, {}, {}
        if v not in node:
            node[v], succ[v], pred[v] = {}, {}, {}
        out = succ[u]
        data = out.get(v)
        if data is None:
            out[v] = pred[v][u] = {"rel": rel}
        else:
            data["rel"] = rel

    for network in fleet.networks.values():
        add_edge(f"network:{network.name}", f"segment:{network.segment_id}", "lives-on")
    for host in hosts:
        name = host.name
        hid = f"host:{name}"
        for uplink in uplinks_of[name]:
            uid = f"uplink:{name}/{uplink.name}"
            add_edge(hid, uid, "has")
            for segment in uplink.segments:
                add_edge(uid, f"segment:{segment}", "reaches")
        for binding in bindings_of[name]:
            bid = f"binding:{name}/{binding.network}"
            add_edge(hid, bid, "has")
            add_edge(bid, f"network:{binding.network}", "realizes")
            add_edge(bid, f"uplink:{name}/{binding.uplink}", "via")
    for guest in fleet.guests.values():
        gid = f"guest:{guest.name}"
        if guest.host is not None:
            add_edge(gid, f"host:{guest.host}", "runs-on")
        for nic in guest.nics:
            nid = f"nic:{guest.name}/{nic.index}"
            add_edge(gid, nid, "has")
            add_edge(nid, f"network:{nic.network}", "attaches")
    return graph


def fleet_of(graph: nx.DiGraph) -> Fleet:
    return graph.graph["fleet"]


def guests_on(graph: nx.DiGraph, host: str) -> list[Guest]:
    """Guests that run on `host` now."""
    hid = host_id(host)
    if hid not in graph:
        return []
    return [graph.nodes[g]["obj"] for g in graph.predecessors(hid)
            if graph.nodes[g]["kind"] == "guest"]


def hosts_binding(graph: nx.DiGraph, network: str) -> set[str]:
    """Hosts that have a binding for `network`."""
    return {graph.nodes[b]["host"] for b in graph.predecessors(f"network:{network}")
            if graph.nodes[b]["kind"] == "binding"}


def reaches(graph: nx.DiGraph, host: str, uplink: str, segment_id: str) -> bool:
    return graph.has_edge(uplink_id(host, uplink), f"segment:{segment_id}")


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


def nic_view(graph: nx.DiGraph, guest: str, nic: GuestNic, host: str) -> NicView:
    fleet = fleet_of(graph)
    network = fleet.networks[nic.network]
    bid = binding_id(host, nic.network)
    if bid not in graph:
        return NicView(nic.index, network.name, host, network.segment_id)
    binding: Binding = graph.nodes[bid]["obj"]
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


def needed_mtu(graph: nx.DiGraph, guest: Guest, nic: GuestNic,
               source: NicView | None) -> int:
    """The MTU the guest uses on `nic`: its own when the guest file says it, else what its
    source host gives it (`source`, its view there, when bound), else the network's. check
    compares a destination with it, and realize builds (or refuses) it."""
    reference = source.mtu if source is not None and source.bound else None
    return nic.mtu or reference or fleet_of(graph).networks[nic.network].mtu


def guest_view(graph: nx.DiGraph, guest: Guest, host: str) -> list[NicView]:
    return [nic_view(graph, guest.name, nic, host) for nic in guest.nics]


def vf_usage(graph: nx.DiGraph, host: str, *, excluding: str | None = None) -> Counter[str]:
    """VFs in use per PF uplink on `host`, counting the guests placed there."""
    return _endpoint_usage(graph, host, excluding, "vf")


def passthrough_usage(graph: nx.DiGraph, host: str, *,
                      excluding: str | None = None) -> Counter[str]:
    """Guest NICs holding each uplink of `host` in macvtap passthrough."""
    return _endpoint_usage(graph, host, excluding, "uplink")


def _endpoint_usage(graph: nx.DiGraph, host: str, excluding: str | None,
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


def mac_owners(graph: nx.DiGraph) -> dict[str, list[tuple[str, int]]]:
    """MAC -> every (guest, NIC index) that uses it; built once per graph."""
    owners = graph.graph.get("mac_owners")
    if owners is None:
        owners = {}
        for guest in fleet_of(graph).guests.values():
            for nic in guest.nics:
                owners.setdefault(nic.mac, []).append((guest.name, nic.index))
        graph.graph["mac_owners"] = owners
    return owners
