"""vxlan bindings: underlay addresses checked at load, IPv6 underlays realized for real,
VTEPs that must agree (VNI, port, group or remotes) in check, realize and drift."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import guest_toml, ip_links, needs_netns
from test_realize import frame, plan_for, run, tap_fd, wait_for

from netmap.cli import main
from netmap.errors import InputError
from netmap.load.parse import load_host, load_networks

PREFIX = "nmhv"
DEFAULT_VXLAN = 'vxlan = { group = "239.1.1.1" }'


def with_vxlan(mappings: Path, host: str, table: str) -> Path:
    """Replace the tenant-blue binding's vxlan table on `host` (host-a or host-b)."""
    path = mappings / "hosts" / f"{host}.toml"
    text = path.read_text()
    assert DEFAULT_VXLAN in text
    path.write_text(text.replace(DEFAULT_VXLAN, table))
    return path


def load_error(mappings: Path, table: str) -> InputError:
    path = with_vxlan(mappings, "host-a", table)
    with pytest.raises(InputError) as caught:
        load_host(path, load_networks(mappings / "networks.toml"))
    return caught.value


# --- load ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("table", "key", "problem"), [
    ('vxlan = { group = "not-an-ip" }', "group", "'not-an-ip' is not an IPv4 or IPv6 address"),
    ('vxlan = { group = "10.0.0.1" }', "group", "10.0.0.1 is not a multicast address"),
    ('vxlan = { group = "fd00::1" }', "group", "fd00::1 is not a multicast address"),
    ('vxlan = { remotes = ["999.1.1.1"] }', "remotes", "'999.1.1.1' is not an IPv4 or IPv6"),
    ('vxlan = { remotes = ["239.1.1.2"] }', "remotes", "239.1.1.2 is a multicast address"),
    ('vxlan = { remotes = ["10.0.0.2", "10.0.0.2"] }', "remotes", "10.0.0.2 is listed twice"),
    ('vxlan = { remotes = ["0.0.0.0"] }', "remotes", "0.0.0.0 is not an address another"),
    ('vxlan = { local = "ff05::100" }', "local", "ff05::100 is a multicast address"),
    ('vxlan = { local = "10.0.0.300" }', "local", "'10.0.0.300' is not an IPv4 or IPv6"),
    ('vxlan = { group = "239.1.1.1", local = "fd00::1" }', "local",
     "mixes IPv4 (group 239.1.1.1) and IPv6 (local fd00::1)"),
    ('vxlan = { remotes = ["10.0.0.2", "fd00::2"] }', "remotes", "mixes IPv4 (remotes 10.0.0.2)"),
    ('vxlan = { group = "ff05::100", remotes = ["fd00::2"] }', "remotes", "not both"),
])
def test_underlay_addresses_are_checked_at_load(mappings: Path, table: str, key: str,
                                                problem: str) -> None:
    err = load_error(mappings, table)
    assert err.key == f"networks.tenant-blue.vxlan.{key}"
    assert err.file is not None
    assert str(err.file).endswith("host-a.toml")
    assert err.line is not None
    assert err.line > 1
    assert problem in err.problem
    assert err.fix


def test_a_bad_group_is_an_input_error_for_check(mappings: Path, capsys) -> None:
    with_vxlan(mappings, "host-a", 'vxlan = { group = "not-an-ip" }')
    assert main(["--mappings", str(mappings), "check", "vm3", "--to", "host-a"]) == 2
    err = capsys.readouterr().err
    assert "host-a.toml" in err
    assert "not-an-ip" in err
    assert "fix:" in err


def test_ipv6_underlays_load_in_canonical_form_and_cost_70_bytes(mappings: Path) -> None:
    networks = load_networks(mappings / "networks.toml")
    path = with_vxlan(mappings, "host-a", 'vxlan = { group = "FF05::0100", local = "FD00::A" }')
    binding = load_host(path, networks).bindings["tenant-blue"]
    assert binding.vxlan is not None
    assert (binding.vxlan.group, binding.vxlan.local) == ("ff05::100", "fd00::a")
    assert binding.vxlan.overhead == 70
    path = with_vxlan(mappings, "host-b", 'vxlan = { remotes = ["fd00::a"] }')
    assert load_host(path, networks).bindings["tenant-blue"].vxlan.overhead == 70  # type: ignore[union-attr]


# --- realize over an IPv6 underlay, for real ---------------------------------------------------
V6 = {"host-a": ("eth0", "fd00:4d48::a"), "host-b": ("eno2", "fd00:4d48::b")}


@pytest.fixture
def vxlab(cli_lab_factory):
    """host-a and host-b as namespaces (IPv4 underlay), guest vxa on host-a's tenant-blue
    and vxb on host-b's."""
    guests = {name: guest_toml(name, host, ("tenant-blue", mac))
              for name, host, mac in (("vxa", "host-a", "52:54:00:4d:00:0a"),
                                      ("vxb", "host-b", "52:54:00:4d:00:0b"))}
    return cli_lab_factory(PREFIX, ["host-a", "host-b"], guests)


@pytest.fixture
def v6lab(vxlab):
    """vxlab with IPv6 addresses on both underlays."""
    built, root = vxlab
    for host, (uplink, address) in V6.items():
        ns = built.hosts[host]
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                        f"net.ipv6.conf.{uplink}.disable_ipv6=0"], check=True)
        run("ip", "-6", "addr", "add", f"{address}/64", "dev", uplink, "nodad", netns=ns)
    return built, root


def frames_pass(built, root: Path, timeout: float = 5.0) -> bool:
    """Broadcast from vxb's tap on host-b reaches vxa's tap on host-a, and a unicast
    answers (True), or one of them is lost (False)."""
    a, b = built.hosts["host-a"], built.hosts["host-b"]
    nic_a, nic_b = plan_for(root, "vxa", "host-a").nics[0], plan_for(root, "vxb", "host-b").nics[0]
    fd_a, fd_b = tap_fd(a, nic_a.device), tap_fd(b, nic_b.device)
    try:
        token = uuid.uuid4().bytes
        out = frame("ff:ff:ff:ff:ff:ff", nic_b.mac, token)
        if not wait_for((fd_a, lambda: os.read(fd_a, 2048)), token,
                        lambda: os.write(fd_b, out), timeout):
            return False
        token = uuid.uuid4().bytes
        back = frame(nic_b.mac, nic_a.mac, token)
        return wait_for((fd_b, lambda: os.read(fd_b, 2048)), token,
                        lambda: os.write(fd_a, back), timeout)
    finally:
        os.close(fd_a)
        os.close(fd_b)


def vxlan_info(netns: str) -> dict:
    return ip_links(netns, "vx5001")[0]["linkinfo"]["info_data"]


@needs_netns
def test_ipv6_multicast_group_underlay_passes_frames(v6lab) -> None:
    built, root = v6lab
    for host in ("host-a", "host-b"):
        with_vxlan(root, host, 'vxlan = { group = "ff05::100" }')
    assert main(["realize", "vxa", "--host", "host-a"]) == 0
    assert main(["realize", "vxb", "--host", "host-b"]) == 0
    info = vxlan_info(built.hosts["host-a"])
    assert info["group6"] == "ff05::100"
    assert info["port"] == 4789
    mtu = ip_links(built.hosts["host-a"], "vx5001")
    assert mtu[0]["mtu"] == 1450  # the network's MTU: underlay 9000 - 70 leaves room
    assert frames_pass(built, root), "frames did not pass over the IPv6 underlay"
    assert main(["release", "vxa", "--host", "host-a"]) == 0
    assert not run("ip", "link", "show", "vx5001", netns=built.hosts["host-a"], check=False)


@needs_netns
def test_ipv6_unicast_remotes_underlay_passes_frames(v6lab) -> None:
    built, root = v6lab
    for host, peer in (("host-a", "host-b"), ("host-b", "host-a")):
        with_vxlan(root, host, f'vxlan = {{ remotes = ["{V6[peer][1]}"] }}')
    assert main(["realize", "vxa", "--host", "host-a"]) == 0
    assert main(["realize", "vxb", "--host", "host-b"]) == 0
    fdb = json.loads(run("bridge", "-j", "fdb", "show", "dev", "vx5001",
                         netns=built.hosts["host-a"]))
    assert {"mac": "00:00:00:00:00:00", "dst": V6["host-b"][1]} in [
        {"mac": e["mac"], "dst": e.get("dst")} for e in fdb]
    assert frames_pass(built, root), "frames did not pass over the IPv6 underlay"


def test_an_ipv6_underlay_leaves_70_bytes_less_for_the_guest(mappings: Path) -> None:
    from netmap.query.graph import effective_mtu

    networks = load_networks(mappings / "networks.toml")
    path = with_vxlan(mappings, "host-b", 'vxlan = { group = "ff05::100" }')
    text = path.read_text()
    path.write_text(text.replace('[uplinks.eno2]\nsegments = ["dc1-fabric"]\nmtu = 9000',
                                 '[uplinks.eno2]\nsegments = ["dc1-fabric"]\nmtu = 1500'))
    host = load_host(path, networks)
    mtu, why = effective_mtu(networks["tenant-blue"], host.bindings["tenant-blue"], host)
    assert (mtu, why) == (1430, "underlay eno2 MTU 1500 - 70 vxlan overhead")


# --- check: VTEPs of one VNI must agree --------------------------------------------------------
def overlay_codes(mappings: Path, table_a: str, table_b: str = DEFAULT_VXLAN) -> dict[str, str]:
    """Finding code -> message for vm3 (tenant-blue, on host-b) checked towards host-a."""
    from netmap.load import load_fleet
    from netmap.query.graph import build_graph
    from netmap.rules.check import check_migration

    with_vxlan(mappings, "host-a", table_a)
    if table_b != DEFAULT_VXLAN:
        with_vxlan(mappings, "host-b", table_b)
    report = check_migration(build_graph(load_fleet(mappings)), "vm3", "host-a")
    return {f.code: f"{f.severity}: {f.message} fix: {f.hint}" for f in report.findings
            if f.code.startswith("VXLAN")}


@pytest.mark.parametrize(("table_a", "table_b"), [
    ('vxlan = { group = "239.1.1.1", port = 4789 }', DEFAULT_VXLAN),
    ('vxlan = { remotes = ["10.0.0.2"] }', 'vxlan = { remotes = ["10.0.0.1"] }'),
])
def test_equal_overlays_are_compatible(mappings: Path, table_a: str, table_b: str) -> None:
    assert overlay_codes(mappings, table_a, table_b) == {}


def test_a_port_mismatch_is_an_error(mappings: Path) -> None:
    codes = overlay_codes(mappings, 'vxlan = { group = "239.1.1.1", port = 8472 }')
    assert set(codes) == {"VXLAN_PORT_MISMATCH"}
    assert codes["VXLAN_PORT_MISMATCH"].startswith("error: NIC 0")
    assert "host-b's VTEP uses UDP port 4789, host-a's 8472" in codes["VXLAN_PORT_MISMATCH"]
    assert "set port = 4789 in [networks.tenant-blue] vxlan in" in codes["VXLAN_PORT_MISMATCH"]


@pytest.mark.parametrize(("table_a", "table_b", "said"), [
    ('vxlan = { group = "239.1.1.2" }', DEFAULT_VXLAN, "multicast group 239.1.1.2"),
    ('vxlan = { remotes = ["10.0.0.2"] }', DEFAULT_VXLAN, "unicast remotes (IPv4) 10.0.0.2"),
    (DEFAULT_VXLAN, 'vxlan = { remotes = ["10.0.0.1"] }', "multicast group 239.1.1.1"),
    ('vxlan = { remotes = ["fd00::2"] }', 'vxlan = { remotes = ["10.0.0.1"] }',
     "unicast remotes (IPv6) fd00::2"),
    ("vxlan = { port = 4789 }", DEFAULT_VXLAN, "no peers"),
])
def test_vteps_that_flood_to_different_peers_are_an_error(mappings: Path, table_a: str,
                                                          table_b: str, said: str) -> None:
    codes = overlay_codes(mappings, table_a, table_b)
    assert set(codes) == {"VXLAN_PEERS_MISMATCH"}
    assert codes["VXLAN_PEERS_MISMATCH"].startswith("error: ")
    assert said in codes["VXLAN_PEERS_MISMATCH"]


def test_the_cli_exits_1_on_a_port_mismatch(mappings: Path, capsys) -> None:
    with_vxlan(mappings, "host-a", 'vxlan = { group = "239.1.1.1", port = 8472 }')
    assert main(["--mappings", str(mappings), "check", "vm3", "--to", "host-a", "--json"]) == 1
    findings = json.loads(capsys.readouterr().out)["findings"]
    assert [f["code"] for f in findings if f["severity"] == "error"] == ["VXLAN_PORT_MISMATCH"]


@needs_netns
def test_vteps_on_different_ports_lose_frames_that_equal_ports_pass(vxlab, capsys) -> None:
    """What VXLAN_PORT_MISMATCH says, built for real: 4789 on host-a, 8472 on host-b."""
    built, root = vxlab
    with_vxlan(root, "host-b", 'vxlan = { group = "239.1.1.1", port = 8472 }')
    assert main(["realize", "vxa", "--host", "host-a"]) == 0
    assert main(["realize", "vxb", "--host", "host-b"]) == 0
    assert vxlan_info(built.hosts["host-b"])["port"] == 8472
    assert not frames_pass(built, root, timeout=1.5)
    assert main(["check", "vxa", "--to", "host-b"]) == 1
    assert "VXLAN_PORT_MISMATCH" in capsys.readouterr().out
    assert main(["release", "vxb", "--host", "host-b"]) == 0
    with_vxlan_port(root, "host-b", 4789)
    assert main(["realize", "vxb", "--host", "host-b"]) == 0
    assert frames_pass(built, root)
    assert main(["check", "vxa", "--to", "host-b"]) == 0


def with_vxlan_port(mappings: Path, host: str, port: int) -> None:
    path = mappings / "hosts" / f"{host}.toml"
    text = path.read_text()
    assert "port = " in text
    path.write_text(re.sub(r"port = \d+", f"port = {port}", text))


# --- drift: a vxlan device on another port, group or source ------------------------------------
@pytest.mark.parametrize(("table", "live", "said"), [
    ('vxlan = { group = "239.1.1.1" }', {"vxlan_port": 8472, "vxlan_group": "239.1.1.1"},
     "uses UDP port 8472, not 4789"),
    ('vxlan = { group = "239.1.1.1", port = 8472 }',
     {"vxlan_port": 4789, "vxlan_group": "239.1.1.1"}, "uses UDP port 4789, not 8472"),
    ('vxlan = { group = "239.1.1.1" }', {"vxlan_port": 4789, "vxlan_group": "239.9.9.9"},
     "floods to group 239.9.9.9, not 239.1.1.1"),
    ('vxlan = { remotes = ["10.250.0.2"] }', {"vxlan_port": 4789, "vxlan_group": "239.1.1.1"},
     "floods to group 239.1.1.1, not to unicast remotes"),
    ('vxlan = { group = "ff05::100" }', {"vxlan_port": 4789}, "joins no group, not ff05::100"),
    ('vxlan = { group = "239.1.1.1", local = "10.250.0.1" }',
     {"vxlan_port": 4789, "vxlan_group": "239.1.1.1", "vxlan_local": "10.250.0.9"},
     "sends from 10.250.0.9, not 10.250.0.1"),
    ('vxlan = { remotes = ["10.250.0.2", "10.250.0.3"] }',
     {"vxlan_port": 4789, "vxlan_remotes": ("10.250.0.2", "10.250.0.4")},
     "floods to remotes 10.250.0.2, 10.250.0.4, not 10.250.0.2, 10.250.0.3"),
])
def test_drift_reports_a_vxlan_on_another_port_group_or_source(tmp_path: Path, table: str,
                                                               live: dict, said: str) -> None:
    from test_drift import HOST, NETWORKS, healthy, host_from, link

    from netmap.rules.drift import drift_findings

    host = host_from(tmp_path, HOST + f'\n[networks.tenant-blue]\nmode = "vxlan"\n'
                                      f'uplink = "eth0"\n{table}\n')
    links = {"brvx5001": link(11, "brvx5001", "bridge"),
             "eth0": link(2, "eth0", mtu=9000, mac="52:54:00:00:00:01",
                          addresses=("10.250.0.1/24", "fd00::1/64"))}
    same = {"vxlan_port": host.bindings["tenant-blue"].vxlan.port,  # type: ignore[union-attr]
            "vxlan_group": host.bindings["tenant-blue"].vxlan.group}  # type: ignore[union-attr]
    same["vxlan_local"] = host.bindings["tenant-blue"].vxlan.local  # type: ignore[union-attr]
    same["vxlan_remotes"] = host.bindings["tenant-blue"].vxlan.remotes  # type: ignore[union-attr]
    as_mapped = dict(links, vx5001=link(10, "vx5001", "vxlan", vni=5001, lower="eth0",
                                        master="brvx5001", **same))
    assert not [f for f in drift_findings(host, healthy(links=as_mapped), networks=NETWORKS)
                if f.severity == "error"]
    drifted = dict(links, vx5001=link(10, "vx5001", "vxlan", vni=5001, lower="eth0",
                                      master="brvx5001", **live))
    found = [f for f in drift_findings(host, healthy(links=drifted), networks=NETWORKS)
             if f.code == "VXLAN_MISMATCH"]
    assert len(found) == 1
    assert found[0].severity == "error"
    assert said in found[0].message


# --- realize and drift against a live vxlan device that differs ---------------------------------
def drift_of(root: Path, tmp_path: Path, capsys) -> tuple[int, list[str]]:
    """`netmap drift host-a`: exit code and the VXLAN_MISMATCH messages."""
    from test_drift import lab_sysfs

    sysfs, dev = lab_sysfs(tmp_path / uuid.uuid4().hex)
    capsys.readouterr()
    code = main(["--mappings", str(root), "drift", "host-a", "--sysfs-root", str(sysfs),
                 "--dev-root", str(dev), "--json"])
    findings = json.loads(capsys.readouterr().out)["findings"]
    return code, [f["message"] for f in findings if f["code"] == "VXLAN_MISMATCH"]


@needs_netns
def test_a_foreign_vxlan_on_another_port_and_group_is_refused_not_adopted(
        vxlab, tmp_path: Path, capsys) -> None:
    built, root = vxlab
    ns = built.hosts["host-a"]
    run("ip", "link", "add", "vx5001", "mtu", "1450", "type", "vxlan", "id", "5001", "dev",
        "eth0", "group", "239.9.9.9", "dstport", "8472", netns=ns)
    run("ip", "link", "set", "vx5001", "up", netns=ns)
    foreign = ip_links(ns, "vx5001")[0]
    capsys.readouterr()
    assert main(["realize", "vxa", "--host", "host-a"]) == 3
    err = capsys.readouterr().err
    assert "vx5001 exists on host-a, not made by netmap, but differs" in err
    assert "port 8472 (want 4789)" in err
    assert "group 239.9.9.9 (want 239.1.1.1)" in err
    assert "ip link del vx5001" in err
    assert ip_links(ns, "vx5001")[0] == foreign  # untouched
    code, mismatches = drift_of(root, tmp_path, capsys)
    assert code == 1
    assert len(mismatches) == 1
    assert "uses UDP port 8472, not 4789" in mismatches[0]
    assert "floods to group 239.9.9.9, not 239.1.1.1" in mismatches[0]

    # the same device as the mapping says is used, never changed, and kept at release
    run("ip", "link", "del", "vx5001", netns=ns)
    run("ip", "link", "add", "vx5001", "mtu", "1450", "type", "vxlan", "id", "5001", "dev",
        "eth0", "group", "239.1.1.1", "dstport", "4789", netns=ns)
    run("ip", "link", "set", "vx5001", "up", netns=ns)
    index = ip_links(ns, "vx5001")[0]["ifindex"]
    assert main(["realize", "vxa", "--host", "host-a", "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)["steps"]
    assert [s["result"] for s in steps if s["step"]["kind"] == "vxlan"] == ["adopt"]
    assert drift_of(root, tmp_path, capsys) == (0, [])
    assert main(["release", "vxa", "--host", "host-a"]) == 0
    assert ip_links(ns, "vx5001")[0]["ifindex"] == index


@needs_netns
def test_netmaps_own_vxlan_left_on_an_old_port_is_drift_and_not_reused(
        vxlab, tmp_path: Path, capsys) -> None:
    _built, root = vxlab
    assert main(["realize", "vxa", "--host", "host-a"]) == 0
    assert drift_of(root, tmp_path, capsys) == (0, [])
    with_vxlan(root, "host-a", 'vxlan = { group = "239.1.1.1", port = 8472 }')
    code, mismatches = drift_of(root, tmp_path, capsys)
    assert code == 1
    assert len(mismatches) == 1
    assert "uses UDP port 4789, not 8472" in mismatches[0]
    assert main(["realize", "vxa", "--host", "host-a"]) == 3
    err = capsys.readouterr().err
    assert ("vx5001 exists on host-a but differs in what cannot be changed in place: port "
            "4789 (want 8472)") in err
    assert "release the guest that uses vx5001" in err


@needs_netns
def test_a_foreign_vxlan_flooding_to_other_remotes_is_refused(vxlab, tmp_path: Path,
                                                              capsys) -> None:
    built, root = vxlab
    ns, peer = built.hosts["host-a"], built.underlay[("host-b", "eno2")]
    with_vxlan(root, "host-a", f'vxlan = {{ remotes = ["{peer}"] }}')
    run("ip", "link", "add", "vx5001", "mtu", "1450", "type", "vxlan", "id", "5001", "dev",
        "eth0", "dstport", "4789", netns=ns)
    run("ip", "link", "set", "vx5001", "up", netns=ns)
    run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx5001", "dst", "10.99.0.1",
        netns=ns)
    capsys.readouterr()
    assert main(["realize", "vxa", "--host", "host-a"]) == 3
    assert f"remotes 10.99.0.1 (want {peer})" in capsys.readouterr().err
    run("bridge", "fdb", "del", "00:00:00:00:00:00", "dev", "vx5001", "dst", "10.99.0.1",
        netns=ns)
    run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx5001", "dst", peer, netns=ns)
    assert main(["realize", "vxa", "--host", "host-a", "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)["steps"]
    assert [s["result"] for s in steps if s["step"]["kind"] == "vxlan"] == ["adopt"]
    assert drift_of(root, tmp_path, capsys) == (0, [])
    run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx5001", "dst", "10.99.0.1",
        netns=ns)
    code, mismatches = drift_of(root, tmp_path, capsys)
    assert code == 1
    assert len(mismatches) == 1
    assert f"floods to remotes 10.99.0.1, {peer}, not {peer}" in mismatches[0]


@needs_netns
def test_netmaps_own_vxlan_with_remotes_is_left_alone_by_a_second_realize(vxlab,
                                                                          capsys) -> None:
    built, root = vxlab
    peer = built.underlay[("host-b", "eno2")]
    with_vxlan(root, "host-a", f'vxlan = {{ remotes = ["{peer}"] }}')
    assert main(["realize", "vxa", "--host", "host-a"]) == 0
    capsys.readouterr()
    assert main(["realize", "vxa", "--host", "host-a"]) == 0
    assert "nothing changed" in capsys.readouterr().out


@needs_netns
def test_an_existing_vxlan_is_used_only_when_it_matches(netns_factory, tmp_path: Path) -> None:
    """realize's vxlan step, which the QEMU helper applies too (it plans realize's steps):
    a vxlan device of the name that differs is refused, named, and left as it was; one
    that matches is used as it is."""
    from netmap.errors import ApplyError
    from netmap.netlink.apply import realize_plan
    from netmap.plan import EnsureVxlan, NicPlan, Plan, RequireLink

    ns = netns_factory(PREFIX)
    run("ip", "link", "add", "und0", "type", "veth", "peer", "name", "und1", netns=ns)
    run("ip", "link", "set", "und0", "up", netns=ns)
    run("ip", "link", "add", "vx5001", "type", "vxlan", "id", "5001", "dev", "und0", "group",
        "239.9.9.9", "dstport", "8472", netns=ns)
    run("ip", "link", "set", "vx5001", "up", netns=ns)
    before = ip_links(ns, "vx5001")[0]

    def plan(port: int, group: str) -> Plan:
        steps = (RequireLink("und0", 1500), EnsureVxlan("vx5001", 5001, "und0", 1450, port,
                                                        group))
        nic = NicPlan(0, "blue", "vxlan", "52:54:00:00:00:01", "virtio", None, "und0", None,
                      1450, steps=steps)
        return Plan("qemu:nmq00000001", "h", ns, (nic,))

    with pytest.raises(ApplyError) as caught:
        realize_plan(plan(4789, "239.1.1.1"), state_dir=tmp_path)
    assert "port 8472 (want 4789)" in caught.value.problem
    assert "group 239.9.9.9 (want 239.1.1.1)" in caught.value.problem
    assert ip_links(ns, "vx5001")[0] == before
    result = realize_plan(plan(8472, "239.9.9.9"), state_dir=tmp_path)
    assert [verdict for _, step, verdict in result.outcomes if step.kind == "vxlan"] == ["adopt"]
    assert ip_links(ns, "vx5001")[0]["ifindex"] == before["ifindex"]


def test_diff_shows_the_vtep_settings_that_differ(mappings: Path, capsys) -> None:
    with_vxlan(mappings, "host-b", 'vxlan = { group = "239.1.1.1", port = 8472 }')
    assert main(["--mappings", str(mappings), "diff", "host-a", "host-b", "--json"]) == 0
    rows = {r["network"]: r for r in json.loads(capsys.readouterr().out)["networks"]}
    blue = rows["tenant-blue"]
    assert blue["differs"] == ["vxlan"]
    assert (blue["host-a"]["vxlan"], blue["host-b"]["vxlan"]) == (
        "port 4789 group 239.1.1.1", "port 8472 group 239.1.1.1")
    assert rows["mgmt"]["host-a"]["vxlan"] is None
    assert main(["--mappings", str(mappings), "diff", "host-a", "host-b"]) == 0
    assert "port 8472" in capsys.readouterr().out


def test_discover_drafts_the_remotes_of_a_vxlan_without_group(tmp_path: Path) -> None:
    from test_draft import NETWORKS, load_draft, nic

    from netmap.model.inventory import Inventory
    from netmap.rules.draft import draft_host

    inv = Inventory("node8", None, (
        nic(9, "eth4", mtu=9000, addresses=("fd00::a/64",)),
        nic(10, "vx5001", "vxlan", vni=5001, lower="eth4", master="brvx5001", vxlan_port=8472,
            vxlan_remotes=("fd00::b", "fd00::c")),
        nic(11, "brvx5001", "bridge"),
    ))
    blue = load_draft(tmp_path, draft_host(inv, networks=NETWORKS, host_name="node8")
                      ).bindings["tenant-blue"]
    assert blue.vxlan is not None
    assert (blue.vxlan.port, blue.vxlan.group, blue.vxlan.remotes) == (
        8472, None, ("fd00::b", "fd00::c"))
