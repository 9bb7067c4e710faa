"""Candidate hosts per guest and the capacities they offer: the graph, then the check.

A host can take a guest when it binds every network the guest uses (the graph:
network <- binding -> host), its uplinks reach the networks' segments, and the check passes.
The check's verdict depends on the guest only through its NICs' networks, vhost policy,
pinned class and MTU (its *profile*) and its MACs, so the full check runs once per profile
and host; a guest whose MAC another guest also uses is checked again on the hosts where that
MAC lives (and once to see whether the MAC is a duplicate everywhere). Every move of the final
plan is checked again, for that guest, with check_migration; a disagreement drops the option
and the plan is solved again, so the plan never rests on the shortcut alone.

Fewer hosts, same answer. A guest with at least N compatible hosts (N = guests to drain)
can always be placed: the other N - 1 guests occupy at most N - 1 hosts, and the check
already vouches that the guest fits alone on any of them. So examining hosts (least loaded
first; further on while they carry warnings, to find warning-free ones) can stop once a
profile has N of them without losing any plan. The planner looks at even fewer first (a few
per guest) and widens every profile that was cut short to N as soon as a guest is left out,
so a 2,000-host fleet stays cheap and no plan is lost.

Capacity the check cannot see (what other drained guests will take: VFs per PF, uplinks
held in macvtap passthrough, max_guests, max_endpoints) lives in the flow, not in a mutated
fleet.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import networkx as nx

from netmap.errors import InputError
from netmap.load import require_host
from netmap.model.fleet import Guest, Host
from netmap.modes import mode_of
from netmap.query import graph as g
from netmap.query.drain.flow import Option, Resource
from netmap.query.drain.report import HostUse
from netmap.rules.check import Finding, Report, check_migration

WARNING_COST = 1000  # one warning outweighs any difference in load
EXAMINE_AT_LEAST = 100  # hosts examined per profile while looking for warning-free ones
FLEET_WIDE = frozenset({"FLEET_INCOMPLETE"})  # warnings every host gets alike
MAC_CODES = frozenset({"MAC_IN_USE", "MAC_DUPLICATE"})


def host_use(graph: nx.DiGraph, host: Host) -> HostUse:
    """The host's current load, counted the way check counts it."""
    on = g.guests_on(graph, host.name)
    vfs = g.vf_usage(graph, host.name)
    whole = g.passthrough_usage(graph, host.name)
    held = sorted({b.uplink for b in host.bindings.values() if mode_of(b).claims == "uplink"})
    return HostUse(host.name, len(on), host.max_guests, sum(len(o.nics) for o in on),
                   host.max_endpoints,
                   tuple((u.name, vfs[u.name], u.sriov.total_vfs)
                         for u in host.uplinks.values() if u.sriov is not None),
                   tuple((uplink, whole[uplink]) for uplink in held))


def demand(host: Host, guest: Guest) -> tuple[tuple[Resource, int], ...]:
    """The limited resources `guest` takes on `host` (the check's capacity rules)."""
    taken: Counter = Counter()
    for nic in guest.nics:
        binding = host.bindings.get(nic.network)
        claim = mode_of(binding).claims if binding is not None else None
        if binding is not None and claim == "vf":
            taken["vf", host.name, binding.uplink] += 1
        elif binding is not None and claim == "uplink":
            taken["whole", host.name, binding.uplink] += 1
    if host.max_endpoints is not None and guest.nics:
        taken["endpoints", host.name, ""] += len(guest.nics)
    if host.max_guests is not None:
        taken["guests", host.name, ""] += 1
    return tuple(sorted(taken.items()))


def profile(guest: Guest) -> tuple:
    return tuple((n.network, n.vhost, n.semantic, n.mtu) for n in guest.nics)


@dataclass
class Survey:
    """What the examination of one profile found."""

    compatible: list[tuple[str, int]] = field(default_factory=list)  # (host, warnings)
    refused: dict[str, Finding] = field(default_factory=dict)  # host -> first error
    unbound: dict[str, list[str]] = field(default_factory=dict)  # network -> hosts
    unreachable: dict[str, list[str]] = field(default_factory=dict)
    shared: tuple[Option, ...] | None = None  # the options of members with unique MACs
    truncated: bool = False  # stopped before examining every host that binds the networks


class DrainContext:
    """One drain: the source, the destinations, and the checks run so far."""

    def __init__(self, graph: nx.DiGraph, host: str, exclude: tuple[str, ...],
                 strict: bool) -> None:
        self.graph = graph
        self.fleet = fleet = g.fleet_of(graph)
        self.source = require_host(fleet, host)
        for name in exclude:
            if name == self.source.name:
                raise InputError(f"--exclude {name}: {name} is the host being drained; no "
                                 "guest is ever moved to it, so excluding it means nothing "
                                 "(a typo for another host?)",
                                 fix=f"remove {name} from --exclude, or name the host you "
                                 "meant to keep free")
            try:
                require_host(fleet, name)
            except InputError as err:
                raise InputError(f"--exclude {name}: {err.problem}", fix=err.fix) from err
        self.exclude = tuple(dict.fromkeys(exclude))
        self.strict = strict
        self.guests = sorted(g.guests_on(graph, host), key=lambda guest: guest.name)
        self.dests = [h for h in fleet.hosts if h != host and h not in self.exclude]
        self.load = Counter(guest.host for guest in fleet.guests.values() if guest.host)
        self.checks = 0
        self.uses: dict[str, HostUse] = {}
        # guests earlier surveys may send to each host: shares of a group, so fractions
        self.expected: defaultdict[str, float] = defaultdict(float)
        self.refused: set[tuple[str, str]] = set()  # (guest, host) the final check refused

    def check(self, guest: str, dest: str) -> Report:
        self.checks += 1
        return check_migration(self.graph, guest, dest, source=self.source.name,
                               strict=self.strict)

    def use(self, host: str) -> HostUse:
        if host not in self.uses:
            self.uses[host] = host_use(self.graph, self.fleet.hosts[host])
        return self.uses[host]

    def survey(self, members: list[Guest], needed: int) -> Survey:
        survey = Survey()
        able = set(self.dests)
        for network in sorted({nic.network for nic in members[0].nics}):
            binding = g.hosts_binding(self.graph, network)
            survey.unbound[network] = sorted(able - binding)
            able &= binding
            segment = self.fleet.networks[network]
            if segment.is_overlay:
                continue
            far = {h for h in able if not g.reaches(
                self.graph, h, self.fleet.hosts[h].bindings[network].uplink, segment.segment_id)}
            survey.unreachable[network] = sorted(far)
            able -= far
        clean = 0
        # least loaded first, counting what earlier profiles may send there, so that
        # profiles do not all look at the same few hosts
        order = sorted(able, key=lambda h: (self.load[h] + self.expected[h], h))
        for examined, host in enumerate(order, 1):
            report = self.check(members[0].name, host)
            errors = [f for f in report.errors if f.code not in MAC_CODES]
            if errors:
                survey.refused[host] = errors[0]
                continue
            warnings = _distinguishing(report)
            survey.compatible.append((host, warnings))
            clean += not warnings
            if len(survey.compatible) >= needed and (
                    clean >= needed or examined >= max(4 * needed, EXAMINE_AT_LEAST)):
                survey.truncated = examined < len(order)
                break
        for host, _ in survey.compatible:
            self.expected[host] += len(members) / len(survey.compatible)
        return survey

    def options(self, guest: Guest, survey: Survey, conflicts: dict[str, set[str]],
                blocked: dict[str, Finding]) -> tuple[Option, ...]:
        owners = g.mac_owners(self.graph)
        others = {o for nic in guest.nics for o, _ in owners.get(nic.mac, ()) if o != guest.name}
        if not others:  # the profile's verdicts hold as they are: share one tuple (one
            if survey.shared is None:  # flow group for all these guests)
                survey.shared = self._rank(guest, survey.compatible)
            return survey.shared
        suspects = {self.fleet.guests[o].host for o in others}
        for other in others:
            if self.fleet.guests[other].host == self.source.name:
                conflicts[guest.name].add(other)  # one MAC twice on one host: keep apart
        kept: list[tuple[str, int]] = []
        reference = next((h for h, _ in survey.compatible if h not in suspects), None)
        if others and reference is not None:
            mac = [f for f in self.check(guest.name, reference).errors if f.code in MAC_CODES]
            if mac:  # a duplicate on the same L2 domain: the same on every host
                blocked[guest.name] = mac[0]
                return ()
        for host, warnings in survey.compatible:
            if host in suspects:
                report = self.check(guest.name, host)
                if not report.compatible:
                    continue
                warnings = _distinguishing(report)
            kept.append((host, warnings))
        return self._rank(guest, kept)

    def _rank(self, guest: Guest, kept: list[tuple[str, int]]) -> tuple[Option, ...]:
        kept = sorted(kept, key=lambda hw: (hw[1], self.load[hw[0]], hw[0]))
        return tuple(Option(h, demand(self.fleet.hosts[h], guest), w * WARNING_COST)
                     for h, w in kept)


def _distinguishing(report: Report) -> int:
    """Warnings that set this destination apart (a fleet-wide one ranks no host lower)."""
    return sum(1 for f in report.warnings if f.code not in FLEET_WIDE)
