"""realize / release in the lab: real kernel, throw-away namespaces (prefix nmA).

Every test builds its own lab (host namespaces cabled to a fabric namespace) and compares
full `ip -d -j link` and `bridge -j vlan` dumps before and after, so "left exactly as
before" is checked against iproute2, not against netmap's own reading of the kernel.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import fake_sriov_pf, guest_toml, ip_links
from frames import ETHERTYPE, frame, wait_for
from steady import steady_link

from netmap.cli import main
from netmap.errors import ApplyError
from netmap.lab import add_namespace
from netmap.load import load_fleet
from netmap.netlink.apply import realize_plan, release_guest
from netmap.netlink.kernel_support import KernelProbe
from netmap.netlink.rtnl import entered_netns
from netmap.plan.planner import build_plan
from netmap.query.graph import build_graph
from netmap.state import HostState

PREFIX = "nmA"
VM5_MGMT = ("mgmt", "52:54:00:55:00:01")
VM5 = guest_toml("vm5", "host-a", VM5_MGMT, ("tenant-blue", "52:54:00:55:00:02"))
VM6 = guest_toml("vm6", "host-a", ("tenant-blue", "52:54:00:66:00:01"))
# mgmt works, then prod needs eth0.100, which this kernel (no 8021q) cannot make
VM7 = guest_toml("vm7", "host-a", ("mgmt", "52:54:00:77:00:01"), ("prod", "52:54:00:77:00:02"))


# --- lab helpers -----------------------------------------------------------------------------
def run(*argv: str, netns: str | None = None, check: bool = True) -> str:
    cmd = ["ip", "-n", netns, *argv[1:]] if netns and argv[0] == "ip" else list(argv)
    if netns and argv[0] == "bridge":
        cmd = ["ip", "netns", "exec", netns, *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and done.returncode:
        raise AssertionError(f"{cmd}: {done.stderr}")
    return done.stdout


def host_dump(netns: str) -> dict:
    """Everything iproute2 says about the namespace's links, minus counters and indexes."""
    links = {}
    for link in ip_links(netns):
        for index in ("ifindex", "link_index"):
            link.pop(index, None)
        links[link["ifname"]] = steady_link(link)
    fdb = [e for e in json.loads(run("bridge", "-j", "fdb", "show", netns=netns) or "[]")
           if (e.get("state") == "permanent" or e.get("dst"))  # not what traffic taught
           and not e["mac"].startswith(("01:00:5e:", "33:33:"))]  # nor multicast joins
    return {"links": links, "vlans": run("bridge", "-j", "vlan", "show", netns=netns,
                                         check=False),
            "fdb": sorted(json.dumps(e, sort_keys=True) for e in fdb)}


def shape(netns: str) -> dict:
    """What netmap controls, with ifindex: equal shapes mean nothing was recreated."""
    out = {}
    for link in ip_links(netns):
        info = link.get("linkinfo", {})
        data = info.get("info_data", {})
        out[link["ifname"]] = (link["ifindex"], info.get("info_kind"), link.get("master"),
                               link["mtu"], link.get("address"), "UP" in link["flags"],
                               data.get("mode"), data.get("id"), data.get("ageing_time"))
    return out


@pytest.fixture
def lab(cli_lab_factory, mappings: Path):
    """host-a and host-b of the example fleet, plus guests vm5..vm7; state in tmp_path.

    The example binds mgmt's bridge and tenant-blue's vxlan underlay to the same uplink
    (eth1, eno3); realize refuses to enslave an uplink with addresses (they would stop
    working), so here the underlay moves to the prod uplink, where macvtaps leave the
    uplink's own addresses alone."""
    for host, old, new in (("host-a", "eth1", "eth0"), ("host-b", "eno3", "eno2")):
        path = mappings / "hosts" / f"{host}.toml"
        text = path.read_text()
        text = text.replace(f'mode = "vxlan"\nuplink = "{old}"',
                            f'mode = "vxlan"\nuplink = "{new}"')
        assert f'uplink = "{new}"\nvxlan' in text
        path.write_text(text)
    return cli_lab_factory(PREFIX, ["host-a", "host-b"], {"vm5": VM5, "vm6": VM6, "vm7": VM7})


def plan_for(root: Path, guest: str, host: str):
    fleet = load_fleet(root)
    return build_plan(build_graph(fleet), fleet.guests[guest], fleet.hosts[host])


def tap_fd(netns: str, name: str) -> int:
    """Open an existing tap as QEMU would, but without the vnet header: raw frames."""
    with entered_netns(netns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", name.encode(), 0x0002 | 0x1000))
    return fd


def packet_socket(netns: str, ifname: str) -> socket.socket:
    with entered_netns(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
        sock.bind((ifname, ETHERTYPE))
    return sock


def stand_in_peer(lab_obj, segment: str) -> tuple[str, str]:
    """A namespace with one veth plugged into the fabric bridge of `segment`."""
    ns = add_namespace(lab_obj, "peer")  # marked as the lab's: torn down with it
    bridge = lab_obj.segment_bridges[segment]
    run("ip", "link", "add", "peer0", "type", "veth", "peer", "name", "pp0", "netns",
        lab_obj.fabric, netns=ns)
    run("ip", "link", "set", "pp0", "master", bridge, "up", netns=lab_obj.fabric)
    run("ip", "link", "set", "peer0", "up", netns=ns)
    return ns, "peer0"


def exchange(tap_ns: str, tap: str, guest_mac: str, peer_ns: str, peer_if: str) -> None:
    """Frames both ways between the tap (as the guest) and the peer."""
    fd = tap_fd(tap_ns, tap)
    sock = packet_socket(peer_ns, peer_if)
    sock.setblocking(False)
    try:
        token = uuid.uuid4().bytes
        out = frame("ff:ff:ff:ff:ff:ff", guest_mac, token)
        assert wait_for((sock.fileno(), lambda: sock.recv(2048)), token,
                        lambda: os.write(fd, out)), "the peer never saw the guest's broadcast"
        token = uuid.uuid4().bytes
        back = frame(guest_mac, "02:00:00:00:00:99", token)
        assert wait_for((fd, lambda: os.read(fd, 2048)), token,
                        lambda: sock.send(back)), "the guest never got the peer's unicast"
    finally:
        os.close(fd)
        sock.close()


# --- tests ------------------------------------------------------------------------------------
def test_realize_twice_changes_nothing_and_release_restores(lab, capsys) -> None:
    built, root = lab
    ns = built.hosts["host-a"]
    before = host_dump(ns)
    assert main(["realize", "vm5", "--host", "host-a", "--dry-run", "--json"]) == 0
    verdicts = [v["result"] for v in json.loads(capsys.readouterr().out)["verdicts"]]
    assert verdicts.count("create") == 7
    assert host_dump(ns) == before  # read, not changed
    assert main(["realize", "vm5", "--host", "host-a"]) == 0
    first = capsys.readouterr().out
    assert "realized vm5 on host-a" in first
    assert "managed='no'" in first
    made = host_dump(ns)
    made_shape = shape(ns)
    assert {"br-eth1", "vx5001", "brvx5001"} <= set(made["links"])
    tap = plan_for(root, "vm5", "host-a").nics[0].device
    assert made["links"][tap]["master"] == "br-eth1"
    assert made["links"][tap]["address"] == "fe:54:00:55:00:01"
    assert made["links"]["vx5001"]["linkinfo"]["info_data"]["id"] == 5001
    ageing = made["links"]["br-eth1"]["linkinfo"]["info_data"]["ageing_time"]
    assert ageing in (3000, 30)  # iproute2 prints clock_t or seconds, by version
    assert main(["realize", "vm5", "--host", "host-a"]) == 0
    assert "already realized on host-a: nothing changed" in capsys.readouterr().out
    assert shape(ns) == made_shape
    assert main(["realize", "vm5", "--host", "host-a", "--dry-run"]) == 0
    assert "0 change(s), nothing done" in capsys.readouterr().out
    assert main(["release", "vm5", "--host", "host-a"]) == 0
    assert host_dump(ns) == before
    assert HostState.load("host-a").data["resources"] == {}


def test_migration_keeps_the_segment_frames_pass(lab) -> None:
    """realize on host-a, check + realize on host-b, release on host-a; then frames pass
    between the destination endpoints and peers on the same segment and VNI."""
    built, root = lab
    assert main(["realize", "vm6", "--host", "host-a"]) == 0  # a VNI peer that stays
    assert main(["realize", "vm5", "--host", "host-a"]) == 0
    assert main(["check", "vm5", "--to", "host-b"]) == 0
    assert main(["realize", "vm5", "--host", "host-b"]) == 0
    assert main(["release", "vm5", "--host", "host-a"]) == 0
    a, b = built.hosts["host-a"], built.hosts["host-b"]
    links_a = host_dump(a)["links"]
    plan_b = plan_for(root, "vm5", "host-b")
    vm5_tap_a = plan_for(root, "vm5", "host-a").nics[0].device
    assert vm5_tap_a not in links_a
    assert "br-eth1" not in links_a  # released
    assert "brvx5001" in links_a  # vm6 still uses the overlay bridge on host-a
    peer_ns, peer_if = stand_in_peer(built, "dc1-fabric")
    mgmt, blue = plan_b.nics
    exchange(b, mgmt.device, mgmt.mac, peer_ns, peer_if)
    # tenant-blue: host-b's tap reaches vm6's tap on host-a through vxlan over the fabric
    vm6_tap = plan_for(root, "vm6", "host-a").nics[0].device
    fd = tap_fd(a, vm6_tap)
    try:
        token = uuid.uuid4().bytes
        fd_b = tap_fd(b, blue.device)
        try:
            out = frame("ff:ff:ff:ff:ff:ff", blue.mac, token)
            assert wait_for((fd, lambda: os.read(fd, 2048)), token,
                            lambda: os.write(fd_b, out))
            token = uuid.uuid4().bytes
            back = frame(blue.mac, "52:54:00:66:00:01", token)
            assert wait_for((fd_b, lambda: os.read(fd_b, 2048)), token,
                            lambda: os.write(fd, back))
        finally:
            os.close(fd_b)
    finally:
        os.close(fd)


def test_failure_at_every_step_leaves_the_host_as_before(lab) -> None:
    """Fail (an exception, or Ctrl-C) before each step in turn: exit 3, nothing left."""
    built, root = lab
    ns = built.hosts["host-a"]
    assert main(["realize", "vm6", "--host", "host-a"]) == 0  # shares vx5001 with vm5
    before, state_before = host_dump(ns), HostState.load("host-a").data
    plan = plan_for(root, "vm5", "host-a")
    count = len(plan.steps)
    assert count >= 7
    for failing in range(count):
        error: BaseException = KeyboardInterrupt() if failing % 2 else RuntimeError("injected")

        def hook(position: int, _step, failing=failing, error=error) -> None:
            if position == failing:
                raise error

        with pytest.raises(ApplyError) as caught:
            realize_plan(plan, on_step=hook)
        assert "every change was undone" in caught.value.problem
        assert ("interrupted" if failing % 2 else "injected") in caught.value.problem
        after = host_dump(ns)
        diff = {name: {k: (v, after["links"].get(name, {}).get(k)) for k, v in link.items()
                       if after["links"].get(name, {}).get(k) != v}
                for name, link in before["links"].items()}
        assert after == before, f"step {failing} left changes behind: {diff}"
        assert HostState.load("host-a").data == state_before
    assert realize_plan(plan).changed  # and afterwards it still works


def test_kernel_refusal_mid_way_rolls_back(lab, tmp_path: Path) -> None:
    """vm7: mgmt is built first, then prod needs eth0.100, which this kernel (no 8021q)
    cannot create: the bridge, the enslaved uplink and the tap are undone. (realize's
    probe refuses that up front, test_privileges.py; told 8021q is loaded, it goes on
    to the kernel's own refusal.)"""
    built, root = lab
    ns = built.hosts["host-a"]
    before = host_dump(ns)
    (tmp_path / "kernel" / "sys" / "module" / "8021q").mkdir(parents=True)
    with pytest.raises(ApplyError) as caught:
        realize_plan(plan_for(root, "vm7", "host-a"),
                     kernel_probe=KernelProbe(tmp_path / "kernel"))
    err = str(caught.value)
    assert "802.1Q" in err
    assert "every change was undone" in err
    assert "modprobe 8021q" in err
    assert host_dump(ns) == before


def test_refusals_touch_nothing(lab, capsys) -> None:
    built, root = lab
    ns = built.hosts["host-a"]
    tap = plan_for(root, "vm5", "host-a").nics[0].device
    # a foreign device holds the endpoint's name
    run("ip", "link", "add", tap, "type", "veth", "peer", "name", "x0", netns=ns)
    before = host_dump(ns)
    assert main(["realize", "vm5", "--host", "host-a"]) == 3
    err = capsys.readouterr().err
    assert f"{tap} exists on host-a as a veth" in err
    assert "nothing was changed" in err
    assert host_dump(ns) == before
    run("ip", "link", "del", tap, netns=ns)
    # the uplink is enslaved to a bridge netmap does not know
    run("ip", "link", "add", "other", "type", "bridge", netns=ns)
    run("ip", "link", "set", "eth1", "master", "other", netns=ns)
    before = host_dump(ns)
    assert main(["realize", "vm5", "--host", "host-a"]) == 3
    assert "eth1 is already a port of other" in capsys.readouterr().err
    assert host_dump(ns) == before
    run("ip", "link", "del", "other", netns=ns)
    # the uplink carries an address, which a bridge port would no longer answer for
    run("ip", "addr", "add", "192.0.2.1/24", "dev", "eth1", netns=ns)
    before = host_dump(ns)
    assert main(["realize", "vm5", "--host", "host-a"]) == 3
    assert "eth1 on host-a has addresses (192.0.2.1/24)" in capsys.readouterr().err
    assert host_dump(ns) == before
    # the uplink's MTU is smaller than the mapping says
    run("ip", "addr", "flush", "dev", "eth1", netns=ns)
    run("ip", "link", "set", "eth1", "mtu", "1400", netns=ns)
    before = host_dump(ns)
    assert main(["realize", "vm5", "--host", "host-a"]) == 3
    assert "uplink eth1 on host-a has MTU 1400; the guest's endpoints need 1500" in \
        capsys.readouterr().err
    assert host_dump(ns) == before
    # the uplink vanished
    run("ip", "link", "del", "eth1", netns=ns)
    before = host_dump(ns)
    assert main(["realize", "vm5", "--host", "host-a"]) == 3
    assert "uplink eth1 does not exist on host-a" in capsys.readouterr().err
    assert host_dump(ns) == before
    assert HostState.load("host-a").data["guests"] == {}


def test_drift_is_repaired_and_foreign_devices_survive_release(lab, capsys) -> None:
    built, root = lab
    ns = built.hosts["host-a"]
    assert main(["realize", "vm5", "--host", "host-a"]) == 0
    tap = plan_for(root, "vm5", "host-a").nics[0].device
    run("ip", "link", "set", tap, "nomaster", "mtu", "1400", netns=ns)
    capsys.readouterr()
    assert main(["realize", "vm5", "--host", "host-a", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [s["result"] for s in result["steps"]].count("repair") == 1
    links = host_dump(ns)["links"]
    assert links[tap]["master"] == "br-eth1"
    assert links[tap]["mtu"] == 1500
    # a guest netmap does not know is plugged into the bridge: the bridge must stay
    run("ip", "link", "add", "vnet0", "type", "veth", "peer", "name", "vnet0p", netns=ns)
    run("ip", "link", "set", "vnet0", "master", "br-eth1", netns=ns)
    # and the endpoint's name now belongs to someone else
    run("ip", "link", "del", tap, netns=ns)
    run("ip", "link", "add", tap, "type", "veth", "peer", "name", "y0", netns=ns)
    assert main(["release", "vm5", "--host", "host-a"]) == 0
    out = capsys.readouterr().out
    assert "bridge still has ports netmap did not make: vnet0" in out
    links = host_dump(ns)["links"]
    assert {tap, "vnet0", "br-eth1"} <= set(links)
    assert links["eth1"]["master"] == "br-eth1"
    assert "vx5001" not in links
    assert "brvx5001" not in links
    # netmap's bridge stays in state, owned by no guest, until it is free (issue 14 item 3)
    kept = HostState.load("host-a").data["resources"]
    assert sorted(kept) == ["link:br-eth1", "port:eth1"]
    assert all(record["guests"] == [] for record in kept.values())
    run("ip", "link", "del", "vnet0", netns=ns)
    assert main(["realize", "vm6", "--host", "host-a"]) == 0
    assert "br-eth1" in host_dump(ns)["links"]  # realize leaves it: not in vm6's plan
    assert main(["release", "vm6", "--host", "host-a"]) == 0  # any later release tidies up
    assert "br-eth1" not in host_dump(ns)["links"]
    assert HostState.load("host-a").data["resources"] == {}


def _crash_at(root: Path, position: int, state_dir: str) -> int:
    pid = os.fork()
    if pid == 0:  # the child dies mid-way, as a kill -9 would leave it
        os.environ["NETMAP_STATE_DIR"] = state_dir
        try:
            realize_plan(plan_for(root, "vm5", "host-a"),
                         on_step=lambda i, _s: os._exit(9) if i == position else None)
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1] >> 8


def test_crash_mid_way_next_run_finishes_or_release_undoes(lab) -> None:
    built, root = lab
    ns = built.hosts["host-a"]
    before = host_dump(ns)
    state_dir = os.environ["NETMAP_STATE_DIR"]
    assert _crash_at(root, 5, state_dir) == 9
    state = HostState.load("host-a")
    assert state.guest("vm5")["status"] == "pending"
    assert "br-eth1" in host_dump(ns)["links"]  # half built
    result = realize_plan(plan_for(root, "vm5", "host-a"))  # finishes it
    actions = [action for _, _, action in result.outcomes]
    assert "unchanged" in actions
    assert "create" in actions
    assert HostState.load("host-a").guest("vm5")["status"] == "realized"
    release_guest("host-a", "vm5", ns)
    assert host_dump(ns) == before
    assert _crash_at(root, 6, state_dir) == 9  # crash again; this time release undoes it
    release_guest("host-a", "vm5", ns)
    assert host_dump(ns) == before
    assert HostState.load("host-a").data["resources"] == {}


def test_concurrent_realizes_share_and_never_collide(lab) -> None:
    built, _root = lab
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    runs = [subprocess.Popen([sys.executable, "-m", "netmap", "realize", guest, "--host",
                              "host-a", "--json"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for guest in ("vm5", "vm6", "vm5", "vm6")]
    outputs = [proc.communicate(timeout=60) for proc in runs]
    assert [proc.returncode for proc in runs] == [0, 0, 0, 0], outputs
    changed = [json.loads(out)["changed"] for out, _ in outputs]
    assert sorted(changed) == [False, False, True, True]  # each guest built exactly once
    state = HostState.load("host-a")
    assert sorted(state.users("link:brvx5001")) == ["vm5", "vm6"]
    release_guest("host-a", "vm5", built.hosts["host-a"])
    assert "brvx5001" in host_dump(built.hosts["host-a"])["links"]  # vm6 still uses it


VM8 = """[guest]
name = "vm8"
host = "host-a"

[[nics]]
network = "mgmt"
mac = "52:54:00:88:00:01"

[[nics]]
network = "storage"
mac = "52:54:00:88:00:02"
"""


def test_vf_claims_against_fake_sysfs(lab, tmp_path: Path, capsys) -> None:
    """VFs are chosen under the lock from sysfs minus state's claims; on the lab's veth PF
    the real netlink VF call fails (no SR-IOV driver), and everything is rolled back."""
    built, root = lab
    ns = built.hosts["host-a"]
    (root / "guests" / "vm8.toml").write_text(VM8)
    sysfs = fake_sriov_pf(tmp_path / "sys", "eno1", ["eno1v0", "eno1v1"])
    from netmap.netlink.ensure import Transaction
    from netmap.netlink.rtnl import Rtnl

    state = HostState.load("host-a")
    state.use("vm1", "vf:eno1:52:54:00:12:34:57", step={}, created=True, info={"index": 0})
    with Rtnl(ns) as kernel:
        txn = Transaction(kernel, state, plan_for(root, "vm8", "host-a"), sysfs)
        txn.decide()
    assert [vf.index for vf in txn.vfs.values()] == [1]  # VF 0 is vm1's
    state.use("vm3", "vf:eno1:52:54:00:cd:00:02", step={}, created=True, info={"index": 1})
    with Rtnl(ns) as kernel, pytest.raises(ApplyError, match="no free VF on eno1"):
        Transaction(kernel, state, plan_for(root, "vm8", "host-a"), sysfs).decide()
    before = host_dump(ns)
    os.environ["NETMAP_SYSFS"] = str(sysfs)
    try:
        assert main(["realize", "vm8", "--host", "host-a"]) == 3
    finally:
        del os.environ["NETMAP_SYSFS"]
    err = capsys.readouterr().err
    assert "claim a free VF of eno1" in err
    assert "every change was undone" in err
    assert host_dump(ns) == before


MACVTAP_NETWORKS = """
[networks.flat-b]
segment = "dc1-fabric"
[networks.flat-v]
segment = "dc1-fabric"
[networks.flat-p]
segment = "dc1-fabric"
[networks.flat-pt]
segment = "dc1-fabric"
[networks.tagged]
segment = "dc1-fabric"
vlan = 300
"""
MACVTAP_HOST = """[host]
name = "host-a"
features = ["vhost-net", "tun", "macvtap", "bridge"]

[uplinks.eth0]
segments = ["dc1-fabric"]
[uplinks.eth1]
segments = ["dc1-fabric"]
[uplinks.eth2]
segments = ["dc1-fabric"]

[networks.flat-b]
mode = "macvtap-bridge"
uplink = "eth0"
[networks.flat-v]
mode = "macvtap-vepa"
uplink = "eth0"
[networks.flat-p]
mode = "macvtap-private"
uplink = "eth0"
[networks.flat-pt]
mode = "macvtap-passthrough"
uplink = "eth1"
[networks.tagged]
mode = "bridge"
uplink = "eth2"
"""
G4 = guest_toml("g4", "host-a", *((net, f"52:54:00:44:00:0{i}") for i, net in
                                   enumerate(["flat-b", "flat-v", "flat-p", "flat-pt"])))
GT = guest_toml("gt", "host-a", ("tagged", "52:54:00:74:00:01"))


@pytest.fixture
def macvtap_lab(cli_lab_factory, mappings: Path):
    """A one-host fleet of our own: every macvtap mode without a VLAN, and one VLAN network
    in bridge mode (which needs bridge VLAN filtering)."""
    for old in [*mappings.glob("hosts/*.toml"), *mappings.glob("guests/*")]:
        old.unlink()
    (mappings / "networks.toml").write_text(MACVTAP_NETWORKS)
    (mappings / "hosts" / "host-a.toml").write_text(MACVTAP_HOST)
    return cli_lab_factory(PREFIX, ["host-a"], {"g4": G4, "gt": GT})


def macvtap_fd(netns: str, name: str, directory: Path) -> int:
    """Open the macvtap's character device (made with mknod: /dev here is not the lab's),
    switched to raw frames without the virtio-net header."""
    index = ip_links(netns, name)[0]["ifindex"]
    dev = subprocess.run(["ip", "netns", "exec", netns, "cat",
                          f"/sys/class/net/{name}/macvtap/tap{index}/dev"],
                         capture_output=True, text=True, check=True).stdout.strip()
    major, minor = map(int, dev.split(":"))
    node = directory / f"tap{index}"
    os.mknod(node, 0o600 | 0o020000, os.makedev(major, minor))
    fd = os.open(node, os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", b"", 0x0002 | 0x1000))
    return fd


def test_every_macvtap_mode_and_frames_through_vepa(macvtap_lab, tmp_path, capsys) -> None:
    built, _root = macvtap_lab
    ns = built.hosts["host-a"]
    before = host_dump(ns)
    eth1_mac = before["links"]["eth1"]["address"]
    assert main(["realize", "g4", "--host", "host-a", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    links = host_dump(ns)["links"]
    modes = {}
    for nic in result["nics"]:
        link = links[nic["device"]]
        modes[nic["mode"]] = link["linkinfo"]["info_data"]["mode"]
        assert link["address"] == nic["mac"]
        shown = ip_links(ns, nic["device"])
        assert nic["tapdev"] == f"/dev/tap{shown[0]['ifindex']}"
        assert "<target dev=" in nic["libvirt_xml"]
    assert modes == {"macvtap-bridge": "bridge", "macvtap-vepa": "vepa",
                     "macvtap-private": "private", "macvtap-passthrough": "passthru"}
    vepa = result["nics"][1]
    peer_ns, peer_if = stand_in_peer(built, "dc1-fabric")
    fd = macvtap_fd(ns, vepa["device"], tmp_path)
    sock = packet_socket(peer_ns, peer_if)
    sock.setblocking(False)
    try:
        token = uuid.uuid4().bytes
        out = frame("ff:ff:ff:ff:ff:ff", vepa["mac"], token)
        assert wait_for((sock.fileno(), lambda: sock.recv(2048)), token,
                        lambda: os.write(fd, out))
        token = uuid.uuid4().bytes
        back = frame(vepa["mac"], "02:00:00:00:00:99", token)
        assert wait_for((fd, lambda: os.read(fd, 2048)), token, lambda: sock.send(back))
    finally:
        os.close(fd)
        sock.close()
    assert main(["realize", "g4", "--host", "host-a"]) == 0
    assert "nothing changed" in capsys.readouterr().out
    # drift: the vepa macvtap switched to private mode is switched back, in place
    run("ip", "link", "set", vepa["device"], "type", "macvtap", "mode", "private", netns=ns)
    index = ip_links(ns, vepa["device"])[0]["ifindex"]
    assert main(["realize", "g4", "--host", "host-a"]) == 0
    assert "1 repair" in capsys.readouterr().out
    again = ip_links(ns, vepa["device"])[0]
    assert again["linkinfo"]["info_data"]["mode"] == "vepa"
    assert again["ifindex"] == index
    assert main(["release", "g4", "--host", "host-a"]) == 0
    after = host_dump(ns)
    assert after == before
    assert after["links"]["eth1"]["address"] == eth1_mac  # passthru gave the MAC back


def test_vlan_in_bridge_mode_needs_vlan_filtering(macvtap_lab, capsys) -> None:
    """The plan tags on a vlan-filtering bridge; this CI kernel has none (no 802.1Q):
    a clear error, exit 3, nothing left behind."""
    built, root = macvtap_lab
    ns = built.hosts["host-a"]
    plan = plan_for(root, "gt", "host-a")
    kinds = [step.kind for _, step in plan.steps]
    assert kinds == ["require-link", "bridge", "enslave", "bridge-vlan", "tap", "bridge-vlan"]
    before = host_dump(ns)
    code = main(["realize", "gt", "--host", "host-a"])
    err = capsys.readouterr().err
    if code == 0:  # a kernel with VLAN filtering: the tap is an access port of VLAN 300
        vlans = json.loads(run("bridge", "-j", "vlan", "show", netns=ns))
        tap = plan.nics[0].device
        entry = next(v for v in vlans if v["ifname"] == tap)
        assert [v["vlan"] for v in entry["vlans"]] == [300]
        return
    assert code == 3
    assert "bridge VLAN filtering" in err
    assert "nothing was changed" in err  # probed first
    assert host_dump(ns) == before


def test_realize_converges_when_a_nic_is_dropped(lab, capsys) -> None:
    built, root = lab
    ns = built.hosts["host-a"]
    before = host_dump(ns)
    assert main(["realize", "vm5", "--host", "host-a"]) == 0
    blue_tap = plan_for(root, "vm5", "host-a").nics[1].device
    (root / "guests" / "vm5.toml").write_text(guest_toml("vm5", "host-a", VM5_MGMT))
    capsys.readouterr()
    assert main(["realize", "vm5", "--host", "host-a"]) == 0
    out = capsys.readouterr().out
    assert f"removed link:{blue_tap} (no longer in the plan)" in out
    links = host_dump(ns)["links"]
    assert blue_tap not in links
    assert "vx5001" not in links
    assert "br-eth1" in links
    assert main(["realize", "vm5", "--host", "host-a"]) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert main(["release", "vm5", "--host", "host-a"]) == 0
    assert host_dump(ns) == before


def test_an_existing_bridge_is_adopted_and_left_alone(lab, capsys) -> None:
    """An admin's bridge that is exactly what the plan needs is used, never changed or
    deleted; one that differs is refused."""
    built, _root = lab
    ns = built.hosts["host-a"]
    run("ip", "link", "add", "br-eth1", "type", "bridge", "ageing_time", "3000", netns=ns)
    run("ip", "link", "set", "eth1", "master", "br-eth1", netns=ns)
    run("ip", "link", "set", "br-eth1", "up", netns=ns)
    before = host_dump(ns)
    assert main(["realize", "vm5", "--host", "host-a", "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)["steps"]
    verdicts = {s["step"]["kind"] + ":" + str(s["step"].get("name") or s["step"].get("port")):
                s["result"] for s in steps}
    assert verdicts["bridge:br-eth1"] == "adopt"
    assert verdicts["enslave:eth1"] == "unchanged"
    assert main(["release", "vm5", "--host", "host-a"]) == 0
    assert "link:br-eth1: was there before netmap" in capsys.readouterr().out
    assert host_dump(ns) == before
    run("ip", "link", "set", "br-eth1", "mtu", "1400", netns=ns)
    assert main(["realize", "vm5", "--host", "host-a"]) == 3
    assert "br-eth1 on host-a is not netmap's and differs: mtu 1400 (want 1500)" in \
        capsys.readouterr().err


def test_vxlan_with_unicast_remotes(lab) -> None:
    """Without a multicast group: head-end replication entries toward each remote VTEP."""
    built, root = lab
    a, b = built.hosts["host-a"], built.hosts["host-b"]
    under_a, under_b = built.underlay[("host-a", "eth0")], built.underlay[("host-b", "eno2")]
    for host, peer in (("host-a", under_b), ("host-b", under_a)):
        path = root / "hosts" / f"{host}.toml"
        path.write_text(path.read_text().replace('vxlan = { group = "239.1.1.1" }',
                                                 f'vxlan = {{ remotes = ["{peer}"] }}'))
    before = host_dump(a)
    assert main(["realize", "vm6", "--host", "host-a"]) == 0
    assert main(["realize", "vm5", "--host", "host-b"]) == 0
    fdb = json.loads(run("bridge", "-j", "fdb", "show", "dev", "vx5001", netns=a))
    assert {"mac": "00:00:00:00:00:00", "dst": under_b} in [
        {"mac": e["mac"], "dst": e.get("dst")} for e in fdb]
    blue_b = plan_for(root, "vm5", "host-b").nics[1]
    fd_a = tap_fd(a, plan_for(root, "vm6", "host-a").nics[0].device)
    fd_b = tap_fd(b, blue_b.device)
    try:
        token = uuid.uuid4().bytes
        out = frame("ff:ff:ff:ff:ff:ff", blue_b.mac, token)
        assert wait_for((fd_a, lambda: os.read(fd_a, 2048)), token,
                        lambda: os.write(fd_b, out))
    finally:
        os.close(fd_a)
        os.close(fd_b)
    assert main(["release", "vm6", "--host", "host-a"]) == 0
    assert host_dump(a) == before


def test_a_changed_mode_asks_for_release_first(lab, capsys) -> None:
    built, root = lab
    assert main(["realize", "vm5", "--host", "host-a"]) == 0
    path = root / "hosts" / "host-a.toml"
    path.write_text(path.read_text().replace('[networks.mgmt]\nmode = "bridge"',
                                             '[networks.mgmt]\nmode = "macvtap-bridge"'))
    tap = plan_for(root, "vm5", "host-a").nics[0].device
    before = host_dump(built.hosts["host-a"])
    capsys.readouterr()
    assert main(["realize", "vm5", "--host", "host-a", "--force"]) == 3
    err = capsys.readouterr().err
    assert (f"{tap} on host-a is the tun netmap made for vm5, but the plan now needs a "
            "macvtap") in err
    assert "release vm5 on host-a first" in err
    assert host_dump(built.hosts["host-a"]) == before
    assert main(["release", "vm5", "--host", "host-a"]) == 0
    assert main(["realize", "vm5", "--host", "host-a", "--force"]) == 0
    assert host_dump(built.hosts["host-a"])["links"][tap]["linkinfo"]["info_kind"] == "macvtap"
