"""Real libvirtd and QEMU on an Open vSwitch network (userspace datapath).

One lab host namespace (prefix nmov) with its own ovsdb-server and ovs-vswitchd
(tests/ovs_lab.py) and its own libvirtd (scripts/libvirt_lab.py: private mount and UTS
namespace; /run there is its own tree, where /run/openvswitch/db.sock leads to this
host's OVSDB, so the ovs-vsctl libvirt runs for <virtualport type='openvswitch'/> finds it).
Two guests share the OVS bridge: g1 on the tap netmap realized (`<interface type='ethernet'>`,
managed='no', the XML realize prints), and lv, plugged by libvirt itself into the bridge
netmap made. Read back with ovs-vsctl, iproute2 and virsh."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from conftest import REPO, guest_toml, links_by_name, write_fleet
from libvirt_marks import LIBVIRT_LAB

from netmap.cli import main
from netmap.state import HostState
from tests.ovs_lab import OvsInstance, missing, ovs_host_toml, start_ovs  # not scripts/ovs_lab

sys.path.insert(0, str(REPO / "scripts"))
import libvirt_lab  # scripts/ is not a package
from libvirt_lab import PrivateLibvirtd

pytestmark = [*LIBVIRT_LAB,
              pytest.mark.skipif(missing() is not None, reason=str(missing()))]
HOST = "hv"
G1_MAC, LV_MAC = "52:54:00:0e:00:01", "52:54:00:0e:00:02"
NETWORKS = '[networks.blue]\nsegment = "fabric"\nvlan = 10\nmtu = 1500\n'


@pytest.fixture
def ovs_libvirt(netns_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                ) -> Iterator[tuple[OvsInstance, PrivateLibvirtd]]:
    problem = libvirt_lab.isolation_problem()
    if problem:
        pytest.skip(problem)
    netns = netns_factory("nmov")
    subprocess.run(["ip", "-n", netns, "-batch", "-"], text=True, check=True,
                   capture_output=True, input="link add eth0 type veth peer name eth0p\n"
                   "link set eth0 up\nlink set eth0p up\n")
    base = Path(tempfile.mkdtemp(prefix="nmov", dir="/tmp"))  # a short socket path
    ovs = start_ovs(netns, base / "ovs")
    root = write_fleet(tmp_path / "mappings", NETWORKS,
                       {HOST: ovs_host_toml(HOST, netns, ovs.remote)},
                       {"g1": guest_toml("g1", HOST, ("blue", G1_MAC))})
    monkeypatch.setenv("NETMAP_MAPPINGS", str(root))
    monkeypatch.setenv("NETMAP_STATE_DIR", str(tmp_path / "state"))
    daemon = PrivateLibvirtd(base / "libvirt", netns, HOST, root)
    # the daemon's /run is this tree: ovs-vsctl's default socket leads to the lab's OVSDB
    (base / "libvirt/run/openvswitch").mkdir(parents=True)
    (base / "libvirt/run/openvswitch/db.sock").symlink_to(ovs.socket)
    try:
        daemon.start(base / "qemucaps")
        yield ovs, daemon
    finally:
        daemon.stop()
        ovs.stop()
        shutil.rmtree(base, ignore_errors=True)


def _start(daemon: PrivateLibvirtd, name: str, interface: str) -> ET.Element:
    """Define and start a guest with this interface; its live <interface>."""
    xml = daemon.root / f"{name}.xml"
    xml.write_text(libvirt_lab.domain_xml(name, interface))
    daemon.virsh("define", str(xml))
    daemon.virsh("start", name)
    (live,) = ET.fromstring(daemon.virsh("dumpxml", name).stdout).findall("devices/interface")
    return live


def _port(ovs: OvsInstance, name: str) -> dict:
    """The port's tag and external_ids, and those of its interface (where libvirt, os-vif
    and OVN keep iface-id and attached-mac)."""
    out = json.loads(ovs.vsctl("--format=json", "--columns=tag,external_ids", "list", "Port",
                               name))
    tag, ids = out["data"][0]
    iface = json.loads(ovs.vsctl("--format=json", "--columns=external_ids", "list",
                                 "Interface", name))
    return {"tag": tag if isinstance(tag, int) else None, "external_ids": dict(ids[1]),
            "interface_ids": dict(iface["data"][0][0][1])}


def test_libvirt_starts_guests_on_netmaps_ovs_ports_and_release_keeps_libvirts(
        ovs_libvirt, capsys) -> None:
    ovs, daemon = ovs_libvirt
    capsys.readouterr()
    assert main(["realize", "g1", "--host", HOST, "--json"]) == 0
    (nic,) = json.loads(capsys.readouterr().out)["nics"]
    tap = nic["device"]
    # the XML realize printed, as an operator pastes it (no option ROM: the lab's QEMU)
    interface = "    " + nic["libvirt_xml"].replace(
        "</interface>", "  <rom enabled='no'/>\n</interface>").replace("\n", "\n    ") + "\n"
    live = _start(daemon, "g1", interface)
    assert live.get("type") == "ethernet"
    assert live.find("target").get("dev") == tap
    assert daemon.virsh("domstate", "g1").stdout.strip() == "running"
    # QEMU holds the tap netmap made: carrier on
    assert "LOWER_UP" in links_by_name(daemon.netns)[tap]["flags"]
    ids = {"attached-mac": G1_MAC, "iface-id": "g1-nic0", "iface-status": "active",
           "vm-id": "g1", "netmap-owner": "g1", "netmap-network": "blue", "tenant": "t1"}
    assert _port(ovs, tap) == {"tag": 10, "external_ids": ids, "interface_ids": ids}

    # lv: libvirt plugs it into the bridge netmap made, with its own external_ids
    live = _start(daemon, "lv", libvirt_lab.interface_xml(
        "bridge", LV_MAC, "bridge='br-ovs'").replace(
        "<model", "<virtualport type='openvswitch'/>\n      <vlan><tag id='10'/></vlan>\n"
        "      <model"))
    vnet = live.find("target").get("dev")
    lv_port = _port(ovs, vnet)
    # where netmap puts the same keys for its own ports
    assert lv_port["tag"] == 10
    assert lv_port["interface_ids"]["attached-mac"] == LV_MAC
    assert lv_port["interface_ids"]["iface-status"] == "active"
    assert "netmap-owner" not in lv_port["external_ids"] | lv_port["interface_ids"]
    assert sorted(ovs.vsctl("list-ports", "br-ovs").split()) == sorted(["eth0", tap, vnet])

    daemon.virsh("destroy", "g1")  # managed='no': the tap stays netmap's to remove
    assert tap in links_by_name(daemon.netns)
    capsys.readouterr()
    assert main(["release", "g1", "--host", HOST]) == 0
    out = capsys.readouterr().out
    assert tap not in links_by_name(daemon.netns)
    # only netmap's port went: lv keeps its port, its tag and ids, and the uplink
    assert sorted(ovs.vsctl("list-ports", "br-ovs").split()) == sorted(["eth0", vnet]), out
    assert _port(ovs, vnet) == lv_port
    assert daemon.virsh("domstate", "lv").stdout.strip() == "running"
    assert "ovs-bridge:br-ovs: OVS bridge still has ports netmap did not add" in out
    # kept for a later release, owned by no guest
    assert sorted(HostState.load(HOST).unowned()) == ["ovs-bridge:br-ovs", "ovs-port:eth0"]
