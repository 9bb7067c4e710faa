"""The layers of netmap/, stated once here, and checked on every import of every module.

Every import counts: at module level, inside a function (a lazy import for start-up speed is
still a dependency) and under TYPE_CHECKING (a kernel type in a pure signature ties the pure
code to the kernel's design as much as a call does; the cycle rule counts them for the same
reason). Modules are read with `ast`, never imported, so this runs without root or pyroute2.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "netmap"

# The flow is one way: files are loaded into the model, rules and graphs judge it, a plan is
# made, the kernel layer applies it; integrations (libvirt, QEMU) and commands sit at the
# edges. A pattern names a module and its submodules; `*` matches as in fnmatch.
LAYERS: dict[str, tuple[str, ...]] = {
    "support": ("netmap", "netmap.errors", "netmap.support"),
    "model": ("netmap.model",),
    "modes": ("netmap.modes",),
    "load": ("netmap.load",),
    "rules": ("netmap.rules", "netmap.query", "netmap.plan", "netmap.steps"),
    "kernel": ("netmap.netlink", "netmap.state", "pyroute2", "ovs"),
    "integrations": ("netmap.libvirt", "netmap.qemu", "netmap.ansible_run"),
    "edges": ("netmap.commands", "netmap.cli", "netmap.__main__", "netmap.render", "netmap.lab"),
}

# What a layer never imports, and why.
NEVER: dict[str, tuple[tuple[str, ...], str]] = {
    "support": (("kernel", "integrations", "edges"), "everything below rules is pure"),
    "model": (("kernel", "integrations", "edges"), "the model is pure data"),
    "modes": (("kernel", "integrations", "edges"),
              "a mode is pure: what the kernel does with it is the kernel layer's"),
    # load may read domain-XML guests through libvirt.domain (that edge is one way)
    "load": (("kernel", "edges"), "loading reads files, never the host"),
    "rules": (("kernel", "integrations", "edges"),
              "rules, graph and plan are pure: tested without root"),
    "kernel": (("integrations", "edges"), "the kernel layer serves every caller alike"),
    "integrations": (("edges",), "libvirt and QEMU call netmap's layers, not its commands"),
}


def _matches(module: str, pattern: str) -> bool:
    if "*" in pattern:
        return fnmatch.fnmatchcase(module, pattern)
    return module == pattern or module.startswith(pattern + ".")


def layer_of(module: str) -> str | None:
    """The most specific layer naming `module` ("netmap" alone is only the package)."""
    best: tuple[int, str] | None = None
    for layer, patterns in LAYERS.items():
        for pattern in patterns:
            exact = pattern == "netmap"
            if (module == pattern) if exact else _matches(module, pattern):
                score = len(pattern.rstrip("*"))
                if best is None or score > best[0]:
                    best = (score, layer)
    return best[1] if best else None


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str:
    """A dotted import target as the netmap module that holds it (or as written, outside)."""
    if not name.startswith("netmap"):
        return name
    probe = name
    while probe and probe not in MODULES:
        probe = probe.rpartition(".")[0]
    return probe or name


def imports_of(module: str) -> set[str]:
    """Every module `module` imports anywhere in its file, resolved to netmap's files."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from netmap import names` imports the module netmap.model.names
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {_resolve(target) for target in targets}
    found.discard(module)
    return found


def _graph() -> dict[str, set[str]]:
    """Imports between files; a module's own enclosing packages are left out, as Python runs
    their __init__ before the module whatever it imports (the shared import_cycles tool
    counts the same way)."""
    return {module: {t for t in imports_of(module)
                     if t in MODULES and not module.startswith(t + ".")}
            for module in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected sets of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in graph[node]:
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer() -> None:
    assert [m for m in sorted(MODULES) if layer_of(m) is None] == []


def test_no_import_cycles_between_files() -> None:
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("layer", sorted(NEVER))
def test_layer_never_imports_the_layers_it_must_not(layer: str) -> None:
    forbidden, why = NEVER[layer]
    wrong = sorted(f"{module} imports {target}"
                   for module in MODULES if layer_of(module) == layer
                   for target in imports_of(module) if layer_of(target) in forbidden)
    assert wrong == [], why


def test_the_checker_sees_hidden_imports(tmp_path: Path) -> None:
    """What the rules rely on: an import inside a function and one under TYPE_CHECKING are
    both dependencies; a relative import resolves to its file."""
    source = ("from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from netmap.netlink.rtmsg import Link\n"
              "def f():\n    from ...commands import _common\n")
    MODULES["netmap.query.drain._layers_probe"] = tmp_path / "probe.py"
    (tmp_path / "probe.py").write_text(source)
    try:
        assert imports_of("netmap.query.drain._layers_probe") >= {"netmap.netlink.rtmsg",
                                                            "netmap.commands._common"}
        assert layer_of("netmap.query.drain._layers_probe") == "rules"
        assert layer_of("pyroute2.netlink") == "kernel"
        assert layer_of("netmap.rules.drift.links") == "rules"
    finally:
        del MODULES["netmap.query.drain._layers_probe"]
