"""Search for the guests a single flow path cannot express; the proof of optimality. Pure.

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
    of the relaxed max-flow and a knapsack bound (pool resources of one kind, e.g. the
    endpoint slots of the hosts one group can reach: a guest that must draw from the pool
    takes at least its smallest share, so at most the k smallest shares fit).
    Identical guests are branched in a fixed order (symmetry breaking).
  * Proof: a plan is known optimal when it places everyone, meets the bound, or the search
    ended within its budget (nodes, and seconds). Otherwise `Solution.proven` is False and
    `upper_bound` says how many guests might at most be placed; callers must say so. (On
    large tight cases the incumbent is usually right but the bound too weak to show it:
    these bounds see one resource kind at a time, an LP would see them together.)
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict

from netmap.query.drain.flow import (
    FlowModel,
    Group,
    Option,
    Problem,
    Resource,
    Solution,
    fits,
    take,
)

DEFAULT_BUDGET = 2000  # branch-and-bound nodes
DEFAULT_DEADLINE = 1.5  # seconds of search, whichever of the two ends first
TIGHT_POOLS = 4  # knapsack pools each search node evaluates


def solve(problem: Problem, *, budget: int = DEFAULT_BUDGET,
          deadline: float = DEFAULT_DEADLINE) -> Solution:
    """The most guests placed, then the least cost; see the module docstring."""
    return _Search(problem, budget, deadline).run()


class _Search(FlowModel):
    def __init__(self, problem: Problem, budget: int, deadline: float) -> None:
        super().__init__(problem)
        self.budget = budget
        self.stop_at = time.monotonic() + deadline
        self.nodes = 0
        # smallest demand first (to place the most guests, pack the small ones first), then
        # fewest options (failures show early); a group's guests side by side
        self.complex = [guest for group in sorted(
            (group for group in self.groups if not group.unit),
            key=lambda group: (_smallest_demand(group), len(group.options), group.guests[0]))
            for guest in group.guests]

    def _bound(self, start: int, free: dict[Resource, int]) -> int:
        """Upper bound on guests placeable from complex[start:] and all unit guests."""
        left: Counter = Counter(id(self.group_of[g]) for g in self.complex[start:])
        relaxed = [(left[id(group)], group) for group in self.groups
                   if not group.unit and left[id(group)]]
        groups = self._unit_groups() + relaxed
        cheap = _knapsack_bound(groups, free, self.tight_pools)
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
        everyone = [(len(group.guests), group) for group in self.groups]
        pools = _pools(everyone, free)
        # rank the pools once; the search nodes reuse the few tightest (all would be slow)
        ranked = sorted(pools, key=lambda pool: _knapsack_bound(everyone, free, [pool]))
        self.tight_pools = ranked[:TIGHT_POOLS]
        bound = min(len(relaxed), _knapsack_bound(everyone, free, ranked[:1]))
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
            take(free, option.demand, -1)
        assignment = {guest: option.host for guest, option in chosen.items()}
        assignment.update({g: o.host for g, o in self._min_cost(self.units, free).items()})
        for guest in assignment:
            if guest not in chosen:
                take(free, self._option(guest, assignment[guest]).demand, -1)
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
        hinted_set = set(hinted)
        order = hinted + [p for p in range(lowest, len(options) + 1) if p not in hinted_set]
        for pick in order:
            if pick == len(options):
                self._dfs(index + 1, placed, free, chosen, [*picks, pick])
                continue
            option = options[pick]
            if option.host in hosts_taken or not fits(option.demand, free):
                continue
            take(free, option.demand, -1)
            chosen[guest] = option
            self.quota[id(group), option.host] -= 1
            self._dfs(index + 1, placed + 1, free, chosen, [*picks, pick])
            self.quota[id(group), option.host] += 1
            del chosen[guest]
            take(free, option.demand, +1)
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
            take(free, option.demand, -1)
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
                    take(free, option.demand, -1)
                    assignment[guest] = option.host
                    break


def _smallest_demand(group: Group) -> int:
    return min((sum(amount for _, amount in o.demand) for o in group.options), default=0)


Pool = frozenset  # of Resource: capacity that several guests draw from


def _pools(groups: list[tuple[int, Group]], free: dict[Resource, int]) -> list[Pool]:
    """Candidate pools for the knapsack bound: every resource of one kind; every resource of
    one kind and uplink name (all PFs called p1); and, per group, the resources of one kind
    its options draw from (so a site's hosts are not pooled with another site's)."""
    pools: dict[Pool, None] = {}
    by_kind: dict[tuple, set[Resource]] = defaultdict(set)
    for res in free:
        by_kind["kind", res[0]].add(res)
        by_kind["name", res[0], res[2]].add(res)
    for members in by_kind.values():
        pools[Pool(members)] = None
    for _, group in groups:
        reach: dict[str, set[Resource]] = defaultdict(set)
        for option in group.options:
            for res, _ in option.demand:
                reach[res[0]].add(res)
        for members in reach.values():
            pools[Pool(members)] = None
    return list(pools)


def _knapsack_bound(groups: list[tuple[int, Group]], free: dict[Resource, int],
                    pools: list[Pool]) -> int:
    """A second bound, for what the flow relaxation misses (uneven demands). A guest whose
    every option takes from a pool uses at least its smallest take of it, so at most the k
    guests with the smallest takes fit into the pool's total free amount; the guests that
    can avoid the pool count in full. The least over all pools bounds every plan."""
    able = {id(group): [o for o in group.options if fits(o.demand, free)]
            for _, group in groups}
    best = sum(count for count, group in groups if able[id(group)])
    for pool in pools:
        room = sum(max(free.get(res, 0), 0) for res in pool)
        outside, takes = 0, []
        for count, group in groups:
            if not able[id(group)]:
                continue
            least = min(sum(a for r, a in o.demand if r in pool) for o in able[id(group)])
            if least == 0:
                outside += count
            else:
                takes += [least] * count
        fitted = 0
        for share in sorted(takes):
            if share > room:
                break
            room -= share
            fitted += 1
        best = min(best, outside + fitted)
    return best
