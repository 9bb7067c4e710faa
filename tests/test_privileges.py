"""The "another machine" guard, missing privileges, and kernel support probed before any
change (issue 14, items 4 and 9). Namespaces made here are named nmhp-*.

Privileges are taken away for real: a subprocess under util-linux `setpriv` runs
`python -m netmap` on this checkout as root without any capability (what netmap may do
is decided by capabilities, not by the user id: this is an unprivileged user that can still
read a Python installed under /root), or as root without CAP_NET_ADMIN only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import REPO, ip_links, needs_netns
from steady import steady_link

from netmap import plan as p
from netmap.cli import main
from netmap.errors import ApplyError, InputError, PrivilegeError
from netmap.load import load_fleet
from netmap.netlink.kernel_support import KernelProbe, features_needed, refuse_unsupported
from netmap.plan.planner import build_plan
from netmap.query.graph import build_graph

PREFIX = "nmhp"
NO_CAPABILITIES = ["--bounding-set=-all", "--inh-caps=-all"]
WITHOUT_NET_ADMIN = ["--bounding-set=-net_admin", "--inh-caps=-net_admin"]
needs_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and util-linux setpriv to run netmap with fewer privileges")


# --- helpers -----------------------------------------------------------------------------------
def set_netns(mappings: Path, host: str, netns: str) -> Path:
    """Give `host`'s mapping this netns line (replacing one it has)."""
    path = mappings / "hosts" / f"{host}.toml"
    text = re.sub(r"^netns = .*\n", "", path.read_text(), flags=re.M)
    path.write_text(text.replace("[host]\n", f"[host]\nnetns = {json.dumps(netns)}\n", 1))
    return path


def netmap_as(privileges: list[str], *argv: str, env: dict[str, str] | None = None,
              ) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NETMAP_")}
    environment.update(PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    return subprocess.run(["setpriv", *privileges, "--", sys.executable, "-m", "netmap",
                           *argv], capture_output=True, text=True, env=environment,
                          timeout=120, check=False)


def fake_kernel(root: Path, *, config: str | None = None, builtin: str | None = None,
                dep: str | None = None, boot_config: str | None = None,
                traces: tuple[str, ...] = ()) -> KernelProbe:
    """A kernel laid out under `root` as /proc, /boot, /lib/modules and /sys show it."""
    release = "6.1.0-test"
    if config is not None:
        (root / "proc").mkdir(parents=True, exist_ok=True)
        with gzip.open(root / "proc" / "config.gz", "wt") as stream:
            stream.write(config)
    if boot_config is not None:
        (root / "boot").mkdir(parents=True, exist_ok=True)
        (root / "boot" / f"config-{release}").write_text(boot_config)
    modules = root / "lib" / "modules" / release
    for name, text in (("modules.builtin", builtin), ("modules.dep", dep)):
        if text is not None:
            modules.mkdir(parents=True, exist_ok=True)
            (modules / name).write_text(text)
    for trace in traces:
        (root / trace).mkdir(parents=True, exist_ok=True)
    return KernelProbe(root, release)


# --- item 4: a namespace is a name --------------------------------------------------------------
@pytest.mark.parametrize(("netns", "words"), [
    ("", "is empty"), ("/run/netns/lab", "is a path"), ("/proc/1/ns/net", "is a path"),
    (".", "is not a name"), ("..", "is not a name"), ("n" * 256, "at most 255"),
    ("lab\nb", "control characters")])
def test_mapping_netns_must_be_a_namespace_name(mappings: Path, netns: str,
                                                words: str) -> None:
    path = set_netns(mappings, "host-a", netns)
    fleet = load_fleet(mappings)  # a broken host file is a problem of the fleet, not fatal
    assert "host-a" not in fleet.hosts
    [err] = [e for e in fleet.problems if e.file == str(path)]
    assert (err.file, err.key) == (str(path), "host.netns")
    assert err.line
    assert path.read_text().splitlines()[err.line - 1].startswith("netns =")
    assert words in err.problem
    assert "ip netns list" in (err.fix or "")


def test_a_namespace_name_passes(mappings: Path) -> None:
    set_netns(mappings, "host-a", "lab.host-a_1")
    assert load_fleet(mappings).hosts["host-a"].netns == "lab.host-a_1"


def test_empty_netns_is_refused_before_it_can_mean_this_machine(mappings: Path,
                                                                 capsys) -> None:
    """netns = "" made realize skip the guard and act on the machine it runs on."""
    set_netns(mappings, "host-d", "")
    code = main(["--mappings", str(mappings), "realize", "vm4", "--host", "host-d",
                 "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert "host.netns" in err
    assert "is empty" in err


def test_guard_treats_an_empty_netns_as_none(mappings: Path) -> None:
    """The guard itself: a Host with netns "" (not from a file) is another machine."""
    from netmap.commands.realize import _target_host

    fleet = load_fleet(mappings)
    fleet.hosts["host-d"] = replace(fleet.hosts["host-d"], netns="")
    args = argparse.Namespace(host="host-d", as_host=False)
    with pytest.raises(InputError, match="names another machine than this one"):
        _target_host(args, fleet)


@pytest.mark.parametrize("argv", [
    ["discover", "--netns", "/proc/1/ns/net"],
    ["discover", "--netns", ".."],
    ["drift", "host-a", "--netns", "/run/netns/x"],
    ["drift", "host-a", "--netns", ""]])
def test_netns_option_must_be_a_namespace_name(mappings: Path, argv: list[str],
                                               capsys) -> None:
    assert main(["--mappings", str(mappings), *argv]) == 2
    err = capsys.readouterr().err
    assert "--netns" in err
    assert "is a path" in err or "is not a name" in err or "is empty" in err
    assert "ip netns list" in err


# --- item 9: privileges ------------------------------------------------------------------------
@needs_setpriv
def test_without_capabilities_netmap_names_the_missing_ones(mappings: Path,
                                                            tmp_path: Path) -> None:
    """realize and release name CAP_NET_ADMIN and CAP_SYS_ADMIN, a dry run CAP_SYS_ADMIN
    (it changes nothing); never a traceback, never the lab hint."""
    set_netns(mappings, "host-a", f"{PREFIX}-absent-0")
    common = ["--mappings", str(mappings)]
    env = {"NETMAP_STATE_DIR": str(tmp_path / "state")}
    for command in (["realize", "vm2", "--host", "host-a"],
                    ["release", "vm2", "--host", "host-a"]):
        got = netmap_as(NO_CAPABILITIES, *common, *command, env=env)
        assert got.returncode == 2, got.stderr
        assert "Traceback" not in got.stderr
        assert "CAP_NET_ADMIN" in got.stderr
        assert "CAP_SYS_ADMIN" in got.stderr
        assert "run netmap as root" in got.stderr
        assert "lab" not in got.stderr
    got = netmap_as(NO_CAPABILITIES, *common, "realize", "vm2", "--host", "host-a",
                    "--dry-run", env=env)
    assert got.returncode == 2, got.stderr
    assert "Traceback" not in got.stderr, got.stderr
    assert "CAP_SYS_ADMIN" in got.stderr
    assert "CAP_NET_ADMIN" not in got.stderr
    assert f"enter network namespace {PREFIX}-absent-0" in got.stderr


@needs_setpriv
@needs_netns
def test_without_cap_net_admin_realize_names_it_and_touches_nothing(
        netns_factory, mappings: Path, tmp_path: Path) -> None:
    """Root without CAP_NET_ADMIN may enter the namespace but not change it: said up
    front (exit 2), not as "cannot enter network namespace ... build the lab"."""
    ns = netns_factory(PREFIX)
    subprocess.run(["ip", "-n", ns, "link", "add", "eth1", "type", "veth", "peer", "name",
                    "p1"], check=True)
    set_netns(mappings, "host-a", ns)
    before = [steady_link(link) for link in ip_links(ns)]
    got = netmap_as(WITHOUT_NET_ADMIN, "--mappings", str(mappings), "realize", "vm2",
                    "--host", "host-a", env={"NETMAP_STATE_DIR": str(tmp_path / "state")})
    assert got.returncode == 2, got.stderr
    assert "needs CAP_NET_ADMIN (to create and change interfaces)" in got.stderr
    assert "CAP_SYS_ADMIN" not in got.stderr.split("fix:")[0]  # that one it has
    assert "build the lab" not in got.stderr
    assert "Traceback" not in got.stderr
    assert [steady_link(link) for link in ip_links(ns)] == before
    assert not (tmp_path / "state" / "host-a.json").exists()


def user_namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--user", "--map-root-user", "true"],
                          capture_output=True, check=False).returncode == 0


@needs_netns
def test_entering_a_namespace_without_privilege_is_not_a_missing_namespace(
        netns_factory, mappings: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """All capabilities, but in a user namespace of its own: the lab's namespace (owned by
    the machine's) refuses setns with EPERM. That is named as a privilege (exit 2), not as
    "cannot enter ... build the lab"; a namespace that does not exist keeps the lab hint."""
    if not user_namespaces_work():
        pytest.skip("needs unshare and unprivileged user namespaces")
    ns = netns_factory(PREFIX)
    set_netns(mappings, "host-a", ns)
    env = {**os.environ, "PYTHONPATH": str(REPO), "NETMAP_STATE_DIR": str(tmp_path / "state")}
    for extra in ([], ["--dry-run"]):
        got = subprocess.run(
            ["unshare", "--user", "--map-root-user", sys.executable, "-m", "netmap",
             "--mappings", str(mappings), "realize", "vm2", "--host", "host-a", *extra],
            capture_output=True, text=True, check=False, timeout=120, env=env)
        assert got.returncode == 2, got.stdout + got.stderr
        assert f"may not enter network namespace {ns} of host host-a" in got.stderr
        assert "CAP_SYS_ADMIN" in got.stderr
        assert "build the lab" not in got.stderr
    set_netns(mappings, "host-a", f"{PREFIX}-absent-1")
    monkeypatch.setenv("NETMAP_STATE_DIR", str(tmp_path / "state"))
    assert main(["--mappings", str(mappings), "realize", "vm2", "--host", "host-a"]) == 3
    err = capsys.readouterr().err
    assert f"network namespace {PREFIX}-absent-1 does not exist" in err
    assert "scripts/lab up" in err


def test_capabilities_are_read_from_the_process_status(tmp_path: Path) -> None:
    from netmap.netlink.access import missing_capabilities, require_capabilities

    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000001000\n")  # CAP_NET_ADMIN only
    assert missing_capabilities(None, changes=True, status=status) == []
    assert missing_capabilities("lab", changes=False, status=status) == [
        ("CAP_SYS_ADMIN", "to enter network namespace lab")]
    status.write_text("CapEff:\t0000000000000000\n")
    with pytest.raises(PrivilegeError) as caught:
        require_capabilities("release vm1", "host-a", "lab", changes=True, status=status)
    assert caught.value.problem.startswith(
        "release vm1 on host-a needs CAP_NET_ADMIN (to create and change interfaces) and "
        "CAP_SYS_ADMIN (to enter network namespace lab)")
    assert caught.value.exit_code == 2
    assert "AmbientCapabilities" in (caught.value.fix or "")
    # unreadable: the kernel decides
    assert missing_capabilities("lab", changes=True, status=tmp_path / "absent") == []


# --- item 9: kernel support, probed without changing the host ----------------------------------
CONFIG_WITHOUT_VLAN = ("CONFIG_MODULES=y\nCONFIG_BRIDGE=m\n# CONFIG_VLAN_8021Q is not set\n"
                       "CONFIG_MACVTAP=y\n")
CONFIG_VLAN_MODULE = "CONFIG_MODULES=y\nCONFIG_VLAN_8021Q=m\nCONFIG_BRIDGE_VLAN_FILTERING=y\n"
# Debian's kernel, as far as netmap asks: everything, 802.1Q as module 8021q
CONFIG_DEBIAN = CONFIG_VLAN_MODULE + ("CONFIG_BRIDGE=m\nCONFIG_MACVLAN=m\nCONFIG_MACVTAP=m\n"
                                      "CONFIG_VXLAN=m\nCONFIG_TUN=m\n")


def test_probe_reads_the_kernel_configuration(tmp_path: Path) -> None:
    probe = fake_kernel(tmp_path, config=CONFIG_WITHOUT_VLAN)
    assert probe.lacks("vlan") == "this kernel (6.1.0-test) is built without CONFIG_VLAN_8021Q"
    assert "CONFIG_BRIDGE_VLAN_FILTERING" in (probe.lacks("vlan_filtering") or "")
    assert probe.lacks("macvtap") is None  # =y
    assert probe.lacks("bridge") is None  # =m, no module list to say otherwise
    assert "CONFIG_VLAN_8021Q" in probe.fix("vlan", probe.lacks("vlan") or "")


def test_probe_a_module_the_kernel_can_load_is_support(tmp_path: Path) -> None:
    """=m and listed in modules.dep: RTM_NEWLINK loads it, so it counts."""
    probe = fake_kernel(tmp_path, config=CONFIG_VLAN_MODULE,
                        dep="kernel/net/8021q/8021q.ko.xz: kernel/net/802/garp.ko.xz\n")
    assert probe.lacks("vlan") is None
    assert probe.lacks("vlan_filtering") is None


def test_probe_a_module_not_installed_says_modprobe(tmp_path: Path) -> None:
    probe = fake_kernel(tmp_path, config=CONFIG_VLAN_MODULE,
                        dep="kernel/drivers/net/vxlan/vxlan.ko.xz:\n")
    reason = probe.lacks("vlan") or ""
    assert reason.startswith("module 8021q is neither loaded, built in nor installed")
    assert "modprobe 8021q" in probe.fix("vlan", reason)


def test_probe_without_configuration_reads_the_module_lists(tmp_path: Path) -> None:
    builtin = fake_kernel(tmp_path / "a", builtin="kernel/net/8021q/8021q.ko\n", dep="")
    assert builtin.lacks("vlan") is None
    loadable = fake_kernel(tmp_path / "b", builtin="", dep="kernel/net/8021q/8021q.ko.zst:\n")
    assert loadable.lacks("vlan") is None
    absent = fake_kernel(tmp_path / "c", builtin="kernel/net/bridge/bridge.ko\n", dep="")
    assert "module 8021q" in (absent.lacks("vlan") or "")
    # bridge VLAN filtering depends on 802.1Q in Kconfig: without it, none either
    assert absent.lacks("vlan_filtering") == absent.lacks("vlan")
    assert absent.lacks("bridge") is None


def test_probe_evidence_of_a_loaded_module_wins(tmp_path: Path) -> None:
    """/sys/module/8021q (loaded) or a bridge that shows vlan_filtering in sysfs."""
    probe = fake_kernel(tmp_path, boot_config="# CONFIG_VLAN_8021Q is not set\n",
                        traces=("sys/module/8021q", "sys/class/net/br0/bridge/vlan_filtering"))
    assert probe.lacks("vlan") is None
    assert probe.lacks("vlan_filtering") is None
    assert "CONFIG_VXLAN" in (probe.lacks("vxlan") or "")  # /boot/config-RELEASE is read


def test_probe_knowing_nothing_refuses_nothing(tmp_path: Path) -> None:
    probe = KernelProbe(tmp_path, "6.1.0-test")
    assert [probe.lacks(key) for key in ("vlan", "vlan_filtering", "bridge", "tun")] == [
        None] * 4


def test_what_each_step_needs() -> None:
    vlan = p.EnsureVlanLink("eth0.100", "eth0", 100, 1500)
    bridge = p.EnsureBridge("br0", 1500, vlan_filtering=True)
    assert features_needed(vlan, "create") == ["vlan"]
    assert features_needed(vlan, "unchanged") == []  # it exists: the kernel has 802.1Q
    assert features_needed(bridge, "create") == ["bridge", "vlan_filtering"]
    assert features_needed(bridge, "repair", {"vlan_filtering": True}) == ["vlan_filtering"]
    assert features_needed(bridge, "repair", {"mtu": 9000}) == []
    assert features_needed(p.BridgeVlan("nm0", 100, access=True), "create") == [
        "vlan_filtering"]
    tap = p.CreateTap("nm0", "fe:00:00:00:00:01", "52:54:00:00:00:01", 1500, "br0")
    assert features_needed(tap, "create") == ["tun"]


def test_refusal_names_the_step_the_reason_and_the_fix(tmp_path: Path) -> None:
    probe = fake_kernel(tmp_path, config=CONFIG_WITHOUT_VLAN)
    vlan = p.EnsureVlanLink("eth0.100", "eth0", 100, 9000)
    refuse_unsupported([(vlan, "unchanged", None)], probe, "host-a")  # nothing to create
    with pytest.raises(ApplyError) as caught:
        refuse_unsupported([(p.RequireLink("eth0", 9000), "unchanged", None),
                            (vlan, "create", None)], probe, "host-a")
    err = caught.value
    assert err.problem == (f"step 'create {vlan.describe()}' needs 802.1Q VLAN support, "
                           "which host-a's kernel lacks: this kernel (6.1.0-test) is built "
                           "without CONFIG_VLAN_8021Q")
    assert err.fix
    assert "boot a kernel with CONFIG_VLAN_8021Q" in err.fix


# --- item 9 in the lab: prod (VLAN 100, macvtap-vepa on eth0.100) on this kernel ---------------
@pytest.fixture
def lab_host_a(cli_lab_factory):
    built, root = cli_lab_factory(PREFIX, ["host-a"])
    return built.hosts["host-a"], root


def vm2_plan(root: Path) -> p.Plan:
    fleet = load_fleet(root)
    return build_plan(build_graph(fleet), fleet.guests["vm2"], fleet.hosts["host-a"])


@needs_netns
def test_dry_run_and_realize_refuse_a_vlan_this_kernel_cannot_make(lab_host_a,
                                                                  capsys) -> None:
    from netmap.netlink.apply import realize_plan

    reason = KernelProbe().lacks("vlan")
    if reason is None:
        pytest.skip("this kernel has 802.1Q: the refusal needs one without")
    ns, root = lab_host_a
    before = [steady_link(link) for link in ip_links(ns)]
    assert main(["realize", "vm2", "--host", "host-a", "--dry-run"]) == 3
    err = capsys.readouterr().err
    assert "realize vm2 on host-a would fail" in err
    assert "needs 802.1Q VLAN support" in err
    assert "create 802.1Q eth0.100 on eth0" in err
    assert reason in err
    assert main(["realize", "vm2", "--host", "host-a"]) == 3
    err = capsys.readouterr().err
    assert "needs 802.1Q VLAN support" in err
    assert "nothing was changed" in err
    steps: list[p.Step] = []
    with pytest.raises(ApplyError, match="nothing was changed"):
        realize_plan(vm2_plan(root), on_step=lambda _, step: steps.append(step))
    assert steps == []  # refused before the first step, not rolled back after it
    assert [steady_link(link) for link in ip_links(ns)] == before
    assert not Path(os.environ["NETMAP_STATE_DIR"], "host-a.json").exists()  # not even state


@needs_netns
def test_dry_run_with_a_kernel_that_has_802_1q(lab_host_a, tmp_path: Path) -> None:
    """The probe is injectable: told 8021q is installed, the dry run shows the steps."""
    from netmap.netlink.apply import preview_plan

    ns, root = lab_host_a
    probe = fake_kernel(tmp_path / "kernel", config=CONFIG_DEBIAN,
                        dep="kernel/net/8021q/8021q.ko:\nkernel/drivers/net/macvtap.ko:\n"
                        "kernel/net/bridge/bridge.ko:\nkernel/drivers/net/tun.ko:\n")
    verdicts = [(step.kind, verdict) for _, step, verdict
                in preview_plan(vm2_plan(root), kernel_probe=probe)]
    assert ("vlan-link", "create") in verdicts
    assert ("macvtap", "create") in verdicts
    assert ip_links(ns)
    assert all(link["ifname"] != "eth0.100" for link in ip_links(ns))
