"""What a realize reads back of OVSDB, and how often release connects to it, against real
Open vSwitch (the lab of test_ovs.py, in namespaces of this file's own prefix). OVSDB is
changed behind netmap's back with ovs-vsctl."""

from __future__ import annotations

from pathlib import Path

import pytest
import test_ovs
from ovs_lab import missing
from test_ovs import OvsLab

from netmap.cli import main
from netmap.load import load_fleet
from netmap.netlink import ovs_steps, ovsdb
from netmap.plan.planner import build_plan
from netmap.query.graph import build_graph

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(missing() is not None, reason=str(missing()))]


@pytest.fixture
def ovs_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    yield from test_ovs.started_lab(tmp_path, monkeypatch, "nmos")


def _read_back(lab: OvsLab, guest: str) -> list[str]:
    """verify's findings for the guest's NIC, from a connection of its own."""
    fleet = load_fleet(lab.root)
    found = fleet.guests[guest]
    plan = build_plan(build_graph(fleet), found, fleet.hosts[str(found.host)])
    nic = plan.nics[0]
    with ovsdb.connected(lab.ovs[str(found.host)].remote, ports={str(nic.device)}) as db:
        return ovs_steps.verify(db, nic)


def test_verify_reads_back_the_tag_and_whether_vswitchd_uses_the_port(ovs_lab: OvsLab,
                                                                       capsys) -> None:
    ovs = ovs_lab.ovs["ha"]
    assert main(["realize", "g1", "--host", "ha"]) == 0, capsys.readouterr()
    tap = ovs_lab.device("g1")
    assert _read_back(ovs_lab, "g1") == []

    ovs.vsctl("set", "Port", tap, "tag=99")
    assert _read_back(ovs_lab, "g1") == [f"NIC 0: OVS port {tap} has tag 99, want 10"]

    # the port made again while ovs-vswitchd is down: it has no OpenFlow port number
    ovs.stop_vswitchd()
    ovs.vsctl("--no-wait", "del-port", "br-ovs", tap, "--", "add-port", "br-ovs", tap,
              "tag=10")
    assert _read_back(ovs_lab, "g1") == [
        f"NIC 0: ovs-vswitchd does not use {tap}: no OpenFlow port"]


def test_release_connects_to_ovsdb_once(ovs_lab: OvsLab, capsys,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A release that may delete the bridge replicates every port from the start (whether
    the bridge holds someone else's); one that only takes ports out, only those."""
    opened: list[set[str] | None] = []
    original = ovsdb.Ovsdb.__init__

    def counted(self, remote, timeout=10.0, ports=None) -> None:
        opened.append(None if ports is None else set(ports))
        original(self, remote, timeout, ports)

    assert main(["realize", "g2", "g3", "--host", "hb"]) == 0, capsys.readouterr()
    g2 = ovs_lab.device("g2")
    monkeypatch.setattr(ovsdb.Ovsdb, "__init__", counted)
    assert main(["release", "g2", "--host", "hb"]) == 0  # g3 keeps the bridge
    assert opened == [{g2}]
    opened.clear()
    assert main(["release", "g3", "--host", "hb"]) == 0  # the bridge goes with it
    assert opened == [None]
    assert ovs_lab.bridges("hb") == {}
