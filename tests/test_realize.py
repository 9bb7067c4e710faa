"""realize / release in the lab: real kernel, throw-away namespaces (prefix nmA).

Every test builds its own lab (host namespaces cabled to a fabric namespace) and compares
full `ip -d -j link` and `bridge -j vlan` dumps before and after, so "left exactly as
before" is checked against iproute2, not against netmap's own reading of the kernel.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import needs_netns

from netmap.cli import main
from netmap.graph import build_graph
from netmap.load import load_fleet
from netmap.netlink.rtnl import entered_netns
from netmap.plan import build_plan
from netmap.state import HostState

pytestmark = needs_netns
PREFIX = "nmA"
ETHERTYPE = 0x88B5  # IEEE local experimental: nothing in the lab answers or forwards it oddly
VM5 = """[guest]
name = "vm5"
host = "host-a"

[[nics]]
network = "mgmt"
mac = "52:54:00:55:00:01"

[[nics]]
network = "tenant-blue"
mac = "52:54:00:55:00:02"
"""
VM6 = """[guest]
name = "vm6"
host = "host-a"

[[nics]]
network = "tenant-blue"
mac = "52:54:00:66:00:01"
"""
# mgmt works, then prod needs eth0.100, which this kernel (no 8021q) cannot make
VM7 = """[guest]
name = "vm7"
host = "host-a"

[[nics]]
network = "mgmt"
mac = "52:54:00:77:00:01"

[[nics]]
network = "prod"
mac = "52:54:00:77:00:02"
"""


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
    for link in json.loads(run("ip", "-d", "-j", "link", "show", netns=netns)):
        for volatile in ("stats", "stats64", "ifindex", "link_index"):
            link.pop(volatile, None)
        for part in ("info_data", "info_slave_data"):  # running timers tick on their own
            data = link.get("linkinfo", {}).get(part, {})
            for key in [k for k in data if k.endswith("_timer")]:
                del data[key]
        links[link["ifname"]] = link
    fdb = [e for e in json.loads(run("bridge", "-j", "fdb", "show", netns=netns) or "[]")
           if e.get("state") == "permanent" or e.get("dst")]  # not what traffic taught
    return {"links": links, "vlans": run("bridge", "-j", "vlan", "show", netns=netns,
                                         check=False),
            "fdb": sorted(json.dumps(e, sort_keys=True) for e in fdb)}


def shape(netns: str) -> dict:
    """What netmap controls, with ifindex: equal shapes mean nothing was recreated."""
    out = {}
    for link in json.loads(run("ip", "-d", "-j", "link", "show", netns=netns)):
        info = link.get("linkinfo", {})
        data = info.get("info_data", {})
        out[link["ifname"]] = (link["ifindex"], info.get("info_kind"), link.get("master"),
                               link["mtu"], link.get("address"), "UP" in link["flags"],
                               data.get("mode"), data.get("id"), data.get("ageing_time"))
    return out


@pytest.fixture
def lab(lab_factory, mappings: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """host-a and host-b of the example fleet, plus guests vm5..vm7; state in tmp_path."""
    (mappings / "guests" / "vm5.toml").write_text(VM5)
    (mappings / "guests" / "vm6.toml").write_text(VM6)
    (mappings / "guests" / "vm7.toml").write_text(VM7)
    built, root = lab_factory(PREFIX, ["host-a", "host-b"])
    monkeypatch.setenv("NETMAP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("NETMAP_MAPPINGS", str(root))
    return built, root


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


def frame(dst: str, src: str, payload: bytes) -> bytes:
    mac = lambda m: bytes.fromhex(m.replace(":", ""))  # noqa: E731
    return mac(dst) + mac(src) + struct.pack("!H", ETHERTYPE) + payload.ljust(46, b"\0")


def wait_for(read, token: bytes, timeout: float = 3.0) -> bool:
    """Read frames until one carries `token` (True) or the timeout passes (False)."""
    fileno, reader = read
    poller = select.poll()
    poller.register(fileno, select.POLLIN)
    deadline = timeout * 1000
    while deadline > 0:
        if not poller.poll(100):
            deadline -= 100
            continue
        try:
            data = reader()
        except BlockingIOError:
            continue
        if token in data:
            return True
    return False


def stand_in_peer(lab_obj, segment: str) -> tuple[str, str]:
    """A namespace with one veth plugged into the fabric bridge of `segment`."""
    ns = f"{lab_obj.prefix}-peer"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    lab_obj.hosts["peer"] = ns  # torn down with the lab
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
    peer_mac = Path(f"/proc/self/fd/{sock.fileno()}")  # placeholder to keep names short
    del peer_mac
    try:
        token = uuid.uuid4().bytes
        os.write(fd, frame("ff:ff:ff:ff:ff:ff", guest_mac, token))
        assert wait_for((sock.fileno(), lambda: sock.recv(2048)), token), \
            "the peer never saw the guest's broadcast"
        token = uuid.uuid4().bytes
        sock.send(frame(guest_mac, "02:00:00:00:00:99", token))
        assert wait_for((fd, lambda: os.read(fd, 2048)), token), \
            "the guest never got the peer's unicast"
    finally:
        os.close(fd)
        sock.close()


# --- tests ------------------------------------------------------------------------------------
def test_realize_twice_changes_nothing_and_release_restores(lab, capsys) -> None:
    built, root = lab
    ns = built.hosts["host-a"]
    before = host_dump(ns)
    assert main(["realize", "vm5", "--host", "host-a"]) == 0
    first = capsys.readouterr().out
    assert "realized vm5 on host-a" in first and "managed='no'" in first
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
    assert vm5_tap_a not in links_a and "br-eth1" not in links_a  # released
    assert "brvx5001" in links_a  # vm6 still uses the overlay bridge on host-a
    peer_ns, peer_if = stand_in_peer(built, "dc1-fabric")
    mgmt, blue = plan_b.nics
    exchange(b, mgmt.device, mgmt.mac, peer_ns, peer_if)
    # tenant-blue: host-b's tap reaches vm6's tap on host-a through vxlan over the fabric
    vm6_tap = plan_for(root, "vm6", "host-a").nics[0].device
    fd = tap_fd(a, vm6_tap)
    try:
        peer_sock_ns = a
        del peer_sock_ns
        token = uuid.uuid4().bytes
        fd_b = tap_fd(b, blue.device)
        try:
            os.write(fd_b, frame("ff:ff:ff:ff:ff:ff", blue.mac, token))
            assert wait_for((fd, lambda: os.read(fd, 2048)), token)
            token = uuid.uuid4().bytes
            os.write(fd, frame(blue.mac, "52:54:00:66:00:01", token))
            assert wait_for((fd_b, lambda: os.read(fd_b, 2048)), token)
        finally:
            os.close(fd_b)
    finally:
        os.close(fd)
