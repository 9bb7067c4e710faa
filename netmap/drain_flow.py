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
    one, more endpoints than others, or that must not share a host with another drained
    guest (one MAC on two L2 domains) is *complex*: no single path expresses it. In the
    *relaxation* a complex guest takes one unit of one of its resources, with capacities
    divided by the smallest demand seen; it never undercounts.
  * Step 1: a min-cost flow of the relaxation. Its count bounds every plan; when its
    assignment also respects the real demands (usual unless capacity is tight) it is
    optimal, and it is the answer.
  * Step 2, otherwise: depth-first branch and bound over the complex guests (small demands
    first). Each gets one of its options or none; at a leaf the unit guests are solved by
    max-flow on what is left. The first dive follows the relaxed plan; if it falls short,
    a packing pass (the k smallest guests, best fit decreasing, largest k that packs) gives
    a second incumbent. A node is cut when its bound cannot beat the best leaf: the least
    of the relaxed max-flow and a knapsack bound (pool every resource of one kind: a guest
    takes at least its smallest share of the pool, so at most the k smallest takes fit).
    Identical guests are branched in a fixed order (symmetry breaking).
  * Proof: a plan is known optimal when it places everyone, meets the bound, or the search
    ended within its budget (nodes, and seconds). Otherwise `Solution.proven` is False and
    `upper_bound` says how many guests might at most be placed; callers must say so.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import networkx as nx

Resource = tuple[str, str, str]  # (kind, host, uplink or ""), kind in RESOURCE_ORDER
UPLINK_KINDS = ("vf", "whole")
TAIL_KINDS = ("endpoints", "guests")  # host-wide resources, in chain order
DEFAULT_BUDGET = 2000  # branch-and-bound nodes
DEFAULT_DEADLINE = 5.0  # seconds of search, whichever of the two ends first


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


def solve(problem: Problem, *, budget: int = DEFAULT_BUDGET,
          deadline: float = DEFAULT_DEADLINE) -> Solution:
    """The most guests placed, then the least cost; see the module docstring."""
    return _Solver(problem, budget, deadline).run()


@dataclass
class _Group:
    """Guests with the same options (and no conflicts): one supply node in the flow."""

    guests: list[str]
    options: tuple[Option, ...]
    unit: bool


class _Solver:
    def __init__(self, problem: Problem, budget: int, deadline: float) -> None:
        self.problem = problem
        self.budget = budget
        self.stop_at = time.monotonic() + deadline
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
        grouped: dict[object, _Group] = {}
        for guest in sorted(problem.options):
            options = problem.options[guest]
            key = guest if problem.conflicts.get(guest) else id(options)
            unit = unit_of[id(options)] and not problem.conflicts.get(guest)
            grouped.setdefault(key, _Group([], options, unit)).guests.append(guest)
        self.groups = list(grouped.values())
        self.units = [group for group in self.groups if group.unit]
        self.unit_total = sum(len(group.guests) for group in self.units)
        # smallest demand first (to place the most guests, pack the small ones first), then
        # fewest options (failures show early); a group's guests side by side
        self.complex = [guest for group in sorted(
            (group for group in self.groups if not group.unit),
            key=lambda group: (_smallest_take(group), len(group.options), group.guests[0]))
            for guest in group.guests]
        self.group_of = {guest: group for group in self.groups for guest in group.guests}
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

    def _network(self, groups: list[tuple[int, _Group]], free: dict[Resource, int],
                 costs: bool) -> nx.DiGraph:
        """groups: (supply, group); complex groups take their relaxed paths. Capacities
        come from `free`, in guests."""
        net = nx.DiGraph()
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

    def _max_flow(self, groups: list[tuple[int, _Group]], free: dict[Resource, int]) -> int:
        if not groups:
            return 0
        net = self._network(groups, free, costs=False)
        if "sink" not in net:
            return 0
        return int(nx.maximum_flow_value(net, "source", "sink"))

    def _min_cost(self, groups: list[_Group], free: dict[Resource, int]) -> dict[str, Option]:
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
            waiting = list(group.guests)
            sent = flow[("group", index)]
            for option in group.options:
                for target, amount in sent.items():
                    if amount and _host_of(target, option):
                        for guest in waiting[:amount]:
                            out[guest] = option
                        waiting = waiting[amount:]
                        sent[target] = 0
        return out

    def _unit_groups(self) -> list[tuple[int, _Group]]:
        return [(len(group.guests), group) for group in self.units]

    def _bound(self, start: int, free: dict[Resource, int]) -> int:
        """Upper bound on guests placeable from complex[start:] and all unit guests."""
        left: Counter = Counter(id(self.group_of[g]) for g in self.complex[start:])
        relaxed = [(left[id(group)], group) for group in self.groups
                   if not group.unit and left[id(group)]]
        groups = self._unit_groups() + relaxed
        cheap = _knapsack_bound(groups, free)
        return cheap if cheap == 0 else min(cheap, self._max_flow(groups, free))

    # --- search --------------------------------------------------------------------------

    def run(self) -> Solution:
        free = dict(self.problem.free)
        total = self.unit_total + len(self.complex)
        # the relaxation, solved for cost: its count bounds every plan, and when it also
        # respects the real demands it is the answer (usual when capacity is not tight)
        relaxed = self._min_cost(self.groups, free)
        if not self.complex or self._feasible(relaxed):
            assignment = {guest: option.host for guest, option in relaxed.items()}
            return Solution(assignment, True, len(assignment), 0, len(self.complex))
        bound = min(len(relaxed), _knapsack_bound(
            [(len(group.guests), group) for group in self.groups], free))
        # the search tries, for each group, the hosts the relaxation chose (as often as it
        # chose them) first: the first dive is then the relaxed plan, repaired
        self.quota: Counter = Counter((id(self.group_of[g]), o.host) for g, o in relaxed.items())
        self.best: tuple[int, dict[str, Option]] = (-1, {})
        self.target = min(total, bound)
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
        assignment.update({g: o.host for g, o in self._min_cost(self.units, free).items()})
        for guest in assignment:
            if guest not in chosen:
                _take(free, self._option(guest, assignment[guest]).demand, -1)
        self._fill(assignment, free)
        count = len(assignment)
        proven = count >= self.target or not self.exhausted
        return Solution(assignment, proven, count if proven else max(bound, count),
                        self.nodes, len(self.complex))

    def _feasible(self, chosen: dict[str, Option]) -> bool:
        used: Counter = Counter()
        for option in chosen.values():
            used.update(dict(option.demand))
        if any(used[res] > self.problem.free.get(res, 0) for res in used):
            return False
        return not any(chosen[guest].host == chosen[other].host
                       for guest, others in self.problem.conflicts.items() if guest in chosen
                       for other in others if other in chosen)

    def _option(self, guest: str, host: str) -> Option:
        return next(o for o in self.problem.options[guest] if o.host == host)

    def _dfs(self, index: int, placed: int, free: dict[Resource, int],
             chosen: dict[str, Option], picks: list[int]) -> None:
        if self.best[0] >= self.target:
            return
        if self.best[0] >= 0 and (self.nodes >= self.budget or
                                  time.monotonic() > self.stop_at):
            self.exhausted = True
            return
        self.nodes += 1
        if index == len(self.complex):
            value = placed + self._max_flow(self._unit_groups(), free)
            first = self.best[0] < 0
            if value > self.best[0]:
                self.best = (value, dict(chosen))
            if first and value < self.target:
                # the dive followed the relaxation (spread out) and fell short: capacity is
                # tight, so try packing instead before searching on
                packed = self._packed(dict(self.problem.free))
                if packed[0] > self.best[0]:
                    self.best = packed
            return
        left = len(self.complex) - index
        if self.best[0] >= 0 and (placed + left + self.unit_total <= self.best[0] or
                                  placed + self._bound(index, free) <= self.best[0]):
            return
        guest = self.complex[index]
        group = self.group_of[guest]
        options = group.options
        # a group's guests are interchangeable: only non-decreasing choices (symmetry)
        lowest = picks[-1] if index and self.group_of[self.complex[index - 1]] is group else 0
        hosts_taken = {chosen[o].host for o in self.problem.conflicts.get(guest, ())
                       if o in chosen}
        hinted = [p for p in range(lowest, len(options))
                  if self.quota[id(group), options[p].host] > 0]
        order = hinted + [p for p in range(lowest, len(options) + 1) if p not in hinted]
        for pick in order:
            if pick == len(options):
                self._dfs(index + 1, placed, free, chosen, [*picks, pick])
                continue
            option = options[pick]
            if option.host in hosts_taken or not fits(option.demand, free):
                continue
            _take(free, option.demand, -1)
            chosen[guest] = option
            self.quota[id(group), option.host] -= 1
            self._dfs(index + 1, placed + 1, free, chosen, [*picks, pick])
            self.quota[id(group), option.host] += 1
            del chosen[guest]
            _take(free, option.demand, +1)
            if self.best[0] >= self.target or self.exhausted:
                return

    def _packed(self, free: dict[Resource, int]) -> tuple[int, dict[str, Option]]:
        """Bin packing for the most guests: the k smallest guests are the likeliest set to
        fit, and best fit decreasing is the classic way to pack a given set. Binary search
        for the largest k that packs completely."""
        best: tuple[int, dict[str, Option]] = (-1, {})
        low, high = 0, len(self.complex)
        while low <= high:
            k = (low + high) // 2
            room = dict(free)
            chosen = self._pack(self.complex[:k][::-1], room)
            if chosen is None:
                high = k - 1
                continue
            low = k + 1
            value = k + self._max_flow(self._unit_groups(), room)
            if value > best[0]:
                best = (value, chosen)
        return best

    def _pack(self, guests: list[str], free: dict[Resource, int]) -> dict[str, Option] | None:
        chosen: dict[str, Option] = {}
        for guest in guests:
            banned = {chosen[o].host for o in self.problem.conflicts.get(guest, ())
                      if o in chosen}
            able = [o for o in self.group_of[guest].options
                    if o.host not in banned and fits(o.demand, free)]
            if not able:
                return None
            option = min(able, key=lambda o: (sum(free[r] - a for r, a in o.demand), o.cost))
            _take(free, option.demand, -1)
            chosen[guest] = option
        return chosen

    # --- the final assignment ------------------------------------------------------------

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


def _smallest_take(group: _Group) -> int:
    return min((sum(amount for _, amount in o.demand) for o in group.options), default=0)


def _knapsack_bound(groups: list[tuple[int, _Group]], free: dict[Resource, int]) -> int:
    """A second bound, for what the flow relaxation misses (uneven demands): pool every
    resource of one kind (all VF pools; all PFs named p1; all endpoint slots...). A guest
    whose every option takes from the pool uses at least its smallest take of it, so at most
    the k guests with the smallest takes fit into the pool's total free amount."""
    families: dict[tuple, list[Resource]] = defaultdict(list)
    for res in free:
        families["kind", res[0]].append(res)
        families["name", res[0], res[2]].append(res)
    best = None
    for members in families.values():
        pool = set(members)
        room = sum(max(free[res], 0) for res in members)
        outside, takes = 0, []
        for count, group in groups:
            able = [o for o in group.options if fits(o.demand, free)]
            if not able:
                continue
            least = min(sum(a for r, a in o.demand if r in pool) for o in able)
            if least == 0:
                outside += count
            else:
                takes += [least] * count
        fitted = 0
        for take in sorted(takes):
            if take > room:
                break
            room -= take
            fitted += 1
        best = outside + fitted if best is None else min(best, outside + fitted)
    if best is None:  # nothing is limited: every guest with an option fits
        return sum(count for count, group in groups if group.options)
    return best


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
