"""A step kind is one unit (issue 15, item 2): what differs between kinds is asked of the
step, never decided by testing its class outside netmap/steps/ (and netmap/plan/, which
builds and looks up steps).

The step classes are collected from netmap.steps itself, so a new kind is covered as soon as
it exists; modules are read with `ast`, never imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

import netmap.steps as steps
from netmap.steps.base import Step

PACKAGE = REPO / "netmap"
ALLOWED = (PACKAGE / "steps", PACKAGE / "plan")  # where a step's class may be asked


def _step_classes() -> set[type[Step]]:
    found: set[type[Step]] = set()
    todo: list[type[Step]] = [Step]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("netmap.steps") and cls not in found:
            found.add(cls)
            todo += cls.__subclasses__()
    return found


STEP_CLASSES = _step_classes()
STEP_NAMES = {cls.__name__ for cls in STEP_CLASSES}


def _names(node: ast.expr) -> list[str]:
    """The class names an isinstance's second argument (or a type comparison) names."""
    if isinstance(node, ast.Tuple):
        return [name for element in node.elts for name in _names(element)]
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    return []


def kind_tests(source: str) -> list[tuple[int, str]]:
    """(line, class) for every place `source` asks whether something is of a step class:
    isinstance / issubclass, `type(x) is C` / `==`, and a `case C():` pattern."""
    found = []
    for node in ast.walk(ast.parse(source)):
        named: list[str] = []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2:
            named = _names(node.args[1])
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Call) \
                and isinstance(node.left.func, ast.Name) and node.left.func.id == "type":
            named = [name for right in node.comparators for name in _names(right)]
        elif isinstance(node, ast.MatchClass):
            named = _names(node.cls)
        found += [(node.lineno, name) for name in named if name in STEP_NAMES]
    return found


def _outside() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py")
                  if not any(path.is_relative_to(allowed) for allowed in ALLOWED))


def test_the_step_classes_are_collected_from_netmap_steps() -> None:
    assert set(steps.STEP_TYPES.values()) <= STEP_CLASSES


def test_the_checker_sees_every_way_of_asking(tmp_path: Path) -> None:
    source = ("from netmap import plan as p\n"
              "from netmap.steps import ClaimVf, EnsureBridge\n"
              "def f(step):\n"
              "    if isinstance(step, p.EnsureOvsPort): pass\n"
              "    if isinstance(step, (EnsureBridge, p.EnsureVlanLink)): pass\n"
              "    if type(step) is p.LinkStep: pass\n"
              "    match step:\n"
              "        case ClaimVf(): pass\n"
              "    if isinstance(step, dict): pass\n")
    assert kind_tests(source) == [(4, "EnsureOvsPort"), (5, "EnsureBridge"),
                                  (5, "EnsureVlanLink"), (6, "LinkStep"), (8, "ClaimVf")]


@pytest.mark.parametrize("path", _outside(), ids=lambda path: str(path.relative_to(REPO)))
def test_no_module_outside_steps_asks_a_steps_class(path: Path) -> None:
    """Ask the step (a method, a class attribute) instead: what it records once made, its
    part in an OVSDB transaction, what a release puts back of it."""
    assert kind_tests(path.read_text()) == []

