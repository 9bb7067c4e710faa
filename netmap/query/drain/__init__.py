"""netmap drain: plan the evacuation of a whole host. Pure: the graph and the check in, a plan
out; the parts:
  candidates  which hosts can take each guest (graph, then check) and what they have free
  flow        the problem as a flow network: max-flow, min-cost flow, the relaxation
  search      exact search for what one flow cannot express, and the proof of optimality
  report      the plan: moves, blocked guests and why, capacity before and after
  planner     drain(): all of it, with a final check of every move
"""

from __future__ import annotations

from netmap.query.drain.flow import Option, Problem, Solution
from netmap.query.drain.planner import drain
from netmap.query.drain.report import Blocked, DrainPlan, HostUse, HostVerdict, Move, Unfit
from netmap.query.drain.search import DEFAULT_BUDGET, DEFAULT_DEADLINE, solve

__all__ = ["DEFAULT_BUDGET", "DEFAULT_DEADLINE", "Blocked", "DrainPlan", "HostUse",
           "HostVerdict", "Move", "Option", "Problem", "Solution", "Unfit", "drain", "solve"]
