"""The drain problem as a flow network (networkx): types, paths, max-flow, min-cost. Pure.

The problem (built by netmap.query.drain from the fleet): every guest has options, one per host that
passes the check for it, each with a *demand*: how much of each limited resource of that host
it takes (VFs of one PF, an uplink held in macvtap passthrough, endpoint slots, guest slots)
and a cost (warnings). Place as many guests as possible without exceeding any capacity, then
prefer cheap options and spread the guests over the hosts.

The network
  * Flow network, per host:  guest group -> [one uplink resource (VF pool of a PF, or an
    uplink held whole)] -> [endpoint slots] -> [guest slots] -> host -> sink. A node's
    capacity is the resource's free amount divided by what one guest takes of it. Guests with
    the same options are one group with that many units of supply.
  * This is exact when every guest takes one *unit* path: at most one uplink resource, the
    same amount of a resource as every other guest that uses it, and every later resource of
    the host's chain. A maximum flow is then a maximum assignment (integral flows, and a flow
    decomposes into one path per guest); a min-cost flow with a costly bypass arc picks,
    among the maximum ones, the one with the fewest warnings and the most even spread
    (convex per-host load costs).
  * A guest no single path expresses is *complex* (netmap.query.drain.search handles those). In
    the *relaxation* a complex guest takes one unit of one of its resources, with capacities
    divided by the smallest demand seen: it never undercounts, so it bounds every plan.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import networkx as nx

Resource = tuple[str, str, str]  # (kind, host, uplink or ""), kind in UPLINK_KINDS + TAIL_KINDS
UPLINK_KINDS = ("vf", "whole")
TAIL_KINDS = ("endpoints", "guests")  # host-wide resources, in chain order


@dataclass(frozen=True, order=True)
class Option:
    """One host a guest can go to: what it takes there, and how much we dislike it."""

    host: str
    demand: tuple[tuple[Resource, int], ...] = ()  # limited resources only, sorted
    cost: int = 0


@dataclass
class Problem:
    options: dict[str, tuple[Option, ...]]  # guest -> options, preferred first
    free: dict[Resource, int]  # every limited resource's free amount; others are unlimited
    load: dict[str, int] = field(default_factory=dict)  # guests already on each host
    conflicts: dict[str, frozenset[str]] = field(default_factory=dict)  # not on one host


@dataclass(frozen=True)
class Solution:
    assignment: dict[str, str]  # guest -> host
    proven: bool  # no assignment places more guests
    upper_bound: int  # at most this many guests can be placed
    nodes: int  # branch-and-bound nodes visited
    complex_guests: int


def fits(demand: Iterable[tuple[Resource, int]], free: dict[Resource, int]) -> bool:
    return all(free.get(res, 0) >= amount for res, amount in demand)


@dataclass
class Group:
    """Guests with the same options (and no conflicts): one supply node in the flow."""

    guests: list[str]
    options: tuple[Option, ...]
    unit: bool


class FlowModel:
    """The problem's guests in groups, unit or complex, and the flow networks over them."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        amounts: dict[Resource, set[int]] = defaultdict(set)
        distinct = {id(options): options for options in problem.options.values()}
        for options in distinct.values():
            for option in options:
                for res, amount in option.demand:
                    amounts[res].add(amount)
        # a resource every guest takes the same amount of counts in guests, exactly
        self.unit_amount = {res: min(seen) for res, seen in amounts.items() if len(seen) == 1}
        self.min_amount = {res: min(seen) for res, seen in amounts.items()}
        self.limited_tail: dict[str, list[Resource]] = defaultdict(list)
        for res in sorted(problem.free, key=lambda r: TAIL_KINDS.index(r[0])
                          if r[0] in TAIL_KINDS else -1):
            if res[0] in TAIL_KINDS:
                self.limited_tail[res[1]].append(res)
        unit_of = {key: all(map(self._is_unit, options)) for key, options in distinct.items()}
        grouped: dict[object, Group] = {}
        for guest in sorted(problem.options):
            options = problem.options[guest]
            key = guest if problem.conflicts.get(guest) else id(options)
            unit = unit_of[id(options)] and not problem.conflicts.get(guest)
            grouped.setdefault(key, Group([], options, unit)).guests.append(guest)
        self.groups = list(grouped.values())
        self.units = [group for group in self.groups if group.unit]
        self.unit_total = sum(len(group.guests) for group in self.units)
        self.group_of = {guest: group for group in self.groups for guest in group.guests}

    # --- paths ---------------------------------------------------------------------------

    def _chain_after(self, res: Resource | None, host: str) -> list[Resource]:
        """The host's tail resources a path entering at `res` must also cross."""
        tail = self.limited_tail.get(host, [])
        if res is None or res[0] in UPLINK_KINDS:
            return list(tail)
        return tail[tail.index(res) + 1:]

    def _unit_entry(self, option: Option) -> Resource | None:
        """Where a unit path enters the host's chain: its uplink resource, else the first
        tail resource it takes, else (no limited resource) the host itself."""
        taken = {res for res, _ in option.demand}
        uplink = next((res for res in taken if res[0] in UPLINK_KINDS), None)
        if uplink is not None:
            return uplink
        return next((res for res in self.limited_tail.get(option.host, []) if res in taken),
                    None)

    def _is_unit(self, option: Option) -> bool:
        if any(self.unit_amount.get(res) != amount for res, amount in option.demand):
            return False
        if sum(1 for res, _ in option.demand if res[0] in UPLINK_KINDS) > 1:
            return False
        entry = self._unit_entry(option)
        taken = {res for res, _ in option.demand}
        return entry is None or taken == {entry, *self._chain_after(entry, option.host)}

    def _relaxed_entry(self, option: Option) -> Resource | None:
        """Where a complex guest's relaxed path enters: the most specific resource whose
        chain the option fully takes. Dropping the rest only loosens the bound."""
        taken = {res for res, _ in option.demand}
        uplinks = [res for res, _ in option.demand if res[0] in UPLINK_KINDS]
        for res in [*uplinks, *self.limited_tail.get(option.host, [])]:
            if res in taken and set(self._chain_after(res, option.host)) <= taken:
                return res
        return None

    # --- flow networks -------------------------------------------------------------------

    def _network(self, groups: list[tuple[int, Group]], free: dict[Resource, int],
                 costs: bool) -> nx.DiGraph:
        """groups: (supply, group); complex groups take their relaxed paths. Capacities
        come from `free`, in guests."""
        net: nx.DiGraph = nx.DiGraph()
        hosts: dict[str, None] = {}  # ordered: the same input gives the same plan
        supply = 0
        for index, (count, group) in enumerate(groups):
            node = ("group", index)
            net.add_edge("source", node, capacity=count, weight=0)
            supply += count
            for option in group.options:
                if not fits(option.demand, free):
                    continue
                entry = (self._unit_entry if group.unit else self._relaxed_entry)(option)
                target = ("res", entry) if entry else ("host", option.host)
                net.add_edge(node, target, capacity=count, weight=option.cost)
                hosts[option.host] = None
                if entry is not None:
                    self._add_chain(net, entry, option.host, free)
        for host in hosts:
            self._add_sink(net, host, supply, len(hosts), costs)
        if costs:
            net.nodes["source"]["demand"] = -supply
            net.add_node("sink", demand=supply)
        return net

    def _add_chain(self, net: nx.DiGraph, entry: Resource, host: str,
                   free: dict[Resource, int]) -> None:
        chain = [entry, *self._chain_after(entry, host)]
        for res, after in zip(chain, [*chain[1:], None], strict=True):
            if net.has_edge(("res", res), ("res", after) if after else ("host", host)):
                continue
            # in guests: exact for a resource all its users take alike (the only kind unit
            # paths touch), an overestimate (fine for a bound) for the others
            per_guest = self.min_amount.get(res, 1)
            units = max(free.get(res, 0), 0) // max(per_guest, 1)
            net.add_edge(("res", res), ("res", after) if after else ("host", host),
                         capacity=units, weight=0)

    def _add_sink(self, net: nx.DiGraph, host: str, supply: int, hosts: int,
                  costs: bool) -> None:
        if not costs:
            net.add_edge(("host", host), "sink")
            return
        # convex load cost: the k-th new guest on a host costs more than the (k-1)-th, so a
        # min-cost flow spreads guests; beyond `steps` one flat tier keeps the graph small
        load = self.problem.load.get(host, 0)
        steps = min(supply, math.ceil(supply / max(hosts, 1)) + 2)
        for k in range(1, steps + 1):
            net.add_edge(("host", host), ("tier", host, k), capacity=1, weight=load + k)
            net.add_edge(("tier", host, k), "sink", weight=0)
        net.add_edge(("host", host), ("tier", host, 0), weight=2 * (load + steps + 1))
        net.add_edge(("tier", host, 0), "sink", weight=0)

    def _max_flow(self, groups: list[tuple[int, Group]], free: dict[Resource, int]) -> int:
        if not groups:
            return 0
        net = self._network(groups, free, costs=False)
        if "sink" not in net:
            return 0
        return int(nx.maximum_flow_value(net, "source", "sink"))

    def _min_cost(self, groups: list[Group], free: dict[Resource, int]) -> dict[str, Option]:
        """A maximum flow of least cost (warnings, then convex load), as guest -> option."""
        if not groups:
            return {}
        net = self._network([(len(group.guests), group) for group in groups], free, True)
        supply = -net.nodes["source"]["demand"]
        worst = max((w for _, _, w in net.edges(data="weight", default=0)), default=0)
        # the bypass must cost more than any rerouting a further placement could cause
        net.add_edge("source", "sink", capacity=supply, weight=(supply + 1) * 4 * worst + 1)
        flow = nx.network_simplex(net)[1]
        out: dict[str, Option] = {}
        for index, group in enumerate(groups):
            # a group enters each host at one node: ("host", h) or ("res", (kind, h, uplink))
            sent = {target[1] if target[0] == "host" else target[1][1]: amount
                    for target, amount in flow[("group", index)].items() if amount}
            waiting = iter(group.guests)
            for option in group.options:
                for _ in range(sent.get(option.host, 0)):
                    out[next(waiting)] = option
        return out

    def _unit_groups(self) -> list[tuple[int, Group]]:
        return [(len(group.guests), group) for group in self.units]


def take(free: dict[Resource, int], demand: Iterable[tuple[Resource, int]], sign: int) -> None:
    for res, amount in demand:
        free[res] = free.get(res, 0) + sign * amount
