"""drift: a mapping (small TOML snippets) against inventories built by hand, against netmap's
real state file, and end to end against a lab host in namespaces (prefix nmB)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import EXAMPLE_MAPPINGS, fake_sriov_pf, needs_netns

from netmap.cli import main
from netmap.load.parse import load_host, load_networks
from netmap.model import names
from netmap.model.fleet import Host
from netmap.model.inventory import Interface, Inventory, SriovPf, VirtualFunctionUse
from netmap.plan import ClaimVf, CreateMacvtap, CreateTap
from netmap.rules.check import ERROR, INFO, WARNING
from netmap.rules.drift import TrackedDevice, drift_findings, drift_report, tracked_from_state
from netmap.state import HostState

NETWORKS = load_networks(EXAMPLE_MAPPINGS / "networks.toml")
ALL_FEATURES = frozenset({"vhost-net", "tun", "macvtap", "vxlan", "bridge", "sriov"})

HOST = """
[host]
name = "h1"
features = ["vhost-net", "tun", "macvtap", "bridge"]

[uplinks.eth0]
segments = ["dc1-fabric"]
mtu = 9000
mac = "52:54:00:00:00:01"

[uplinks.eth1]
segments = ["dc1-fabric"]

[uplinks.eno1]
segments = ["dc1-storage"]
mtu = 9000
sriov = { total_vfs = 4 }

[networks.prod]
mode = "macvtap-vepa"
uplink = "eth0"

[networks.mgmt]
mode = "bridge"
uplink = "eth1"

[networks.storage]
mode = "sriov-vf"
uplink = "eno1"
"""


def host_from(tmp_path: Path, text: str = HOST) -> Host:
    path = tmp_path / "h1.toml"
    path.write_text(text)
    return load_host(path, NETWORKS)


def link(index: int, name: str, kind: str = "physical", mtu: int = 1500, **extra) -> Interface:
    extra.setdefault("admin_up", True)
    extra.setdefault("oper_state", "up")
    extra.setdefault("carrier", True)
    return Interface(index, name, kind, mtu, **extra)


def pool(name: str = "eno1", num: int = 4, used: tuple[int, ...] = ()) -> SriovPf:
    vfs = tuple(VirtualFunctionUse(i, f"0000:3b:02.{i}", None if i in used else f"vf{i}",
                                   "vfio or another non-network driver" if i in used else None)
                for i in range(num))
    return SriovPf(name, 8, num, vfs)


def healthy(**changes) -> Inventory:
    links = {
        "eth0": link(2, "eth0", mtu=9000, mac="52:54:00:00:00:01"),
        "eth1": link(3, "eth1", master="br-eth1"),
        "eno1": link(4, "eno1", mtu=9000),
        "br-eth1": link(5, "br-eth1", "bridge"),
    }
    for name, value in changes.pop("links", {}).items():
        if value is None:
            links.pop(name, None)
        else:
            links[name] = value
    return Inventory("h1", None, tuple(links.values()),
                     changes.pop("sriov", {"eno1": pool()}),
                     changes.pop("features", ALL_FEATURES), **changes)


def codes(findings) -> dict[str, str]:
    return {f.code: f.severity for f in findings}


def test_a_host_as_declared_has_no_drift(tmp_path: Path) -> None:
    report = drift_report(healthy_host := host_from(tmp_path), healthy(), networks=NETWORKS)
    assert not report.drifted, report.findings
    # only the note that the host offers more than it declares
    assert codes(report.findings) == {"FEATURE_UNDECLARED": INFO}
    assert report.uplinks == {name: name for name in healthy_host.uplinks}


def test_uplink_renamed_is_found_by_its_mac(tmp_path: Path) -> None:
    inv = healthy(links={"eth0": None,
                         "enp3s0": link(9, "enp3s0", mtu=9000, mac="02:00:00:00:00:09",
                                        perm_mac="52:54:00:00:00:01")})
    report = drift_report(host_from(tmp_path), inv)
    assert codes(report.findings)["UPLINK_RENAMED"] == ERROR
    assert report.uplinks["eth0"] == "enp3s0"
    assert "MISSING" not in " ".join(codes(report.findings))


def test_uplink_renamed_is_found_by_altname(tmp_path: Path) -> None:
    inv = healthy(links={"eno1": None,
                         "ens1f0": link(9, "ens1f0", mtu=9000, altnames=("eno1",))},
                  sriov={"ens1f0": pool("ens1f0")})
    report = drift_report(host_from(tmp_path), inv)
    assert report.uplinks["eno1"] == "ens1f0"
    assert codes(report.findings) == {"UPLINK_RENAMED": ERROR, "FEATURE_UNDECLARED": INFO}


def test_uplink_renamed_is_found_by_the_bridge_that_still_enslaves_it(tmp_path: Path) -> None:
    inv = healthy(links={"eth1": None, "eth7": link(9, "eth7", master="br-eth1")})
    report = drift_report(host_from(tmp_path), inv)
    assert report.uplinks["eth1"] == "eth7"
    finding = next(f for f in report.findings if f.code == "UPLINK_RENAMED")
    assert "br-eth1 now enslaves eth7" in finding.message


def test_uplink_renamed_is_found_under_netmaps_macvtap(tmp_path: Path) -> None:
    text = HOST.replace('mac = "52:54:00:00:00:01"\n', "")
    tap = names.tap_name("vm1", 0)
    inv = healthy(links={"eth0": None, "eth9": link(9, "eth9", mtu=9000),
                         tap: link(10, tap, "macvtap", lower="eth9", mode="vepa")})
    state = [TrackedDevice(tap, ("vm1",), "macvtap", lower="eth0")]
    report = drift_report(host_from(tmp_path, text), inv, state)
    assert report.uplinks["eth0"] == "eth9"
    assert "UPLINK_RENAMED" in codes(report.findings)


def test_uplink_missing_names_the_interfaces_the_mapping_does_not(tmp_path: Path) -> None:
    inv = healthy(links={"eth1": None, "br-eth1": None, "ens5": link(9, "ens5")})
    finding = next(f for f in drift_findings(host_from(tmp_path), inv)
                   if f.code == "UPLINK_MISSING")
    assert finding.severity == ERROR
    assert "ens5" in finding.message
    assert "mgmt" in finding.message


def test_down_low_mtu_and_enslaved_uplinks(tmp_path: Path) -> None:
    inv = healthy(links={
        "eth0": link(2, "eth0", mtu=1500, mac="52:54:00:00:00:01", master="br-other"),
        "br-other": link(7, "br-other", "bridge"),
        "eno1": link(4, "eno1", mtu=9000, oper_state="lowerlayerdown", carrier=False)})
    found = codes(drift_findings(host_from(tmp_path), inv))
    assert found["UPLINK_MTU_LOW"] == ERROR
    assert found["UPLINK_ENSLAVED"] == ERROR
    assert found["UPLINK_DOWN"] == ERROR


def test_unused_uplink_problems_are_warnings(tmp_path: Path) -> None:
    text = HOST + "\n[uplinks.spare]\nmtu = 9000\n"
    inv = healthy(links={"spare": link(8, "spare", mtu=1500, admin_up=False)})
    found = codes(drift_findings(host_from(tmp_path, text), inv))
    assert found["UPLINK_DOWN"] == WARNING
    assert found["UPLINK_MTU_LOW"] == WARNING


def test_mac_changed_without_a_new_home_is_a_warning(tmp_path: Path) -> None:
    inv = healthy(links={"eth0": link(2, "eth0", mtu=9000, mac="02:11:22:33:44:55")})
    assert codes(drift_findings(host_from(tmp_path), inv))["UPLINK_MAC_CHANGED"] == WARNING


def test_bridge_enslaving_another_uplink_or_none(tmp_path: Path) -> None:
    other = healthy(links={"eth1": link(3, "eth1"), "eth5": link(9, "eth5", master="br-eth1")})
    assert codes(drift_findings(host_from(tmp_path), other))["BRIDGE_WRONG_UPLINK"] == ERROR
    tap = names.tap_name("vm2", 0)
    empty = healthy(links={"eth1": link(3, "eth1"),
                           tap: link(9, tap, "tap", master="br-eth1")})
    assert codes(drift_findings(host_from(tmp_path), empty))["BRIDGE_UPLINK_DETACHED"] == ERROR
    no_guests = healthy(links={"eth1": link(3, "eth1")})
    assert codes(drift_findings(host_from(tmp_path), no_guests))["BRIDGE_UPLINK_DETACHED"] \
        == WARNING


def test_bridge_missing_matters_only_when_netmap_has_taps_on_it(tmp_path: Path) -> None:
    inv = healthy(links={"br-eth1": None, "eth1": link(3, "eth1")})
    assert codes(drift_findings(host_from(tmp_path), inv))["BRIDGE_MISSING"] == INFO
    tap = names.tap_name("vm2", 0)
    inv = healthy(links={"br-eth1": None, "eth1": link(3, "eth1"), tap: link(9, tap, "tap")})
    state = [TrackedDevice(tap, ("vm2",), "tap", bridge="br-eth1")]
    found = codes(drift_findings(host_from(tmp_path), inv, state))
    assert found["BRIDGE_MISSING"] == ERROR
    assert found["ENDPOINT_DETACHED"] == ERROR


def test_bridge_name_taken_by_another_kind_and_low_bridge_mtu(tmp_path: Path) -> None:
    inv = healthy(links={"br-eth1": link(5, "br-eth1", "veth")})
    assert "BRIDGE_NOT_A_BRIDGE" in codes(drift_findings(host_from(tmp_path), inv))
    text = HOST.replace('[uplinks.eth1]\nsegments = ["dc1-fabric"]',
                        '[uplinks.eth1]\nsegments = ["dc1-fabric"]\nmtu = 9000')
    text = text.replace('mode = "macvtap-vepa"\nuplink = "eth0"',
                        'mode = "bridge"\nuplink = "eth1"')
    inv = healthy(links={"eth1": link(3, "eth1", mtu=9000, master="br-eth1"),
                         "br-eth1": link(5, "br-eth1", "bridge", mtu=1500)})
    found = codes(drift_findings(host_from(tmp_path, text), inv, networks=NETWORKS))
    assert found["BRIDGE_MTU_LOW"] == ERROR


def test_vxlan_device_with_another_vni_or_underlay(tmp_path: Path) -> None:
    text = HOST + '\n[networks.tenant-blue]\nmode = "vxlan"\nuplink = "eth0"\n'
    host = host_from(tmp_path, text)
    good = {"vx5001": link(10, "vx5001", "vxlan", vni=5001, lower="eth0", master="brvx5001"),
            "brvx5001": link(11, "brvx5001", "bridge"),
            "eth0": link(2, "eth0", mtu=9000, mac="52:54:00:00:00:01",
                         addresses=("10.250.0.1/24",))}
    assert not drift_report(host, healthy(links=good), networks=NETWORKS).drifted
    wrong = dict(good, vx5001=link(10, "vx5001", "vxlan", vni=7, lower="eth1",
                                   master="brvx5001"))
    finding = next(f for f in drift_findings(host, healthy(links=wrong), networks=NETWORKS)
                   if f.code == "VXLAN_MISMATCH")
    assert "VNI 7" in finding.message
    assert "eth1" in finding.message
    loose = dict(good, vx5001=link(10, "vx5001", "vxlan", vni=5001, lower="eth0"))
    assert "VXLAN_DETACHED" in codes(drift_findings(host, healthy(links=loose),
                                                    networks=NETWORKS))


def test_sriov_pool_missing_smaller_or_held_by_others(tmp_path: Path) -> None:
    host = host_from(tmp_path)
    assert codes(drift_findings(host, healthy(sriov={})))["SRIOV_MISSING"] == ERROR
    smaller = codes(drift_findings(host, healthy(sriov={"eno1": pool(num=2)})))
    assert smaller["VF_POOL_SMALLER"] == ERROR
    held = drift_findings(host, healthy(sriov={"eno1": pool(num=4, used=(0, 2))}))
    finding = next(f for f in held if f.code == "VF_FREE_LOW")
    assert "2 of the 4" in finding.message
    # VFs that netmap itself claimed for guests are not lost capacity
    mine = [TrackedDevice("eno1/vf0", ("vm3",), "vf", pf="eno1", vf=0),
            TrackedDevice("eno1/vf2", ("vm4",), "vf", pf="eno1", vf=2)]
    assert "VF_FREE_LOW" not in codes(
        drift_findings(host, healthy(sriov={"eno1": pool(num=4, used=(0, 2))}), mine))


def test_a_vf_claim_whose_entry_carries_another_mac_is_taken(tmp_path: Path) -> None:
    """libvirt's hostdev network picks a VF by its own count of connections, so it takes a VF
    netmap claimed, binds it to vfio-pci and puts its guest's MAC on the PF's entry
    (tests/vm/test_hostdev_network.py); netmap's claim is then lost, whoever overwrote it.
    An entry with the claim's MAC (any case), a claim realize has not finished, or entries
    not read (None) are no drift."""
    host = host_from(tmp_path)

    def inventory(entry_mac: str | None) -> Inventory:
        vfs = tuple(VirtualFunctionUse(i, f"0000:3b:02.{i}", None if i == 1 else f"vf{i}",
                                       "bound to vfio-pci" if i == 1 else None,
                                       entry_mac=entry_mac if i == 1 else None)
                    for i in range(4))
        return healthy(sriov={"eno1": SriovPf("eno1", 8, 4, vfs)})

    claim = TrackedDevice("eno1/vf1", ("vm3",), "vf", pf="eno1", vf=1, mac="52:54:00:00:00:04")
    for other in ("52:54:00:6d:00:01", "00:00:00:00:00:00"):
        taken = [f for f in drift_findings(host, inventory(other), [claim])
                 if f.code == "VF_CLAIM_TAKEN"]
        assert [f.severity for f in taken] == [ERROR], other
        assert "VF 1 of eno1" in taken[0].message
        assert "vm3" in taken[0].message
        assert other in taken[0].message
        assert "52:54:00:00:00:04" in taken[0].message
        assert "netmap realize vm3" in taken[0].hint
    for quiet, tracked in (("52:54:00:00:00:04", claim), ("52:54:00:00:00:04".upper(), claim),
                           (None, claim),
                           ("52:54:00:6d:00:01", TrackedDevice(
                               "eno1/vf1", ("vm3",), "vf", pf="eno1", vf=1,
                               mac="52:54:00:00:00:04", pending=True))):
        assert "VF_CLAIM_TAKEN" not in codes(drift_findings(host, inventory(quiet), [tracked]))


def test_features_missing_and_undeclared(tmp_path: Path) -> None:
    host = host_from(tmp_path)
    found = codes(drift_findings(host, healthy(features=frozenset({"bridge", "sriov"}))))
    assert found["FEATURE_MISSING"] == ERROR  # vhost-net, tun: device nodes are absent
    only_modules = frozenset({"vhost-net", "tun", "sriov", "bridge"})
    found = drift_findings(host, healthy(features=only_modules))
    macvtap = [f for f in found if f.code == "FEATURE_MISSING"]
    assert len(macvtap) == 1
    assert macvtap[0].severity == WARNING  # may load on first use
    assert "network prod" in macvtap[0].message


def test_state_endpoints_vanished_untracked_or_detached(tmp_path: Path) -> None:
    gone, stray, loose = (names.tap_name("vm1", 0), names.tap_name("vm9", 1),
                          names.tap_name("vm2", 0))
    inv = healthy(links={stray: link(20, stray, "tap"),
                         loose: link(21, loose, "tap")})
    state = [TrackedDevice(gone, ("vm1",), "macvtap", lower="eth0"),
             TrackedDevice(loose, ("vm2",), "tap", bridge="br-eth1"),
             TrackedDevice("eno1/vf3", ("vm3",), "vf", pf="eno1", vf=6)]
    report = drift_report(host_from(tmp_path), inv, state)
    by_code: dict[str, list[str]] = {}
    for finding in report.findings:
        by_code.setdefault(finding.code, []).append(finding.message)
    assert len(by_code["ENDPOINT_VANISHED"]) == 2  # the macvtap, and VF 6 of a 4-VF pool
    assert any(gone in m for m in by_code["ENDPOINT_VANISHED"])
    assert [stray in m for m in by_code["ENDPOINT_UNTRACKED"]] == [True]
    assert loose in by_code["ENDPOINT_DETACHED"][0]


def test_tracked_devices_come_from_netmaps_real_state_file(tmp_path: Path) -> None:
    state = HostState.load("h1", tmp_path)
    tap, mvt = names.tap_name("vm2", 0), names.tap_name("vm1", 0)
    state.use("vm2", f"link:{tap}", created=True,
              step=CreateTap(tap, "fe:00:00:00:00:01", "52:54:00:00:00:02", 1500,
                             "br-eth1").as_dict())
    state.use("vm1", f"link:{mvt}", created=True,
              step=CreateMacvtap(mvt, "eth0", "vepa", "52:54:00:00:00:03", 9000).as_dict())
    state.use("vm2", "link:eth1", created=False, step={"kind": "require-link", "name": "eth1"})
    state.use("vm3", "vf:eno1:52:54:00:00:00:04", created=True, info={"index": 1},
              step=ClaimVf("eno1", "52:54:00:00:00:04", None, True).as_dict())
    state.save()
    tracked = {t.name: t for t in tracked_from_state(HostState.load("h1", tmp_path))}
    assert set(tracked) == {tap, mvt, "eno1/vf1"}  # the uplink is not netmap's
    assert (tracked[tap].role, tracked[tap].bridge) == ("tap", "br-eth1")
    assert (tracked[mvt].role, tracked[mvt].lower) == ("macvtap", "eth0")
    assert (tracked["eno1/vf1"].pf, tracked["eno1/vf1"].vf) == ("eno1", 1)
    assert tracked["eno1/vf1"].mac == "52:54:00:00:00:04"  # what its PF entry must carry
    assert tracked_from_state(HostState.load("nobody", tmp_path)) == []
    assert tracked[tap].pending  # use() records a guest as pending until realize finishes
    state = HostState.load("h1", tmp_path)
    state.set_guest("vm1", "realized")
    pending = {t.name: t.pending for t in tracked_from_state(state)}
    assert pending[tap]
    assert not pending[mvt]
    finding = next(f for f in drift_findings(host_from(tmp_path), healthy(), state)
                   if tap in f.message)
    assert finding.code == "ENDPOINT_VANISHED"
    assert "did not finish" in finding.message


def test_a_vlan_dropped_from_a_bridge_port_netmap_added_it_to(tmp_path: Path) -> None:
    """A VLAN realize added to a vlan-filtering bridge's port (the uplink's trunk VLAN, the
    tap's access VLAN), read back from the real state file; one the port had before
    netmap (created=False) is not netmap's to report."""
    from netmap.plan import BridgeVlan

    state = HostState.load("h1", tmp_path)
    tap = names.tap_name("vm2", 0)
    for port, vid, access, created in (("eth1", 110, False, True), (tap, 110, True, True),
                                       ("eth1", 120, False, False)):
        state.use("vm2", f"vlan:{port}:{vid}", created=created,
                  step=BridgeVlan(port, vid, access).as_dict())
    state.set_guest("vm2", "realized")
    state.save()
    state = HostState.load("h1", tmp_path)
    tracked = [(t.name, t.role, t.vid) for t in tracked_from_state(state)]
    assert tracked == [("eth1", "bridge-vlan", 110), (tap, "bridge-vlan", 110)]
    port = link(9, tap, "tun", master="br-eth1", vlans=(110,))
    carrying = healthy(links={"eth1": link(3, "eth1", master="br-eth1", vlans=(1, 110)),
                              tap: port})
    assert "BRIDGE_VLAN_MISSING" not in codes(drift_findings(host_from(tmp_path), carrying, state))

    dropped = healthy(links={"eth1": link(3, "eth1", master="br-eth1", vlans=(1,)),
                             tap: link(9, tap, "tun", master="br-eth1", vlans=())})
    found = [f for f in drift_findings(host_from(tmp_path), dropped, state)
             if f.code == "BRIDGE_VLAN_MISSING"]
    assert [f.severity for f in found] == [ERROR, ERROR]
    assert "port eth1 of bridge br-eth1" in found[0].message
    assert "VLAN 110" in found[0].message
    assert "bridge vlan add dev eth1 vid 110'" in found[0].hint  # a trunk: tagged
    assert f"bridge vlan add dev {tap} vid 110 pvid untagged" in found[1].hint
    # VLANs not read (an inventory from elsewhere): nothing is claimed either way
    unread = healthy(links={tap: link(9, tap, "tun", master="br-eth1")})
    assert "BRIDGE_VLAN_MISSING" not in codes(drift_findings(host_from(tmp_path), unread, state))


# --- end to end in a lab --------------------------------------------------------------------

def lab_sysfs(root: Path) -> tuple[Path, Path]:
    """A fake /sys with eno1's 8 VFs (as host-a's mapping says) and every module, and a
    fake /dev with vhost-net and tun, so a lab host is healthy unless a test breaks it."""
    sysfs, dev = root / "sys", root / "dev"
    fake_sriov_pf(sysfs, "eno1", [f"eno1v{index}" for index in range(8)])
    for module in ("bridge", "vxlan"):
        (sysfs / "module" / module).mkdir(parents=True)
    (sysfs / "class" / "macvtap").mkdir(parents=True)
    (dev / "net").mkdir(parents=True)
    (dev / "net" / "tun").touch()
    (dev / "vhost-net").touch()
    return sysfs, dev


@needs_netns
def test_drift_command_against_a_lab_host(lab_factory, tmp_path: Path, capsys) -> None:
    lab, mappings = lab_factory("nmB", ["host-a"])
    netns = lab.hosts["host-a"]
    sysfs, dev = lab_sysfs(tmp_path)
    argv = ["--mappings", str(mappings), "drift", "host-a", "--sysfs-root", str(sysfs),
            "--dev-root", str(dev), "--state-dir", str(tmp_path / "state"), "--json"]
    assert main(argv) == 0, capsys.readouterr().out
    clean = json.loads(capsys.readouterr().out)
    assert clean["drift"] is False
    assert clean["netns"] == netns

    def sh(*args: str) -> None:
        subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True)

    sh("link", "set", "eth0", "mtu", "1500")
    sh("link", "set", "eth1", "down")
    sh("link", "add", "br-eth1", "type", "bridge")
    sh("link", "set", "eth0", "master", "br-eth1")
    sh("link", "add", names.tap_name("ghost", 0), "link", "eno1", "type", "macvtap")
    assert main(argv) == 1
    found = {f["code"] for f in json.loads(capsys.readouterr().out)["findings"]}
    assert {"UPLINK_MTU_LOW", "UPLINK_DOWN", "UPLINK_ENSLAVED", "BRIDGE_WRONG_UPLINK",
            "ENDPOINT_UNTRACKED"} <= found

    # a rich view too, and a rename found through the bridge that still enslaves eth0
    sh("link", "set", "eth0", "down")
    sh("link", "set", "eth0", "name", "enp7s0")
    argv.remove("--json")
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "UPLINK_RENAMED" not in out  # eth0's bridge is mgmt's br-eth1, not its own
    assert "UPLINK_MISSING" in out
    assert "enp7s0" in out


def test_drift_of_an_unknown_host_is_bad_input(capsys) -> None:
    assert main(["--mappings", str(EXAMPLE_MAPPINGS), "drift", "host-zz"]) == 2
    assert "unknown host" in capsys.readouterr().err


@pytest.mark.parametrize("severity", [ERROR, WARNING])
def test_report_counts_errors_and_warnings_as_drift(tmp_path: Path, severity: str) -> None:
    text = HOST + "\n[uplinks.spare]\nmtu = 9000\n"
    inv = healthy(links={"spare": link(8, "spare", mtu=9000, admin_up=False)})
    if severity == ERROR:
        inv = healthy(links={"eth0": None})
    assert drift_report(host_from(tmp_path, text), inv).drifted


def test_foreign_macvlans_block_a_bridge_or_passthrough_uplink(tmp_path: Path) -> None:
    mine = names.tap_name("vm1", 0)
    inv = healthy(links={"eth1": link(3, "eth1"), "br-eth1": None,
                         "mv-dock": link(9, "mv-dock", "macvlan", lower="eth1", mode="bridge"),
                         mine: link(10, mine, "macvtap", lower="eth0", mode="vepa")})
    state = [TrackedDevice(mine, ("vm1",), "macvtap", lower="eth0")]
    found = drift_findings(host_from(tmp_path), inv, state)
    busy = [f for f in found if f.code == "UPLINK_BUSY"]
    assert len(busy) == 1
    assert "mv-dock" in busy[0].message
    assert "mgmt" in busy[0].message
    # netmap's own macvtap on eth0 (prod, vepa) is what the mapping asks for: no finding
    assert not any(mine in f.message for f in found)


def test_vxlan_underlay_needs_an_address_and_the_declared_local_one(tmp_path: Path) -> None:
    text = HOST + ('\n[networks.tenant-blue]\nmode = "vxlan"\nuplink = "eth0"\n'
                   'vxlan = { local = "10.250.0.1", group = "239.1.1.1" }\n')
    host = host_from(tmp_path, text)
    bare = healthy()
    assert codes(drift_findings(host, bare, networks=NETWORKS))[
        "VXLAN_NO_UNDERLAY_ADDRESS"] == ERROR
    other = healthy(links={"eth0": link(2, "eth0", mtu=9000, mac="52:54:00:00:00:01",
                                        addresses=("10.250.0.7/24",))})
    finding = next(f for f in drift_findings(host, other, networks=NETWORKS)
                   if f.code == "VXLAN_LOCAL_MISSING")
    assert "10.250.0.1" in finding.message
    assert "10.250.0.7/24" in finding.message
    right = healthy(links={"eth0": link(2, "eth0", mtu=9000, mac="52:54:00:00:00:01",
                                        addresses=("10.250.0.1/24",))})
    assert not drift_report(host, right, networks=NETWORKS).drifted


@needs_netns
def test_drift_of_this_host_by_netmap_host(lab_factory, tmp_path: Path, capsys,
                                           monkeypatch) -> None:
    lab, mappings = lab_factory("nmB", ["host-b"])
    sysfs, dev = lab_sysfs(tmp_path)
    monkeypatch.setenv("NETMAP_HOST", "host-b")
    argv = ["--mappings", str(mappings), "drift", "--sysfs-root", str(sysfs),
            "--dev-root", str(dev), "--state-dir", str(tmp_path / "state"), "--json"]
    assert main(argv) == 1  # host-b's PF is ens1f0, the fake tree only has eno1
    report = json.loads(capsys.readouterr().out)
    assert report["host"] == "host-b"
    assert report["netns"] == lab.hosts["host-b"]
    assert [f["code"] for f in report["findings"] if f["severity"] == ERROR] == [
        "SRIOV_MISSING"]


@needs_netns
def test_drift_follows_what_realize_recorded(lab_factory, tmp_path: Path) -> None:
    """A guest realized by netmap's own apply: no drift; its tap deleted behind netmap's
    back: ENDPOINT_VANISHED; a stray endpoint-named tap: ENDPOINT_UNTRACKED."""
    from netmap.commands.discover import live_drift
    from netmap.load import load_fleet
    from netmap.netlink.apply import realize_plan
    from netmap.plan.planner import build_plan
    from netmap.query.graph import build_graph

    lab, mappings = lab_factory("nmB", ["host-a"])
    (mappings / "guests" / "vmd.toml").write_text(
        '[guest]\nname = "vmd"\nhost = "host-a"\n\n'
        '[[nics]]\nnetwork = "mgmt"\nmac = "52:54:00:dd:00:01"\n')
    fleet = load_fleet(mappings)
    host = fleet.hosts["host-a"]
    sysfs, dev = lab_sysfs(tmp_path)
    state_dir = tmp_path / "state"
    realize_plan(build_plan(build_graph(fleet), fleet.guests["vmd"], host), state_dir=state_dir)

    def findings() -> dict[str, str]:
        report = live_drift(host, fleet.networks, state_dir=str(state_dir),
                            sysfs_root=str(sysfs), dev_root=str(dev))
        return {f.code: f.message for f in report.findings}

    assert findings() == {}  # bridge br-eth1 with eth1, the tap in it, all in state
    tap = names.tap_name("vmd", 0)
    netns = lab.hosts["host-a"]
    subprocess.run(["ip", "-n", netns, "link", "del", tap], check=True)
    subprocess.run(["ip", "-n", netns, "tuntap", "add", names.tap_name("stray", 0),
                    "mode", "tap"], check=True)
    found = findings()
    assert tap in found["ENDPOINT_VANISHED"]
    assert "vmd" in found["ENDPOINT_VANISHED"]
    assert names.tap_name("stray", 0) in found["ENDPOINT_UNTRACKED"]


def test_a_renamed_nic_is_told_from_the_bond_that_borrowed_its_mac(tmp_path: Path) -> None:
    borrowed = "52:54:00:00:00:01"
    inv = healthy(links={"eth0": None,
                         "bond0": link(8, "bond0", "bond", mtu=9000, mac=borrowed),
                         "enp3s0": link(9, "enp3s0", mtu=9000, mac=borrowed,
                                        perm_mac=borrowed, master="bond0")})
    report = drift_report(host_from(tmp_path), inv)
    assert report.uplinks["eth0"] == "enp3s0"
    assert "UPLINK_ENSLAVED" in codes(report.findings)  # and it is a bond's slave now
