"""A mode is a unit: everything about it lives in netmap/modes, and a new one is a new module
there plus its entry in the registry (README, "Adding a mode")."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from netmap.errors import InputError
from netmap.load.parse import load_host, load_networks
from netmap.model.fleet import Binding
from netmap.modes import FAMILIES, REGISTRY, Mode, semantic_classes, sharing_problem
from netmap.netlink.endpoints import ENDPOINTS

PACKAGE = REPO / "netmap"
MODES_DIR = PACKAGE / "modes"


def _is_mode_expr(node: ast.AST) -> bool:
    """`x.mode` or a name `mode`: what holds a binding's mode name."""
    return (isinstance(node, ast.Attribute) and node.attr == "mode") or (
        isinstance(node, ast.Name) and node.id == "mode")


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for item in node.elts for s in _strings(item)]
    return []


def mode_name_uses(package: Path, modes: set[str]) -> list[str]:
    """Where code outside package/modes names a mode: a string that is a mode name with a
    family prefix (macvtap-vepa, sriov-vf: nothing else is called so), a comparison of a
    mode with a mode name (bridge and vxlan are also link kinds and features, which may be
    compared freely), or a prefix test on a mode."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if (package / "modes") in path.parents:
            continue
        where = path.relative_to(package)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in modes and "-" in node.value:
                found.append(f"{where}:{node.lineno}: {node.value!r}")
            elif isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                named = [s for o in operands for s in _strings(o) if s in modes]
                if named and any(_is_mode_expr(o) for o in operands):
                    found.append(f"{where}:{node.lineno}: compares a mode with {named}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in ("startswith", "endswith")
                  and _is_mode_expr(node.func.value)):
                found.append(f"{where}:{node.lineno}: {node.func.attr} on a mode")
    return found


def test_no_module_outside_modes_names_a_mode() -> None:
    assert mode_name_uses(PACKAGE, set(REGISTRY)) == []


def test_the_scan_finds_the_branches_it_forbids(tmp_path: Path) -> None:
    """The scan above is not vacuous: each way the code once branched on a mode is seen."""
    (tmp_path / "modes").mkdir()
    (tmp_path / "modes" / "inside.py").write_text('OK = "sriov-vf"\n')
    (tmp_path / "outside.py").write_text(
        'def f(binding, step, link, mode):\n'
        '    a = binding.mode == "vxlan"\n'
        '    b = mode in ("bridge", "x")\n'
        '    c = binding.mode.startswith("macvtap-")\n'
        '    d = {"macvtap-vepa": "vepa"}\n'
        '    e = link.kind == "bridge" or step.mode == "passthru"\n')
    found = mode_name_uses(tmp_path, set(REGISTRY))
    assert [line.split(": ", 1)[0] for line in found] == [
        "outside.py:2", "outside.py:3", "outside.py:4", "outside.py:5"]


def test_registry_holds_every_family_s_modes_once() -> None:
    listed = [mode.name for family in FAMILIES for mode in family.MODES]
    assert listed == list(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_mode_names_a_kernel_endpoint(name: str) -> None:
    assert REGISTRY[name].endpoint in ENDPOINTS


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_mode_has_a_forwarding_class(name: str) -> None:
    assert REGISTRY[name].semantic in semantic_classes()


class _Owner(Mode):
    """A mode for the hooks below: it owns a binding field and keeps its uplink alone."""

    name = "owner"
    owns_fields = ("spoofchk",)

    def sharing_problem(self, uplink: str,
                        users: list[Binding]) -> tuple[str, str, str, str] | None:
        other = next((b for b in users if b.mode != self.name), None)
        if other is None:
            return None
        return other.network, "mode", f"shares {uplink} with an owner", "give it its own"


def test_a_field_another_mode_owns_is_refused_by_load(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "networks.toml").write_text('[networks.lan]\nsegment = "s1"\n')
    (tmp_path / "h.toml").write_text('[host]\nname = "h"\n[uplinks.eth0]\nsegments = ["s1"]\n'
                                     '[networks.lan]\nmode = "bridge"\nuplink = "eth0"\n'
                                     'spoofchk = false\n')
    networks = load_networks(tmp_path / "networks.toml")
    assert load_host(tmp_path / "h.toml", networks).bindings["lan"].spoofchk is False
    monkeypatch.setitem(REGISTRY, "owner", _Owner())
    with pytest.raises(InputError) as refused:
        load_host(tmp_path / "h.toml", networks)
    assert refused.value.key == "networks.lan.spoofchk"
    assert "only owner mode takes spoofchk, not bridge" in str(refused.value)


def test_a_mode_s_sharing_rule_comes_before_the_shared_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRY, "owner", _Owner())
    users = [Binding("a", "owner", "eth0"), Binding("b", "macvtap-passthrough", "eth0")]
    assert sharing_problem("eth0", users) == ("b", "mode", "shares eth0 with an owner",
                                              "give it its own")
    assert sharing_problem("eth0", users[1:]) is None  # one binding alone always stands
    assert sharing_problem("eth0", [users[1], Binding("c", "bridge", "eth0")])[:2] == (
        "c", "uplink")


TOY_MODE = '''"""toy-bridge: a tap on a bridge of its own per uplink (tests/test_modes.py)."""

from __future__ import annotations

from netmap.model import names
from netmap.model.fleet import Binding, Network
from netmap.modes.base import Mode, NicContext


class ToyBridge(Mode):
    name = "toy-bridge"
    family = "toy"
    semantic = "local-switching"
    uplink_use = "port"
    kernel_features = ("bridge", "tun")
    endpoint = "bridge-tap"
    libvirt_type = "bridge"
    libvirt_forward = "bridge"
    qemu_fd = "tap"

    def devices(self, guest: str, nic: int, binding: Binding, network: Network):
        return (("bridge", self.uplink_master(binding)), ("tap", names.tap_name(guest, nic)))

    def uplink_master(self, binding: Binding) -> str:
        return f"toy{binding.uplink}"

    def guest_bridge(self, binding: Binding, network: Network) -> str:
        return self.uplink_master(binding)

    def steps(self, ctx: NicContext):
        from netmap.steps import CreateTap, EnslavePort, EnsureBridge

        bridge, tap = ctx.devices["bridge"], ctx.devices["tap"]
        return [EnsureBridge(bridge, ctx.mtu), EnslavePort(ctx.uplink, bridge),
                CreateTap(tap, names.host_side_mac(ctx.nic.mac), ctx.nic.mac, ctx.mtu, bridge)]


MODES = (ToyBridge(),)
'''

FLEET = {
    "networks.toml": '[networks.lan]\nsegment = "s1"\n',
    "hosts/a.toml": '[host]\nname = "a"\nfeatures = ["vhost-net"]\n'
                    '[uplinks.eth0]\nsegments = ["s1"]\n'
                    '[networks.lan]\nmode = "bridge"\nuplink = "eth0"\n',
    "hosts/b.toml": '[host]\nname = "b"\nfeatures = ["vhost-net"]\n'
                    '[uplinks.eth1]\nsegments = ["s1"]\n'
                    '[networks.lan]\nmode = "toy-bridge"\nuplink = "eth1"\n',
    "guests/vm.toml": '[guest]\nname = "vm"\nhost = "a"\n'
                      '[[nics]]\nnetwork = "lan"\nmac = "52:54:00:00:00:01"\n',
}


def _netmap(code: Path, mappings: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(code), "NETMAP_CACHE_DIR": str(mappings.parent /
                                                                        "cache")}
    return subprocess.run([sys.executable, "-m", "netmap", "--mappings", str(mappings), *args],
                          capture_output=True, text=True, env=env, cwd=code, timeout=120)


def test_adding_a_mode_is_one_module_and_its_registry_entry(tmp_path: Path) -> None:
    """A copy of netmap/ with one new module and the registry naming it: load, check, plan
    and libvirt-networks take the new mode, without any other file changed."""
    mappings = tmp_path / "mappings"
    for name, text in FLEET.items():
        (mappings / name).parent.mkdir(parents=True, exist_ok=True)
        (mappings / name).write_text(text)
    code = tmp_path / "code"
    shutil.copytree(PACKAGE, code / "netmap", ignore=shutil.ignore_patterns("__pycache__"))
    # without the new mode, the host file that names it is refused (the control)
    refused = _netmap(code, mappings, "check", "vm", "--to", "b")
    assert refused.returncode == 2, refused.stderr
    assert "'toy-bridge' is not known" in refused.stderr

    (code / "netmap" / "modes" / "toy.py").write_text(TOY_MODE)
    registry = code / "netmap" / "modes" / "__init__.py"
    before = registry.read_text()
    after = (before.replace("import bridge, macvtap, ovs, sriov, vxlan",
                            "import bridge, macvtap, ovs, sriov, toy, vxlan")
             .replace("FAMILIES = (bridge, macvtap, sriov, vxlan, ovs)",
                      "FAMILIES = (bridge, macvtap, sriov, vxlan, ovs, toy)"))
    registry.write_text(after)
    changed = [(old, new) for old, new in zip(before.splitlines(), after.splitlines(), strict=True)
               if old != new]
    assert len(changed) == 2  # the import and FAMILIES: the registry entry

    checked = _netmap(code, mappings, "check", "vm", "--to", "b", "--json")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["compatible"] is True

    planned = _netmap(code, mappings, "plan", "vm", "--host", "b", "--json")
    assert planned.returncode == 0, planned.stderr
    steps = json.loads(planned.stdout)["steps"]
    assert [(s["kind"], s.get("name") or s.get("port")) for s in steps] == [
        ("require-link", "eth1"), ("bridge", "toyeth1"), ("enslave", "eth1"),
        ("tap", steps[-1]["name"])]

    networks = _netmap(code, mappings, "libvirt-networks", "--host", "b", "--json")
    assert networks.returncode == 0, networks.stderr
    (network,) = json.loads(networks.stdout)["networks"]
    assert network["forward"] == "bridge"
    assert '<bridge name="toyeth1" />' in network["xml"]
