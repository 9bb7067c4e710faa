"""The plan: pure, from small mapping snippets; and the plan/realize commands up to the
point where they would touch a kernel (no root needed)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import needs_net_admin

from netmap.cli import main
from netmap.load import load_fleet
from netmap.model.names import MAX_IFNAME
from netmap.plan import (
    BridgeVlan,
    ClaimVf,
    CreateMacvtap,
    CreateTap,
    EnslavePort,
    EnsureBridge,
    EnsureVlanLink,
    EnsureVxlan,
    RequireLink,
    host_side_mac,
    step_from_dict,
)
from netmap.plan.planner import build_plan
from netmap.query.graph import build_graph
from netmap.rules.check import check_migration

EXTRA_HOST = """[host]
name = "host-x"
netns = "nmA-never-built"

[uplinks.ens3]
segments = ["dc1-fabric"]
mtu = 9000

[uplinks.ens4]
segments = ["dc1-storage"]
mtu = 9000
sriov = { total_vfs = 4 }

[uplinks.ens5]
segments = ["dc1-fabric"]

[networks.prod]
mode = "bridge"
uplink = "ens3"

[networks.storage]
mode = "sriov-vf"
uplink = "ens4"
vf_attach = "macvtap"
spoofchk = false

[networks.tenant-blue]
mode = "vxlan"
uplink = "ens5"
vxlan = { remotes = ["10.0.0.2", "10.0.0.3"], port = 8472 }
"""
TWO_ON_ONE_BRIDGE = """[guest]
name = "twins"
host = "host-x"

[[nics]]
network = "prod"
mac = "52:54:00:00:10:01"

[[nics]]
network = "prod"
mac = "52:54:00:00:10:02"

[[nics]]
network = "storage"
mac = "52:54:00:00:10:03"

[[nics]]
network = "tenant-blue"
mac = "52:54:00:00:10:04"
"""


@pytest.fixture
def fleet_dir(mappings: Path) -> Path:
    (mappings / "hosts" / "host-x.toml").write_text(EXTRA_HOST)
    (mappings / "guests" / "twins.toml").write_text(TWO_ON_ONE_BRIDGE)
    return mappings


def plan_for(root: Path, guest: str, host: str):
    fleet = load_fleet(root)
    return build_plan(build_graph(fleet), fleet.guests[guest], fleet.hosts[host])


def test_bridge_mode_with_vlan_shared_steps_once(fleet_dir: Path) -> None:
    plan = plan_for(fleet_dir, "twins", "host-x")
    assert plan.problems == ()
    steps = [step for _, step in plan.steps]
    bridges = [s for s in steps if isinstance(s, EnsureBridge)]
    prod_bridge = next(b for b in bridges if b.name == "br-ens3")
    assert prod_bridge.vlan_filtering
    assert prod_bridge.mtu == 9000
    assert prod_bridge.ageing == 3000  # 30 s, never 0 (a hub leaks frames: OSSA-2019-004)
    # two NICs on one bridge: the bridge, the uplink's port and its trunk VLAN appear once
    assert sum(isinstance(s, EnslavePort) and s.port == "ens3" for s in steps) == 1
    assert BridgeVlan("ens3", 100) in steps
    taps = [s for s in steps if isinstance(s, CreateTap) and s.bridge == "br-ens3"]
    assert len(taps) == 2
    assert len({t.name for t in taps}) == 2
    for tap in taps:  # each tap is an access port of VLAN 100 only
        assert BridgeVlan(tap.name, 100, access=True) in steps
        assert steps.index(BridgeVlan(tap.name, 100, access=True)) > steps.index(tap)
        assert tap.mac == host_side_mac(tap.guest_mac)
        assert tap.mac.startswith("fe:")
    assert steps.index(RequireLink("ens3", 9000)) < steps.index(prod_bridge)


def test_sriov_vf_as_macvtap_and_vxlan_unicast(fleet_dir: Path) -> None:
    plan = plan_for(fleet_dir, "twins", "host-x")
    storage, blue = plan.nics[2], plan.nics[3]
    claim = next(s for s in storage.steps if isinstance(s, ClaimVf))
    assert (claim.pf, claim.vlan, claim.spoofchk) == ("ens4", 200, False)
    assert claim.macvtap == storage.device
    vx = next(s for s in blue.steps if isinstance(s, EnsureVxlan))
    assert (vx.name, vx.vni, vx.port, vx.remotes, vx.group) == (
        "vx5001", 5001, 8472, ("10.0.0.2", "10.0.0.3"), None)
    assert vx.mtu == 1450
    assert blue.bridge == "brvx5001"
    kinds = [s.kind for s in blue.steps]
    assert kinds == ["require-link", "vxlan", "bridge", "enslave", "tap"]
    assert blue.steps[0] == RequireLink("ens5", 1450 + 50)  # the underlay carries vxlan
    # a VF sends through its PF, whose MTU bounds the VF's: check caps the VF by it too
    assert storage.steps[0] == RequireLink("ens4", 9000)


def test_macvtap_with_vlan_needs_a_sub_interface(mappings: Path) -> None:
    plan = plan_for(mappings, "vm1", "host-a")
    prod = plan.nics[0]
    assert [s.kind for s in prod.steps] == ["require-link", "vlan-link", "macvtap"]
    vlan_link = prod.steps[1]
    assert vlan_link == EnsureVlanLink("eth0.100", "eth0", 100, 9000)
    assert prod.steps[2] == CreateMacvtap(prod.device, "eth0.100", "vepa",
                                          "52:54:00:12:34:56", 9000)


def test_names_are_short_and_the_same_on_every_host(mappings: Path) -> None:
    a, b = plan_for(mappings, "vm2", "host-a"), plan_for(mappings, "vm2", "host-b")
    assert [n.device for n in a.nics] == [n.device for n in b.nics]
    for plan in (a, b):
        for _, step in plan.steps:
            for name in (getattr(step, "name", ""), getattr(step, "port", "")):
                assert len(name.encode()) <= MAX_IFNAME


def test_steps_round_trip_through_json_and_invert(fleet_dir: Path, mappings: Path) -> None:
    for guest, host in (("twins", "host-x"), ("vm1", "host-a"), ("vm3", "host-b")):
        plan = plan_for(fleet_dir, guest, host)
        data = json.loads(json.dumps(plan.as_dict()))
        assert len(data["steps"]) == len(plan.steps)
        for (_, step), shown in zip(plan.steps, data["steps"], strict=True):
            assert step_from_dict(step.as_dict()) == step
            assert shown["do"] == step.describe()
            assert step.describe_undo()
            assert shown["undo"] == step.describe_undo()
    tap = next(s for _, s in plan_for(fleet_dir, "twins", "host-x").steps
               if isinstance(s, CreateTap))
    assert tap.describe_undo() == f"delete tun {tap.name}"


def test_unbound_network_is_a_problem_not_a_silent_skip(mappings: Path, capsys) -> None:
    plan = plan_for(mappings, "vm1", "host-c")
    assert plan.problems == ("NIC 1: host-c has no binding for network storage",)
    assert [n.nic for n in plan.nics] == [0]
    assert main(["plan", "vm1", "--host", "host-c", "--mappings", str(mappings)]) == 1
    assert "cannot plan" in capsys.readouterr().out


def test_plan_command_json(mappings: Path, capsys) -> None:
    assert main(["plan", "vm2", "--host", "host-b", "--mappings", str(mappings),
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["host"] == "host-b"
    assert data["netns"] == "nm-lab-host-b"
    assert [s["kind"] for s in data["steps"]] == [
        "require-link", "vlan-link", "macvtap", "require-link", "bridge", "enslave", "tap"]
    assert data["steps"][4]["undo"] == "delete bridge br-eno3"


def test_realize_refuses_before_touching_anything(mappings: Path, tmp_path: Path,
                                                  monkeypatch, capsys) -> None:
    monkeypatch.setenv("NETMAP_STATE_DIR", str(tmp_path / "state"))
    common = ["--mappings", str(mappings)]
    # check fails (host-c has no storage network): exit 1, no state written
    assert main(["realize", "vm1", "--host", "host-c", *common]) == 1
    assert "NETWORK_UNBOUND" in capsys.readouterr().out
    # --dry-run prints the plan and changes nothing; without the host (here: a namespace
    # that does not exist) it says it could not read it, and has not answered: exit 3, as
    # realize would
    host_file = mappings / "hosts" / "host-b.toml"
    host_file.write_text(host_file.read_text().replace("nm-lab-host-b", "nmA-absent-1"))
    assert main(["realize", "vm2", "--host", "host-b", "--dry-run", "--json", *common]) == 3
    printed = capsys.readouterr()
    shown = json.loads(printed.out)
    assert shown["plan"]["guest"] == "vm2"
    assert shown["verdicts"] is None
    assert "nmA-absent-1" in shown["unreachable"]
    assert "could not read the host" in printed.err
    assert "nmA-absent-1" in printed.err
    assert main(["realize", "vm2", "--host", "host-b", "--dry-run", *common]) == 3
    printed = capsys.readouterr()
    assert "plan for vm2" in printed.out
    assert "nmA-absent-1" in printed.err
    # host-d has no netns: it is another machine than this one
    assert main(["realize", "vm4", "--host", "host-d", *common]) == 2
    err = capsys.readouterr().err
    assert "names another machine than this one" in err
    assert "--as-host" in err
    # told that this machine is host-d, realize gets as far as check (vm4's mgmt is unbound)
    assert main(["realize", "vm4", "--host", "host-d", "--as-host", *common]) == 1
    assert "NETWORK_UNBOUND" in capsys.readouterr().out
    assert not (tmp_path / "state" / "host-b.json").exists()


# --- state and the host lock (pure files, no root) ----------------------------------------
def test_state_counts_users_and_writes_atomically(tmp_path: Path) -> None:
    from netmap.state import HostState

    state = HostState.load("h", tmp_path)
    step = BridgeVlan("eth0", 7).as_dict()
    state.use("vm1", "link:br0", step=step, created=True)
    state.use("vm2", "link:br0", step=step, created=False)
    state.use("vm2", "vf:eno1:52:54:00:00:00:01", step={}, created=True, info={"index": 3})
    state.save()
    assert [p.name for p in tmp_path.iterdir()] == ["h.json"]  # no temporary file left
    again = HostState.load("h", tmp_path)
    assert again.users("link:br0") == ["vm1", "vm2"]
    assert again.owner_of_link("br0")
    assert again.claimed_vfs("eno1") == {3: "52:54:00:00:00:01"}
    assert again.drop("vm1", "link:br0") is None  # vm2 still uses it
    record = again.drop("vm2", "link:br0")
    assert record is not None
    assert record["created"] is True
    assert again.guest("vm2")["resources"] == ["vf:eno1:52:54:00:00:00:01"]


def test_state_from_another_version_is_refused(tmp_path: Path) -> None:
    from netmap.errors import InputError
    from netmap.state import HostState

    (tmp_path / "h.json").write_text('{"version": 99}')
    with pytest.raises(InputError, match="version 99"):
        HostState.load("h", tmp_path)
    (tmp_path / "h.json").write_text("{half")
    with pytest.raises(InputError, match="state file is damaged: the file is not JSON"):
        HostState.load("h", tmp_path)


def test_host_lock_excludes_other_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    from netmap.errors import ApplyError
    from netmap.state import host_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, fcntl, os; fd = os.open(sys.argv[1], os.O_RDWR | "
         "os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
         "sys.stdin.read()", str(tmp_path / "h.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ApplyError, match="another netmap run holds the lock"), \
                host_lock("h", tmp_path, timeout=0.2):
            pass
    finally:
        holder.communicate("")  # the holder exits; the kernel drops its lock
    with host_lock("h", tmp_path, timeout=1) as path:
        assert path == tmp_path / "h.lock"


def test_plan_text_prints_macs_verbatim(mappings: Path, capsys) -> None:
    """rich would turn ':ab:' in 52:54:00:ab:00:01 into an emoji."""
    assert main(["plan", "vm2", "--host", "host-a", "--mappings", str(mappings)]) == 0
    out = capsys.readouterr().out
    assert "52:54:00:ab:00:01" in out
    assert "fe:54:00:ab:00:02" in out
    assert "7. [nic 1] tap " in out


def test_plan_text_shows_each_steps_undo(mappings: Path, capsys) -> None:
    """README: each step with its undo; a step with nothing to undo has no undo line."""
    from netmap.load import load_fleet, require_guest
    from netmap.plan.planner import build_plan
    from netmap.query.graph import build_graph

    assert main(["plan", "vm2", "--host", "host-a", "--mappings", str(mappings)]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    fleet = load_fleet(mappings)
    plan = build_plan(build_graph(fleet), require_guest(fleet, "vm2"), fleet.hosts["host-a"])
    for number, (_, step) in enumerate(plan.steps, 1):
        at = next(k for k, line in enumerate(lines) if line.lstrip().startswith(f"{number}. "))
        undo = step.describe_undo()
        follows = lines[at + 1].strip() if at + 1 < len(lines) else ""
        if undo is None:
            assert not follows.startswith("undo:")
        else:
            assert follows == f"undo: {undo}"
    assert any(line.strip() == "undo: delete bridge br-eth1" for line in lines)


@needs_net_admin
def test_release_without_the_namespace_is_a_clear_error(mappings: Path, tmp_path: Path,
                                                         monkeypatch, capsys) -> None:
    from netmap.state import HostState

    monkeypatch.setenv("NETMAP_STATE_DIR", str(tmp_path))
    host_file = mappings / "hosts" / "host-a.toml"  # a namespace that surely does not exist
    host_file.write_text(host_file.read_text().replace("nm-lab-host-a", "nmA-absent-0"))
    state = HostState.load("host-a")
    state.use("vm2", "link:nm3297253281", step=CreateTap(
        "nm3297253281", "fe:54:00:ab:00:02", "52:54:00:ab:00:02", 1500, "br-eth1").as_dict(),
        created=True)
    state.save()
    assert main(["release", "vm2", "--host", "host-a", "--mappings", str(mappings)]) == 3
    err = capsys.readouterr().err
    assert "network namespace nmA-absent-0" in err
    assert "scripts/lab up" in err
    assert HostState.load("host-a").users("link:nm3297253281") == ["vm2"]  # kept for later


@pytest.mark.parametrize("mode", ["bridge", "vxlan-group", "macvtap-vepa", "sriov-macvtap"])
def test_plan_asks_the_uplink_for_the_guests_mtu_where_the_mapping_gives_less(
        mode: str, tmp_path: Path) -> None:
    """check says MTU_TOO_SMALL (the destination's uplink is one byte short); realize
    --force must then be refused at the uplink, not build endpoints that drop the guest's
    frames: the plan asks for what the guest uses (its source's MTU), as check compares."""
    from agreement import generate, write

    case = next(c for c in generate("dst", modes=(mode,), variants=("mtu-uplink",))
                if "untagged" in c.name)
    fleet = write(case, tmp_path / "mappings")
    graph = build_graph(fleet)
    plan = build_plan(graph, fleet.guests[case.guest], fleet.hosts["dst"])
    overhead = 50 if mode.startswith("vxlan") else 0
    uplink = plan.nics[0].uplink
    assert fleet.hosts["dst"].uplinks[uplink].mtu == 1399 + overhead  # the mapping's
    assert plan.nics[0].steps[0] == RequireLink(uplink, 1400 + overhead)
    assert plan.nics[0].mtu == 1400
    assert all(getattr(s, "mtu", 1400) in (1400, 1400 + overhead) for s in plan.nics[0].steps)


def test_plan_gives_the_guest_its_source_hosts_mtu(tmp_path: Path) -> None:
    """The guest uses what its source gives it (a binding there above the network's MTU):
    the plan on the destination builds that, as check compares with it."""
    from agreement import generate, write

    case = next(c for c in generate("dst", modes=("bridge",), variants=("plain",))
                if "untagged" in c.name)
    files = dict(case.files)
    files["hosts/src.toml"] = files["hosts/src.toml"].replace(
        'uplink = "eth9"\n', 'uplink = "eth9"\nmtu = 4000\n')
    files["hosts/dst.toml"] = files["hosts/dst.toml"].replace("mtu = 1500", "mtu = 9000", 1)
    fleet = write(replace(case, files=files), tmp_path / "mappings")
    graph = build_graph(fleet)
    report = check_migration(graph, "vm", "dst")
    assert [f.code for f in report.errors] == ["MTU_TOO_SMALL"]  # the network says 1500
    plan = build_plan(graph, fleet.guests["vm"], fleet.hosts["dst"])
    assert plan.nics[0].steps[0] == RequireLink("up0", 4000)
    assert {s.mtu for s in plan.nics[0].steps if hasattr(s, "mtu")} == {4000}
