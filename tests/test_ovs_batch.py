"""Several guests realized and released as one transaction (`netmap realize --all`, or
several GUESTs): what a host agent does after a reboot. Against real Open vSwitch (the
ovs_lab fixture of test_ovs.py: private ovsdb-server and ovs-vswitchd, userspace datapath,
namespaces it creates and deletes); OVSDB read back with ovs-vsctl, links with iproute2."""

from __future__ import annotations

import json

import pytest
import test_ovs
from conftest import links_by_name
from ovs_lab import missing
from test_ovs import OvsLab, _ovs_rows

from netmap.cli import main
from netmap.state import REALIZED, HostState

ovs_lab = test_ovs.ovs_lab  # the fixture: two lab hosts, each with its own Open vSwitch
pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(missing() is not None, reason=str(missing()))]


def _next_cfg(lab: OvsLab, host: str) -> int:
    """Open_vSwitch's next_cfg: every transaction netmap (or ovs-vsctl) waits on for
    ovs-vswitchd raises it by one."""
    return int(lab.ovs[host].vsctl("get", "Open_vSwitch", ".", "next_cfg"))


def test_realize_all_is_one_transaction_recorded_per_guest(ovs_lab: OvsLab, capsys) -> None:
    ns = ovs_lab.netns("hb")
    before_links, before_ovs = set(links_by_name(ns)), _ovs_rows(ovs_lab, "hb")
    cfg = _next_cfg(ovs_lab, "hb")
    assert main(["realize", "--all", "--host", "hb"]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "realized g2 on hb" in out
    assert "realized g3 on hb" in out
    assert _next_cfg(ovs_lab, "hb") == cfg + 1  # one OVSDB transaction for both guests
    g2, g3 = ovs_lab.device("g2"), ovs_lab.device("g3")
    ports = ovs_lab.ports("hb")
    assert (ports[g2]["tag"], ports[g3]["tag"], ports["eth0"]["tag"]) == (10, 20, None)
    assert ports[g3]["external_ids"]["vm-id"] == "g3"
    assert ovs_lab.bridges("hb") == {"br-ovs": sorted(["eth0", g2, g3])}
    state = HostState.load("hb")
    assert {name: entry["status"] for name, entry in state.guests.items()} == {
        "g2": REALIZED, "g3": REALIZED}
    # the bridge and the uplink's port are shared: both guests use them
    assert sorted(state.users("ovs-bridge:br-ovs")) == ["g2", "g3"]
    assert state.users(f"ovs-port:{g2}") == ["g2"]
    made = _ovs_rows(ovs_lab, "hb")

    assert main(["realize", "g3", "g2", "--host", "hb"]) == 0  # idempotent, any order
    out = capsys.readouterr().out
    assert "g2 is already realized" in out
    assert "g3 is already realized" in out
    assert _ovs_rows(ovs_lab, "hb") == made

    # one guest alone is still the batch of one: released, the other keeps what it shares
    assert main(["release", "g2", "--host", "hb"]) == 0
    assert ovs_lab.bridges("hb") == {"br-ovs": sorted(["eth0", g3])}
    assert main(["realize", "--all", "--host", "hb"]) == 0
    assert _ovs_rows(ovs_lab, "hb") == made
    capsys.readouterr()

    assert main(["release", "--all", "--host", "hb", "--json"]) == 0
    released = json.loads(capsys.readouterr().out)
    assert {r["guest"] for r in released["guests"]} == {"g2", "g3"}
    removed = {key for r in released["guests"] for key in r["removed"]}
    assert {f"ovs-port:{g2}", f"ovs-port:{g3}", "ovs-bridge:br-ovs"} <= removed
    assert _ovs_rows(ovs_lab, "hb") == before_ovs
    assert set(links_by_name(ns)) - {"ovs-netdev"} == before_links
    assert HostState.load("hb").data == {**HostState.load("hb").data, "resources": {},
                                         "guests": {}}


def test_one_refused_guest_refuses_the_batch_and_changes_nothing(ovs_lab: OvsLab,
                                                                capsys) -> None:
    """A foreign port holds g3's endpoint name: g2, which alone would realize, is not
    realized either (all or nothing), and the refusal names the guest."""
    ovs = ovs_lab.ovs["hb"]
    ovs.vsctl("add-br", "br-ovs", "--", "set", "Bridge", "br-ovs", "datapath_type=netdev")
    g3 = ovs_lab.device("g3")
    ovs.vsctl("add-port", "br-ovs", g3, "--", "set", "Interface", g3, "type=internal")
    ns = ovs_lab.netns("hb")
    before_links, before_ovs = set(links_by_name(ns)), _ovs_rows(ovs_lab, "hb")
    assert main(["realize", "g2", "g3", "--host", "hb"]) == 3
    err = capsys.readouterr().err
    assert "failed: g3: " in err
    assert "nothing was changed" in err
    assert _ovs_rows(ovs_lab, "hb") == before_ovs
    assert set(links_by_name(ns)) == before_links
    assert HostState.load("hb").guests == {}


def test_a_batch_that_fails_midway_is_undone_for_every_guest(ovs_lab: OvsLab, capsys,
                                                             monkeypatch) -> None:
    """ovs-vswitchd down: the OVSDB transaction is committed but never applied; both
    guests' taps and ports are undone, state is as before."""
    from netmap.netlink import ovsdb

    original = ovsdb.Connections.__init__
    monkeypatch.setattr(ovsdb.Connections, "__init__",
                        lambda self, timeout=2.0, ports=None: original(self, timeout, ports))
    ns = ovs_lab.netns("hb")
    before_links, before_ovs = set(links_by_name(ns)), _ovs_rows(ovs_lab, "hb")
    ovs_lab.ovs["hb"].stop_vswitchd()
    assert main(["realize", "--all", "--host", "hb"]) == 3
    err = capsys.readouterr().err
    assert "realize g2, g3 on hb failed" in err
    assert "every change was undone" in err
    assert _ovs_rows(ovs_lab, "hb") == before_ovs
    assert set(links_by_name(ns)) == before_links
    assert HostState.load("hb").guests == {}


def test_a_bridge_kept_for_a_foreign_port_keeps_its_uplink(ovs_lab: OvsLab, capsys) -> None:
    """netmap's bridge stays while a port netmap did not add is on it (a guest libvirt
    plugged in itself): that port still needs the uplink, which stays too, and both go at
    a later release once the foreign port has gone."""
    ovs = ovs_lab.ovs["hb"]
    assert main(["realize", "g2", "--host", "hb"]) == 0
    ovs.vsctl("add-port", "br-ovs", "foreign0", "--", "set", "Interface", "foreign0",
              "type=internal")
    capsys.readouterr()
    assert main(["release", "g2", "--host", "hb"]) == 0
    out = capsys.readouterr().out
    assert ovs_lab.bridges("hb") == {"br-ovs": ["eth0", "foreign0"]}, out
    assert "ovs-port:eth0: the uplink of OVS bridge br-ovs, which stays" in out
    ovs.vsctl("del-port", "br-ovs", "foreign0")
    assert main(["realize", "g3", "--host", "hb"]) == 0
    assert main(["release", "g3", "--host", "hb"]) == 0
    assert ovs_lab.bridges("hb") == {}
    assert HostState.load("hb").data["resources"] == {}


def test_the_interfaces_external_ids_are_repaired(ovs_lab: OvsLab, capsys) -> None:
    """iface-id taken off the Interface (where OVN reads it): realize puts it back."""
    assert main(["realize", "g2", "--host", "hb"]) == 0
    g2 = ovs_lab.device("g2")
    made = ovs_lab.interface_ids("hb", g2)
    assert made["iface-id"] == "g2-nic0"
    ovs_lab.ovs["hb"].vsctl("remove", "Interface", g2, "external_ids", "iface-id")
    capsys.readouterr()
    assert main(["realize", "g2", "--host", "hb"]) == 0
    assert "1 repair" in capsys.readouterr().out
    assert ovs_lab.interface_ids("hb", g2) == made


def test_a_dry_run_of_several_guests_decides_them_together(ovs_lab: OvsLab, capsys) -> None:
    before = _ovs_rows(ovs_lab, "hb")
    capsys.readouterr()
    assert main(["realize", "--all", "--host", "hb", "--dry-run", "--json"]) == 0
    verdicts = json.loads(capsys.readouterr().out)["verdicts"]
    g2, g3 = ovs_lab.device("g2"), ovs_lab.device("g3")
    # the shared bridge and uplink port once, under the first guest; each tap and port
    assert [(v["guest"], v["result"]) for v in verdicts
            if v["do"].startswith(("OVS bridge br-ovs", "OVS port eth0 "))] == [
        ("g2", "create")] * 2
    assert {(v["guest"], v["result"]) for v in verdicts if g3 in v["do"]} == {
        ("g3", "create")}
    assert any(g2 in v["do"] for v in verdicts)
    assert _ovs_rows(ovs_lab, "hb") == before
