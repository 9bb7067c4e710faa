"""Assign guests to hosts under capacities: exact, as flows on a networkx graph. Pure.

The problem (built by netmap.drain from the fleet): every guest has options, one per host that
passes the check for it, each with a *demand*: how much of each limited resource of that host
it takes (VFs of one PF, an uplink held in macvtap passthrough, endpoint slots, guest slots)
and a cost (warnings). Place as many guests as possible without exceeding any capacity, then
prefer cheap options and spread the guests over the hosts.

How it is solved
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
  * The multi-commodity wrinkle: a guest that needs VFs on two PFs, two VFs where others take
    one, endpoints where others take fewer, or that must not share a host with another
    drained guest (same MAC on two L2 domains) is *complex*: no single path expresses it.
    Complex guests are placed by a depth-first branch and bound: each is given one of its
    options (best first) or none, the capacities it takes are removed, and at a leaf the
    unit guests are solved by max-flow on what is left. A node is cut when its upper bound
    cannot beat the best leaf; the bound is a max-flow in which each remaining complex guest
    takes one unit of one of its resources, with capacities divided by the smallest demand
    seen (a relaxation: it never undercounts). Identical complex guests are branched in a
    fixed order (symmetry breaking).
  * Proof: a plan is known optimal when it places everyone, when it meets the root bound, or
    when the search finished within its budget. Otherwise `Solution.proven` is False and
    `upper_bound` says how many guests might at most be placed; callers must say so.
"""

from __future__ import annotations

import math
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import networkx as nx

Resource = tuple[str, str, str]  # (kind, host, uplink or ""), kind in RESOURCE_ORDER
UPLINK_KINDS = ("vf", "whole")
TAIL_KINDS = ("endpoints", "guests")  # host-wide resources, in chain order
DEFAULT_BUDGET = 2000  # branch-and-bound nodes


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


def solve(problem: Problem, *, budget: int = DEFAULT_BUDGET) -> Solution:
    return _Solver(problem, budget).run()


@dataclass
class _Group:
    guests: list[str]
    options: tuple[Option, ...]


class _Solver:
    def __init__(self, problem: Problem, budget: int) -> None:
        self.problem = problem
        self.budget = budget
        amounts: dict[Resource, set[int]] = defaultdict(set)
        for options in problem.options.values():
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
        complex_guests, units = [], defaultdict(list)
        for guest in sorted(problem.options):
            options = problem.options[guest]
            if problem.conflicts.get(guest) or not all(map(self._is_unit, options)):
                complex_guests.append(guest)
            else:
                units[options].append(guest)
        self.units = [_Group(guests, options) for options, guests in units.items()]
        self.unit_total = sum(len(group.guests) for group in self.units)
        # fewest options first: failures show early; identical guests side by side
        self.complex = sorted(complex_guests,
                              key=lambda g: (len(problem.options[g]), problem.options[g], g))
        self.nodes = 0

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
        for res in option.demand:
            if res[0][0] in UPLINK_KINDS:
                return res[0]
        return next((r for r in self.limited_tail.get(option.host, []) if r in taken), None)

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

    def _network(self, groups: list[tuple[int, tuple[Option, ...], bool]],
                 free: dict[Resource, int], costs: bool) -> nx.DiGraph:
        """groups: (supply, options, relaxed). Capacities come from `free`."""
        net = nx.DiGraph()
        hosts: set[str] = set()
        supply = 0
        for index, (count, options, relaxed) in enumerate(groups):
            node = ("group", index)
            net.add_edge("source", node, capacity=count, weight=0)
            supply += count
            for option in options:
                if not fits(option.demand, free):
                    continue
                entry = (self._relaxed_entry if relaxed else self._unit_entry)(option)
                target = ("res", entry) if entry else ("host", option.host)
                net.add_edge(node, target, capacity=count, weight=option.cost)
                hosts.add(option.host)
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

    def _max_flow(self, groups: list[tuple[int, tuple[Option, ...], bool]],
                  free: dict[Resource, int]) -> int:
        if not groups:
            return 0
        net = self._network(groups, free, costs=False)
        if "sink" not in net:
            return 0
        return int(nx.maximum_flow_value(net, "source", "sink"))

    def _unit_groups(self) -> list[tuple[int, tuple[Option, ...], bool]]:
        return [(len(group.guests), group.options, False) for group in self.units]

    def _bound(self, start: int, free: dict[Resource, int]) -> int:
        """Upper bound on guests placeable from complex[start:] and all unit guests."""
        relaxed = [(1, self.problem.options[g], True) for g in self.complex[start:]]
        return self._max_flow(self._unit_groups() + relaxed, free)

    # --- search --------------------------------------------------------------------------

    def run(self) -> Solution:
        free = dict(self.problem.free)
        total = self.unit_total + len(self.complex)
        root_bound = self._bound(0, free) if self.complex else self._max_flow(
            self._unit_groups(), free)
        self.best: tuple[int, dict[str, Option]] = (-1, {})
        self.target = min(total, root_bound)
        self.exhausted = False
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, len(self.complex) + 1000))
        try:
            self._dfs(0, 0, free, {}, [])
        finally:
            sys.setrecursionlimit(limit)
        chosen = self.best[1]
        for option in chosen.values():
            _take(free, option.demand, -1)
        assignment = {guest: option.host for guest, option in chosen.items()}
        assignment.update(self._assign_units(free))
        self._fill(assignment, free)
        count = len(assignment)
        proven = count >= self.target or not self.exhausted
        return Solution(assignment, proven, max(root_bound, count) if not proven else count,
                        self.nodes, len(self.complex))

    def _dfs(self, index: int, placed: int, free: dict[Resource, int],
             chosen: dict[str, Option], picks: list[int]) -> None:
        if self.best[0] >= self.target:
            return
        if self.nodes >= self.budget and self.best[0] >= 0:
            self.exhausted = True
            return
        self.nodes += 1
        if index == len(self.complex):
            value = placed + self._max_flow(self._unit_groups(), free)
            if value > self.best[0]:
                self.best = (value, dict(chosen))
            return
        left = len(self.complex) - index
        if self.best[0] >= 0 and (placed + left + self.unit_total <= self.best[0] or
                                  placed + self._bound(index, free) <= self.best[0]):
            return
        guest = self.complex[index]
        options = self.problem.options[guest]
        lowest = 0
        if index and self._twins(self.complex[index - 1], guest):
            lowest = picks[-1]  # identical guests: only non-decreasing choices
        hosts_taken = {chosen[o].host for o in self.problem.conflicts.get(guest, ())
                       if o in chosen}
        for pick in range(lowest, len(options) + 1):
            if pick == len(options):
                self._dfs(index + 1, placed, free, chosen, [*picks, pick])
                break
            option = options[pick]
            if option.host in hosts_taken or not fits(option.demand, free):
                continue
            _take(free, option.demand, -1)
            chosen[guest] = option
            self._dfs(index + 1, placed + 1, free, chosen, [*picks, pick])
            del chosen[guest]
            _take(free, option.demand, +1)
            if self.best[0] >= self.target or self.exhausted:
                return

    def _twins(self, a: str, b: str) -> bool:
        conflicts = self.problem.conflicts
        return (self.problem.options[a] == self.problem.options[b]
                and not conflicts.get(a) and not conflicts.get(b))

    # --- the final assignment ------------------------------------------------------------

    def _assign_units(self, free: dict[Resource, int]) -> dict[str, str]:
        """Min-cost maximum flow for the unit guests on what the complex ones left."""
        groups = self._unit_groups()
        if not groups:
            return {}
        net = self._network(groups, free, costs=True)
        supply = -net.nodes["source"]["demand"]
        worst = max((w for _, _, w in net.edges(data="weight", default=0)), default=0)
        # the bypass must cost more than any rerouting a further placement could cause
        net.add_edge("source", "sink", capacity=supply, weight=(supply + 1) * 4 * worst + 1)
        flow = nx.network_simplex(net)[1]
        out: dict[str, str] = {}
        for index, group in enumerate(self.units):
            waiting = list(group.guests)
            for option in group.options:
                for target, amount in flow[("group", index)].items():
                    if amount and _host_of(target, option):
                        take = min(amount, len(waiting))
                        for guest in waiting[:take]:
                            out[guest] = option.host
                            _take(free, option.demand, -1)
                        waiting = waiting[take:]
                        flow[("group", index)][target] = 0
        return out

    def _fill(self, assignment: dict[str, str], free: dict[Resource, int]) -> None:
        """Safety net after a search cut short: add any guest that still fits somewhere."""
        for guest in sorted(set(self.problem.options) - set(assignment)):
            banned = {assignment[o] for o in self.problem.conflicts.get(guest, ())
                      if o in assignment}
            for option in self.problem.options[guest]:
                if option.host not in banned and fits(option.demand, free):
                    _take(free, option.demand, -1)
                    assignment[guest] = option.host
                    break


def _host_of(target: object, option: Option) -> bool:
    if target == ("host", option.host):
        return True
    return (isinstance(target, tuple) and target[0] == "res" and target[1][1] == option.host)


def _take(free: dict[Resource, int], demand: Iterable[tuple[Resource, int]], sign: int) -> None:
    for res, amount in demand:
        free[res] = free.get(res, 0) + sign * amount


def usage(options: dict[str, tuple[Option, ...]], assignment: dict[str, str]) -> Counter:
    """Resource -> amount the assigned guests take (for capacity summaries and tests)."""
    used: Counter = Counter()
    for guest, host in assignment.items():
        option = next(o for o in options[guest] if o.host == host)
        for res, amount in option.demand:
            used[res] += amount
    return used
