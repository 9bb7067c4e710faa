"""The ovs mode against real Open vSwitch: each test starts a private ovsdb-server and
ovs-vswitchd per lab host (tests/ovs_lab.py, userspace datapath), in namespaces it creates
and deletes (prefix ov). OVSDB is read back with ovs-vsctl, the kernel with iproute2:
netmap's own readers are not the judge."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import guest_toml, links_by_name, write_fleet
from frames import frame, wait_for
from ovs_lab import OvsInstance, missing, ovs_host_toml, start_ovs
from test_realize import tap_fd

from netmap.cli import main
from netmap.lab import build_lab, teardown_lab
from netmap.load import load_fleet
from netmap.plan.planner import build_plan
from netmap.query.graph import build_graph
from netmap.state import HostState

PREFIX = "ov"
NETWORKS = """
[networks.blue]
segment = "fabric"
vlan = 10
mtu = 1500

[networks.green]
segment = "fabric"
vlan = 20
mtu = 1500
"""
MACS = {"g1": "52:54:00:0f:00:01", "g2": "52:54:00:0f:00:02", "g3": "52:54:00:0f:00:03"}
GUESTS = {"g1": guest_toml("g1", "ha", ("blue", MACS["g1"])),
          "g2": guest_toml("g2", "hb", ("blue", MACS["g2"])),
          "g3": guest_toml("g3", "hb", ("green", MACS["g3"]))}

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(missing() is not None, reason=str(missing()))]


# green shares blue's bridge, without external_ids
GREEN_BINDING = """
[networks.green]
mode = "ovs"
uplink = "eth0"
bridge = "br-ovs"
datapath_type = "netdev"
"""


class OvsLab:
    def __init__(self, root: Path, lab, ovs: dict[str, OvsInstance]) -> None:
        self.root, self.lab, self.ovs = root, lab, ovs

    def netns(self, host: str) -> str:
        return self.lab.hosts[host]

    def device(self, guest: str) -> str:
        fleet = load_fleet(self.root)
        found = fleet.guests[guest]
        plan = build_plan(build_graph(fleet), found, fleet.hosts[str(found.host)])
        return str(plan.nics[0].device)

    def ports(self, host: str) -> dict[str, dict]:
        """Every OVS port with its tag and external_ids, as ovs-vsctl reports them."""
        out = json.loads(self.ovs[host].vsctl("--format=json", "--columns=name,tag,"
                                              "external_ids", "list", "Port"))
        ports = {}
        for name, tag, ids in out["data"]:
            ports[name] = {"tag": tag if isinstance(tag, int) else None,
                           "external_ids": dict(ids[1])}
        return ports

    def interface_ids(self, host: str, name: str) -> dict[str, str]:
        """The external_ids of Interface `name`, where OVN looks up iface-id."""
        out = json.loads(self.ovs[host].vsctl("--format=json", "--columns=external_ids",
                                              "list", "Interface", name))
        return dict(out["data"][0][0][1])

    def bridges(self, host: str) -> dict[str, list[str]]:
        ovs = self.ovs[host]
        return {br: sorted(ovs.vsctl("list-ports", br).split())
                for br in ovs.vsctl("list-br").split()}


@pytest.fixture
def ovs_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    yield from started_lab(tmp_path, monkeypatch, PREFIX)


def started_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, netns_prefix: str):
    """The lab of ovs_lab, its namespaces named from `netns_prefix` (each test file its
    own, so that parallel runs never collide)."""
    prefix = f"{netns_prefix}{os.getpid() % 10000}{uuid.uuid4().hex[:3]}"
    # short: a unix socket's path has at most 107 bytes
    base = Path(tempfile.mkdtemp(prefix="ov", dir="/tmp"))
    hosts = {name: (f"{prefix}-{name}", base / name) for name in ("ha", "hb")}
    root = write_fleet(tmp_path / "mappings", NETWORKS, {
        name: ovs_host_toml(name, netns, f"unix:{directory / 'db.sock'}") + GREEN_BINDING
        for name, (netns, directory) in hosts.items()}, GUESTS)
    monkeypatch.setenv("NETMAP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("NETMAP_MAPPINGS", str(root))
    lab = build_lab(load_fleet(root), prefix)
    started: dict[str, OvsInstance] = {}
    try:
        for name, (netns, directory) in hosts.items():
            started[name] = start_ovs(netns, directory)
        yield OvsLab(root, lab, started)
    finally:
        for instance in started.values():
            instance.stop()
        teardown_lab(lab)
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def _receives(lab: OvsLab, sender: str, receiver: str, timeout: float = 5.0) -> bool:
    """Whether a broadcast the sender's guest writes into its tap reaches the receiver's
    tap (both opened as QEMU opens them)."""
    fleet = load_fleet(lab.root)
    send_host, recv_host = fleet.guests[sender].host, fleet.guests[receiver].host
    out_fd = tap_fd(lab.netns(str(send_host)), lab.device(sender))
    in_fd = tap_fd(lab.netns(str(recv_host)), lab.device(receiver))
    try:
        token = uuid.uuid4().bytes
        data = frame("ff:ff:ff:ff:ff:ff", MACS[sender], token)
        return wait_for((in_fd, lambda: os.read(in_fd, 2048)), token,
                        lambda: os.write(out_fd, data), timeout)
    finally:
        os.close(out_fd)
        os.close(in_fd)


def test_frames_pass_between_hosts_with_the_same_tag_only(ovs_lab: OvsLab, capsys) -> None:
    for guest, host in (("g1", "ha"), ("g2", "hb"), ("g3", "hb")):
        assert main(["realize", guest, "--host", host]) == 0, capsys.readouterr()
    ports = ovs_lab.ports("hb")
    g2, g3 = ovs_lab.device("g2"), ovs_lab.device("g3")
    assert ports[g2]["tag"] == 10
    assert ports[g3]["tag"] == 20
    assert ports["eth0"]["tag"] is None  # the uplink is a trunk
    assert ports[g2]["external_ids"] == {
        "attached-mac": MACS["g2"], "iface-id": "g2-nic0", "iface-status": "active",
        "vm-id": "g2", "netmap-owner": "g2", "netmap-network": "blue",
        "tenant": "t1"}
    # where ovn-controller binds a logical port (and os-vif and libvirt set them)
    assert ovs_lab.interface_ids("hb", g2) == ports[g2]["external_ids"]
    assert ovs_lab.bridges("hb") == {"br-ovs": sorted(["eth0", g2, g3])}
    assert ovs_lab.ovs["hb"].vsctl("get", "Bridge", "br-ovs", "datapath_type") == "netdev"
    assert _receives(ovs_lab, "g1", "g2"), "g1 -> g2 (both tag 10) never arrived"
    assert _receives(ovs_lab, "g2", "g1"), "g2 -> g1 (both tag 10) never arrived"
    assert not _receives(ovs_lab, "g1", "g3", timeout=1.5), "tag 10 leaked to tag 20"
    assert not _receives(ovs_lab, "g3", "g1", timeout=1.5), "tag 20 leaked to tag 10"


def _ovs_rows(lab: OvsLab, host: str) -> dict[str, object]:
    """OVSDB's bridges, ports and interfaces by name, as ovs-vsctl lists them (no UUIDs)."""
    rows: dict[str, object] = {}
    for table, columns in (("Bridge", "name,datapath_type,external_ids"),
                           ("Port", "name,tag,trunks,external_ids"),
                           ("Interface", "name,type,external_ids")):
        out = json.loads(lab.ovs[host].vsctl("--format=json", f"--columns={columns}",
                                             "list", table))
        rows[table] = sorted(json.dumps(row, sort_keys=True) for row in out["data"])
    return rows


def test_realize_twice_changes_nothing_and_release_restores(ovs_lab: OvsLab, capsys) -> None:
    ns = ovs_lab.netns("hb")
    before_links, before_ovs = set(links_by_name(ns)), _ovs_rows(ovs_lab, "hb")
    assert main(["realize", "g2", "--host", "hb"]) == 0
    assert main(["realize", "g3", "--host", "hb"]) == 0
    made = _ovs_rows(ovs_lab, "hb")
    capsys.readouterr()
    assert main(["realize", "g2", "--host", "hb"]) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert _ovs_rows(ovs_lab, "hb") == made
    assert main(["release", "g2", "--host", "hb"]) == 0
    # g3 still uses the bridge and the uplink's port
    assert ovs_lab.bridges("hb") == {"br-ovs": sorted(["eth0", ovs_lab.device("g3")])}
    assert ovs_lab.device("g2") not in links_by_name(ns)
    assert main(["release", "g3", "--host", "hb"]) == 0
    assert _ovs_rows(ovs_lab, "hb") == before_ovs
    assert ovs_lab.bridges("hb") == {}
    # ovs-vswitchd removes the bridge's own device once OVSDB drops the bridge
    assert set(links_by_name(ns)) - {"ovs-netdev"} == before_links
    assert HostState.load("hb").data["resources"] == {}


def test_an_existing_bridge_and_foreign_ports_are_left_alone(ovs_lab: OvsLab, capsys) -> None:
    ovs = ovs_lab.ovs["hb"]
    ns = ovs_lab.netns("hb")
    ovs.vsctl("add-br", "br-ovs", "--", "set", "Bridge", "br-ovs", "datapath_type=netdev")
    ovs.vsctl("add-port", "br-ovs", "foreign0", "--", "set", "Interface", "foreign0",
              "type=internal")
    before = _ovs_rows(ovs_lab, "hb")
    assert main(["realize", "g2", "--host", "hb"]) == 0
    assert ovs_lab.bridges("hb") == {"br-ovs": sorted(["eth0", "foreign0",
                                                       ovs_lab.device("g2")])}
    assert main(["release", "g2", "--host", "hb"]) == 0
    assert _ovs_rows(ovs_lab, "hb") == before
    # a foreign port that holds the name of a guest's tap is refused, not taken over
    tap = ovs_lab.device("g3")
    ovs.vsctl("add-port", "br-ovs", tap, "--", "set", "Interface", tap, "type=internal")
    before = _ovs_rows(ovs_lab, "hb")
    links = set(links_by_name(ns))
    capsys.readouterr()
    assert main(["realize", "g3", "--host", "hb"]) == 3
    err = capsys.readouterr().err
    assert "netmap did not" in err
    assert tap in err
    assert _ovs_rows(ovs_lab, "hb") == before
    assert set(links_by_name(ns)) == links


def test_realize_fails_and_rolls_back_when_vswitchd_is_down(ovs_lab: OvsLab, capsys,
                                                             monkeypatch) -> None:
    from netmap.netlink import ovsdb

    ns = ovs_lab.netns("ha")
    ovs_lab.ovs["ha"].stop_vswitchd()
    before_links, before_ovs = set(links_by_name(ns)), _ovs_rows(ovs_lab, "ha")
    original = ovsdb.Connections.__init__
    monkeypatch.setattr(ovsdb.Connections, "__init__",
                        lambda self, timeout=2.0, ports=None: original(self, timeout, ports))
    assert main(["realize", "g1", "--host", "ha"]) == 3
    err = capsys.readouterr().err
    assert "ovs-vswitchd" in err
    assert "every change was undone" in err
    assert _ovs_rows(ovs_lab, "ha") == before_ovs
    assert set(links_by_name(ns)) == before_links
    assert HostState.load("ha").data["resources"] == {}


def test_a_failure_at_every_step_leaves_kernel_and_ovsdb_as_before(ovs_lab: OvsLab,
                                                                   tmp_path: Path) -> None:
    from netmap.errors import ApplyError
    from netmap.netlink.apply import realize_plan

    fleet = load_fleet(ovs_lab.root)
    plan = build_plan(build_graph(fleet), fleet.guests["g1"], fleet.hosts["ha"])
    ns = ovs_lab.netns("ha")
    before_links, before_ovs = set(links_by_name(ns)), _ovs_rows(ovs_lab, "ha")
    steps = len(plan.steps)
    assert steps == 5  # uplink up, OVS bridge, uplink port, tap, tap's port
    for failing in range(steps):
        def hook(position: int, _step, failing=failing) -> None:
            if position == failing:
                raise OSError(5, "injected")

        with pytest.raises(ApplyError, match="every change was undone"):
            realize_plan(plan, state_dir=tmp_path / "state", on_step=hook)
        assert _ovs_rows(ovs_lab, "ha") == before_ovs, failing
        assert set(links_by_name(ns)) == before_links, failing
    realize_plan(plan, state_dir=tmp_path / "state")
    assert ovs_lab.device("g1") in ovs_lab.bridges("ha")["br-ovs"]


def _drift_codes(host: str, capsys) -> tuple[int, dict[str, str]]:
    capsys.readouterr()
    code = main(["drift", host, "--json"])
    findings = json.loads(capsys.readouterr().out)["findings"]
    return code, {f["code"]: f["message"] for f in findings}


def test_drift_reads_ovsdb_and_names_each_kind_of_drift(ovs_lab: OvsLab, capsys) -> None:
    ovs = ovs_lab.ovs["hb"]
    assert main(["realize", "g2", "--host", "hb"]) == 0
    assert main(["realize", "g3", "--host", "hb"]) == 0
    code, found = _drift_codes("hb", capsys)
    assert not any(c.startswith("OVS") for c in found), found
    assert code == 0, found
    g2, g3 = ovs_lab.device("g2"), ovs_lab.device("g3")
    ovs.vsctl("set", "Port", g2, "tag=99")
    code, found = _drift_codes("hb", capsys)
    assert code == 1
    assert g2 in found["OVS_PORT_WRONG_TAG"]
    assert "99" in found[
        "OVS_PORT_WRONG_TAG"]
    assert main(["realize", "g2", "--host", "hb"]) == 0  # repaired: its tag set back
    assert ovs_lab.ports("hb")[g2]["tag"] == 10
    ovs.vsctl("add-br", "br-x", "--", "set", "Bridge", "br-x", "datapath_type=netdev")
    ovs.vsctl("del-port", "br-ovs", g3, "--", "add-port", "br-x", g3, "--", "set", "Port",
              g3, "tag=20", "external_ids:netmap-owner=g3", "external_ids:netmap-network=green")
    ovs.vsctl("del-port", "br-ovs", "eth0")
    code, found = _drift_codes("hb", capsys)
    assert code == 1
    assert "br-x" in found["OVS_PORT_WRONG_BRIDGE"]
    assert "eth0" in found["OVS_UPLINK_MISSING"]
    ovs.vsctl("del-br", "br-ovs")
    code, found = _drift_codes("hb", capsys)
    assert "br-ovs" in found["OVS_BRIDGE_MISSING"]
    ovs.stop_vswitchd()
    code, found = _drift_codes("hb", capsys)
    assert code == 1
    assert "OVS_VSWITCHD_DOWN" in found
    ovs.start_vswitchd()
    code, found = _drift_codes("hb", capsys)
    assert "OVS_VSWITCHD_DOWN" not in found


def test_discover_write_drafts_the_ovs_bindings(ovs_lab: OvsLab, capsys,
                                                tmp_path: Path) -> None:
    assert main(["realize", "g2", "--host", "hb"]) == 0
    ovs = ovs_lab.ovs["hb"]
    capsys.readouterr()
    draft = tmp_path / "draft" / "hb.toml"
    assert main(["discover", "--netns", ovs_lab.netns("hb"), "--ovsdb", ovs.remote,
                 "--host", "hb", "--write", str(draft)]) == 0
    text = draft.read_text()
    assert 'mode = "ovs"' in text, text
    assert 'bridge = "br-ovs"' in text, text
    assert f'ovsdb = "{ovs.remote}"' in text
    # the draft loads, and binds blue (netmap's port names it) to eth0 on br-ovs
    from netmap.load.parse import load_host, load_networks

    host = load_host(draft, load_networks(ovs_lab.root / "networks.toml"))
    binding = host.bindings["blue"]
    assert (binding.mode, binding.uplink, binding.bridge) == ("ovs", "eth0", "br-ovs")
    capsys.readouterr()
    assert main(["discover", "--netns", ovs_lab.netns("hb"), "--ovsdb", ovs.remote,
                 "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["ovs"]
    assert found["vswitchd_running"] is True
    ports = {p["name"]: p for b in found["bridges"] for p in b["ports"]}
    assert ports[ovs_lab.device("g2")]["tag"] == 10
    assert ports["eth0"]["tag"] is None


def test_the_qemu_helper_serves_an_ovs_network(ovs_lab: OvsLab, tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from test_qemu_helper import FAKE_QEMU, HELPER

    from netmap.model.names import tap_name

    acl = tmp_path / "qemu-helper.conf"
    acl.write_text("allow blue\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "NETMAP_MAPPINGS": str(ovs_lab.root), "NETMAP_HOST": "ha",
           "NETMAP_QEMU_ACL": str(acl), "NETMAP_STATE_DIR": str(tmp_path / "state")}
    fake = subprocess.Popen([sys.executable, "-c", FAKE_QEMU, *HELPER, "--use-vnet",
                             "--br=blue", "--guest=g1"], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    tap = tap_name("g1", 0)
    try:
        status = fake.stdout.readline().split()
        assert status, status
        assert status[0] == "0", status
        name, _flags = fake.stdout.readline().split()
        assert name == tap
        port = ovs_lab.ports("ha")[tap]
        assert port["tag"] == 10
        # realize's steps for g1's NIC: the ids realize sets, netmap's marks included
        assert port["external_ids"] == {"attached-mac": MACS["g1"], "iface-status": "active",
                                        "vm-id": "g1", "netmap-owner": "g1", "tenant": "t1",
                                        "iface-id": "g1-nic0", "netmap-network": "blue"}
        assert ovs_lab.bridges("ha") == {"br-ovs": sorted(["eth0", tap])}
        assert links_by_name(ovs_lab.netns("ha"))[tap]["address"] == "fe" + MACS["g1"][2:]
        # the OVS bridge and the uplink's port it made are in state, as realize records them
        state = HostState.load("ha", tmp_path / "state")
        owner = f"qemu:{tap}"
        for key in ("ovs-bridge:br-ovs", "ovs-port:eth0", f"ovs-port:{tap}", f"link:{tap}"):
            assert state.users(key) == [owner], key
            assert state.resource(key)["created"] is True, key
    finally:
        fake.communicate("\n", timeout=10)
    deadline = time.monotonic() + 10
    while HostState.load("ha", tmp_path / "state").data["resources"] and \
            time.monotonic() < deadline:  # state is written last
        time.sleep(0.05)
    # QEMU gone: its watcher released the port, and the bridge and uplink port the helper
    # made went with their last user
    assert ovs_lab.bridges("ha") == {}, "the OVS bridge stayed after QEMU exited"
    assert tap not in links_by_name(ovs_lab.netns("ha"))
    assert HostState.load("ha", tmp_path / "state").data["resources"] == {}
