"""Placement: which hosts can take a guest, best first. A query over the fleet graph.

Only hosts that bind every network the guest needs can pass the check; the graph gives
them directly (network <- binding -> host), so the full check runs on those alone and every
other host gets its first blocking reason without one.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import networkx as nx

from netmap import graph as g
from netmap.check import Finding, Report, check_migration, unbound_finding, unbound_finding_at
from netmap.model import Fleet, Guest, Host


@dataclass(frozen=True)
class Candidate:
    host: str
    compatible: bool
    warnings: int
    guests: int  # guests that run there now: fewer is better when all else is equal
    report: Report | None  # None when a network is not bound there (no full check run)
    blocking: Finding | None  # the first error, for hosts that cannot take the guest

    def as_dict(self) -> dict[str, object]:
        return {
            "host": self.host, "compatible": self.compatible, "warnings": self.warnings,
            "guests": self.guests,
            "findings": [f.as_dict() for f in self.report.findings] if self.report else [],
            "blocking": self.blocking.as_dict() if self.blocking else None,
        }


def hosts_for(graph: nx.DiGraph, guest_name: str, *, strict: bool = False,
              include_current: bool = False) -> list[Candidate]:
    """Every host but the guest's own, compatible ones first (fewest warnings, then the
    least loaded), then the others with the reason each cannot take the guest."""
    fleet = g.fleet_of(graph)
    guest = fleet.guests[guest_name]
    able: set[str] | None = None
    for network in {nic.network for nic in guest.nics}:
        bound = g.hosts_binding(graph, network)
        able = bound if able is None else able & bound
    if able is None:  # a guest without NICs fits anywhere, as far as the network goes
        able = set(fleet.hosts)
    return _rank(fleet, graph, guest, able, strict, include_current)


def hosts_for_fleet(fleet: Fleet, guest_name: str, *, strict: bool = False,
                    include_current: bool = False) -> list[Candidate]:
    """`hosts_for(build_graph(fleet), ...)`, building the graph of the candidates alone.

    A host that does not bind every network of the guest is answered from its bindings;
    the graph (and the full check) is needed only for the others, plus the guest's own
    host as the source of the comparison, and only the guests placed on those (their MACs
    are still looked up fleet-wide). On 10k generated hosts this builds a fifth of the
    graph.

    `fleet.hosts` may be a netmap.cache.LazyHosts: what each host binds and its mapping's
    file then come from its `summaries`, and only the candidates are unpickled."""
    # Everything built here is garbage only at the end: a collection in between would
    # walk every object of the fleet again (pausing saved a tenth of a warm 10k query).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        guest = fleet.guests[guest_name]
        needed = {nic.network for nic in guest.nics}
        summaries = _summaries(fleet)
        able = {name for name, (bound, _) in summaries.items() if needed <= bound}
        keep = able | {guest.host}
        hosts = fleet.hosts
        kept = {name: hosts[name] for name in hosts if name in keep}
        # The graph holds the guests of those hosts, which the check counts (guests_on);
        # MACs are looked up in graph.graph["fleet"].guests, which keeps them all.
        graph = g.build_graph(Fleet(
            fleet.networks, kept, {name: other for name, other in fleet.guests.items()
                                   if other.host in keep or name == guest_name}))
        graph.graph["fleet"] = Fleet(fleet.networks, kept, fleet.guests, fleet.problems,
                                     fleet.root)
        return _rank(fleet, graph, guest, able, strict, include_current, summaries)
    finally:
        if was_enabled:
            gc.enable()


HostSummary = tuple[Collection[str], str]  # the networks a host binds, its mapping's file


def _summaries(fleet: Fleet) -> Mapping[str, HostSummary]:
    known = getattr(fleet.hosts, "summaries", None)
    if known is not None:
        return known
    return {name: (host.bindings.keys(), mapping_file(host))
            for name, host in fleet.hosts.items()}


def mapping_file(host: Host) -> str:
    """The file a host's findings tell the user to edit (as check.unbound_finding does)."""
    return host.source.file if host.source else f"hosts/{host.name}.toml"


def _rank(fleet: Fleet, graph: nx.DiGraph, guest: Guest, able: set[str], strict: bool,
          include_current: bool,
          summaries: Mapping[str, HostSummary] | None = None) -> list[Candidate]:
    # guests per host, counted once (asking the graph per host cost 10k lookups)
    load = Counter(other.host for other in fleet.guests.values())
    out = []
    for host in fleet.hosts:
        if host == guest.host and not include_current:
            continue
        if host in able:
            report = check_migration(graph, guest.name, host, strict=strict)
            errors = report.errors
            out.append(Candidate(host, not errors, len(report.warnings), load[host], report,
                                 errors[0] if errors else None))
        elif summaries is not None:
            bound, mapping = summaries[host]
            nic = next(n for n in guest.nics if n.network not in bound)
            out.append(Candidate(host, False, 0, load[host], None,
                                 unbound_finding_at(fleet.networks[nic.network], nic, host,
                                                    mapping)))
        else:
            nic = next(n for n in guest.nics if n.network not in fleet.hosts[host].bindings)
            out.append(Candidate(host, False, 0, load[host], None,
                                 unbound_finding(fleet.networks[nic.network], nic,
                                                 fleet.hosts[host])))
    out.sort(key=lambda c: (not c.compatible, c.warnings, c.guests, c.host))
    return out
