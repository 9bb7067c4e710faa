"""A step kind is one unit (issue 15, item 2): what differs between kinds is asked of the
step, never decided by testing its class outside netmap/steps/ (and netmap/plan/, which
builds and looks up steps).

The step classes are collected from netmap.steps itself, so a new kind is covered as soon as
it exists; modules are read with `ast`, never imported.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO

import netmap.steps as steps
from netmap.netlink import ovs_steps, ovsdb
from netmap.steps import EnsureOvsBridge, EnsureOvsPort
from netmap.steps.base import Step
from netmap.steps.ovs import OvsStep

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



def test_only_an_ovs_step_is_released_in_the_ovsdb_transaction() -> None:
    """release hands the steps of release phase "ovsdb" to the OVSDB transaction as OVS
    steps (steps.ovs.changes_ovsdb): that phase and the class go together."""
    in_ovsdb = {cls for cls in STEP_CLASSES if cls.release_phase == "ovsdb"}
    assert in_ovsdb == {cls for cls in STEP_CLASSES if issubclass(cls, OvsStep)}


@dataclass(frozen=True)
class Port:
    external_ids: dict[str, str]


@dataclass(frozen=True)
class Bridge:
    ports: dict[str, Port]
    external_ids: dict[str, str] = field(default_factory=lambda: {"netmap-owner": "netmap"})


@dataclass
class Connections:
    """ovsdb.Connections over fixed bridges, one database per remote; records each
    transaction applied."""

    bridges_at: dict[str, dict[str, Bridge]]
    opened: list[tuple[str, bool]] = field(default_factory=list)
    applied: list[tuple[str, list[ovsdb.Change]]] = field(default_factory=list)

    def __call__(self, remote: str, *, every_port: bool = False) -> Connections.Db:
        self.opened.append((remote, every_port))
        return Connections.Db(self, remote)

    @dataclass
    class Db:
        connections: Connections
        remote: str

        def bridges(self) -> dict[str, Bridge]:
            return self.connections.bridges_at[self.remote]

        def apply(self, changes: list[ovsdb.Change]) -> None:
            self.connections.applied.append((self.remote, changes))


def _port(port: str, bridge: str, remote: str, owner: str) -> EnsureOvsPort:
    return EnsureOvsPort(port, bridge, remote, external_ids=(("netmap-owner", owner),))


def test_release_s_ovsdb_transaction_is_built_from_what_each_step_says() -> None:
    """Per database one transaction: every port (the last named first), then the bridges;
    a bridge that keeps someone else's port keeps its uplink. The same transactions, in the
    same order, as when ovs_steps.release tested each step's class."""
    a, b = "unix:/a.sock", "unix:/b.sock"
    connections = Connections({
        a: {"br-a": Bridge({"eth0": Port({"netmap-owner": "uplink"}),
                            "nm0": Port({"netmap-owner": "vm1"}),
                            "nm1": Port({"netmap-owner": "vm2"})})},
        b: {"br-b": Bridge({"eth1": Port({"netmap-owner": "uplink"}),
                            "nm2": Port({"netmap-owner": "vm1"}), "vnet9": Port({})}),
            "br-x": Bridge({}, external_ids={})}})
    items = [("port:nm0", _port("nm0", "br-a", a, "vm1")),
             ("port:eth1", _port("eth1", "br-b", b, "uplink")),
             ("port:eth0", _port("eth0", "br-a", a, "uplink")),
             ("bridge:br-a", EnsureOvsBridge("br-a", a)),
             ("port:nm2", _port("nm2", "br-b", b, "vm1")),
             ("port:nm1", _port("nm1", "br-a", a, "vm2")),
             ("bridge:br-b", EnsureOvsBridge("br-b", b)),
             ("bridge:br-x", EnsureOvsBridge("br-x", b)),
             ("port:nm9", _port("nm9", "br-a", a, "vm1"))]
    removed, kept, failed = ovs_steps.release(connections, items, going=set())  # type: ignore[arg-type]
    assert connections.opened == [(a, True), (b, True)]
    assert connections.applied == [
        (a, [ovsdb.DeletePort("nm1", "br-a"), ovsdb.DeletePort("eth0", "br-a"),
             ovsdb.DeletePort("nm0", "br-a"), ovsdb.DeleteBridge("br-a")]),
        (b, [ovsdb.DeletePort("nm2", "br-b")])]
    assert removed == ["port:nm9 (already gone)", "bridge:br-a", "port:nm0", "port:eth0",
                       "port:nm1", "port:nm2"]
    assert kept == [("bridge:br-b", "OVS bridge still has ports netmap did not add: vnet9"),
                    ("bridge:br-x", "not netmap's bridge any more, left alone"),
                    ("port:eth1", "the uplink of OVS bridge br-b, which stays")]
    assert failed == []
