"""What a realize reads back of OVSDB, how often release connects to it, and that the taps
of many NICs are made in one batch, against real Open vSwitch (the lab of test_ovs.py, or a
host of two uplinks; namespaces of this file's own prefix, nmos). OVSDB is changed behind
netmap's back and read with ovs-vsctl."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import test_ovs
from conftest import guest_toml, links_by_name, write_fleet
from ovs_lab import missing, start_ovs
from test_ovs import OvsLab

from netmap.cli import main
from netmap.load import load_fleet
from netmap.netlink import ovs_steps, ovsdb
from netmap.netlink.rtnl import Rtnl
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


@pytest.fixture
def two_uplinks(netns_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Host h: uplinks eth0 and eth1 (veths, up), each the uplink of its own OVS bridge;
    guests a and b with a NIC on each (n0: VLAN 10, n1: untagged). Its own ovsdb-server
    and ovs-vswitchd."""
    netns = netns_factory("nmos")
    for uplink in ("eth0", "eth1"):
        subprocess.run(["ip", "-n", netns, "link", "add", uplink, "type", "veth", "peer",
                        "name", f"{uplink}p"], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", uplink, "up"], check=True)
    directory = Path(tempfile.mkdtemp(prefix="nmos", dir="/tmp"))  # a short socket path
    ovs = start_ovs(netns, directory)
    try:
        host = (f'[host]\nname = "h"\nnetns = "{netns}"\novsdb = "{ovs.remote}"\n'
                '[uplinks.eth0]\nsegments = ["s0"]\n[uplinks.eth1]\nsegments = ["s1"]\n'
                + "".join(f'[networks.{net}]\nmode = "ovs"\nuplink = "{uplink}"\n'
                          f'bridge = "br-{uplink}"\ndatapath_type = "netdev"\n'
                          for net, uplink in (("n0", "eth0"), ("n1", "eth1"))))
        root = write_fleet(tmp_path / "m", '[networks.n0]\nsegment = "s0"\nvlan = 10\n'
                           '[networks.n1]\nsegment = "s1"\n', {"h": host}, {
            guest: guest_toml(guest, "h", ("n0", f"52:54:00:0e:00:{i}0"),
                              ("n1", f"52:54:00:0e:00:{i}1"))
            for i, guest in enumerate(("a", "b"))})
        monkeypatch.setenv("NETMAP_MAPPINGS", str(root))
        monkeypatch.setenv("NETMAP_STATE_DIR", str(tmp_path / "state"))
        yield netns, ovs
    finally:
        ovs.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_the_taps_of_nics_on_two_uplinks_are_made_in_one_batch(two_uplinks, capsys,
                                                               monkeypatch) -> None:
    """The second NIC's uplink, already up, changes nothing: it does not cut the batch of
    taps in two (a second round of tap creation and rtnetlink requests)."""
    netns, ovs = two_uplinks
    batches: list[list[str]] = []
    original = Rtnl.create_taps

    def recorded(self, names, multi_queue=()):
        batches.append(list(names))
        return original(self, names, multi_queue)

    monkeypatch.setattr(Rtnl, "create_taps", recorded)
    assert main(["realize", "--all", "--host", "h"]) == 0, capsys.readouterr()
    assert len(batches) == 1, batches
    assert len(batches[0]) == 4, batches
    taps = set(batches[0])
    assert taps <= set(links_by_name(netns))
    ports = set(ovs.vsctl("list-ports", "br-eth0").split()) | set(
        ovs.vsctl("list-ports", "br-eth1").split())
    assert taps | {"eth0", "eth1"} == ports
    tags = {name: ovs.vsctl("get", "Port", name, "tag") for name in taps}
    assert sorted(tags.values()) == ["10", "10", "[]", "[]"]  # n1's ports: no tag
