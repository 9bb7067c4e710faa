"""The QEMU bridge-helper protocol, driven directly: this test plays QEMU.

It makes the socketpair, runs the helper as a separate process with `--fd=N --br=NAME`
exactly as net/tap.c does, and receives (or not) the fd. Success paths run in a lab host
namespace (prefix nmD) and check where the tap sits; error paths check the message, the
exit code, that no fd came, and that the host namespace holds the same links as before.
"""

from __future__ import annotations

import array
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, links_by_name

HELPER = [sys.executable, "-m", "netmap.qemu.helper"]
ACL = "allow mgmt\nallow tenant-blue\nallow prod\nallow storage\nallow nosuchnet\n"


@dataclass
class Outcome:
    code: int
    stderr: str
    fd: int | None  # the fd the helper sent, now ours

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def receive_fd(sock: socket.socket) -> int | None:
    """What QEMU's recv_fd() does: one byte, one SCM_RIGHTS fd, or EOF."""
    data, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(4))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            return array.array("i", payload[:4])[0]
    assert data == b"", "a byte without an fd"
    return None


def helper_env(mappings: Path, acl: Path, host: str = "host-a") -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "NETMAP_MAPPINGS": str(mappings),
            "NETMAP_HOST": host, "NETMAP_QEMU_ACL": str(acl),
            "NETMAP_STATE_DIR": str(acl.parent / "state")}  # the host lock lives there


def call_helper(args: list[str], env: dict[str, str], *, close_caller: bool = False
                ) -> Outcome:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        if close_caller:  # QEMU gone before the helper answers
            ours.close()
        argv = [*HELPER, f"--fd={theirs.fileno()}", *args]
        done = subprocess.run(argv, pass_fds=[theirs.fileno()], env=env, capture_output=True,
                              text=True, timeout=30, check=False)
        theirs.close()
        fd = None if close_caller else receive_fd(ours)
    return Outcome(done.returncode, done.stderr, fd)


def addrgen_modes(netns: str, *names: str) -> list[str]:
    """IPv6 address generation mode of each link (none: no link-local address)."""
    found = links_by_name(netns)
    return [found[name].get("inet6_addr_gen_mode") for name in names]


def inet6_addresses(netns: str, *names: str) -> dict[str, list[str]]:
    import json

    out = subprocess.run(["ip", "-n", netns, "-j", "-6", "addr", "show"], capture_output=True,
                         text=True, check=True).stdout
    return {link["ifname"]: [a["local"] for a in link["addr_info"]] for link in json.loads(out)
            if link["ifname"] in names and link.get("addr_info")}


def links(netns: str) -> dict[str, dict]:
    from netmap.netlink import open_iproute

    with open_iproute(netns) as ipr:
        found = {}
        for link in ipr.get_links():
            found[link.get("ifname")] = {
                "index": link["index"], "master": link.get("IFLA_MASTER"),
                "mtu": link.get("IFLA_MTU"), "up": bool(link["flags"] & 1),
                "kind": link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"),
                "mac": link.get("IFLA_ADDRESS"),
                "vni": link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_VXLAN_ID"),
                "link": link.get("IFLA_LINK"),
                "ageing": link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA",
                                          "IFLA_BR_AGEING_TIME"),
                "underlay": link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA",
                                            "IFLA_VXLAN_LINK"),
            }
        return found


def wait_gone(netns: str, name: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if name not in links(netns):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def host_a(lab_factory, tmp_path: Path):
    lab, mappings = lab_factory("nmD", ["host-a"])
    acl = tmp_path / "qemu-helper.conf"
    acl.write_text(ACL)
    return lab.hosts["host-a"], mappings, acl


def test_bridge_mode_tap_on_the_mapped_bridge(host_a) -> None:
    from netmap.netlink.tapfd import IFF_VNET_HDR, tap_info

    netns, mappings, acl = host_a
    env = helper_env(mappings, acl)
    got = call_helper(["--use-vnet", "--br=mgmt"], env)
    try:
        assert got.code == 0, got.stderr
        assert got.fd is not None
        name, flags = tap_info(got.fd)
        assert re.fullmatch(r"nmq[0-9a-f]{8}", name)
        assert flags & IFF_VNET_HDR
        now = links(netns)
        # host-a binds mgmt in bridge mode on eth1: the bridge br-eth1 was made, eth1 in it
        bridge = now["br-eth1"]
        assert bridge["kind"] == "bridge"
        assert bridge["up"]
        assert bridge["ageing"] == 3000  # as realize's plan makes it (plan.BRIDGE_AGEING)
        assert now["eth1"]["master"] == bridge["index"]
        tap = now[name]
        assert tap["master"] == bridge["index"]
        assert tap["up"]
        assert tap["mtu"] == 1500
        assert tap["mac"].startswith("fe:")
        assert addrgen_modes(netns, "br-eth1", name) == ["none", "none"]  # as realize does
        # and none was made before generation was turned off (rtmsg.up_without_ipv6)
        assert not inet6_addresses(netns, "br-eth1", name)
    finally:
        got.close()
    # the tap lives as long as the fd: QEMU exiting removes it, and the bridge the helper
    # made goes with its last user, as a release of the last realized guest takes it
    assert wait_gone(netns, name)
    assert wait_gone(netns, "br-eth1")
    assert links(netns)["eth1"]["master"] is None


def test_without_use_vnet_no_vnet_header_and_existing_bridge_reused(host_a) -> None:
    from netmap.netlink.tapfd import IFF_VNET_HDR, tap_info

    netns, mappings, acl = host_a
    env = helper_env(mappings, acl)
    first = call_helper(["--br=mgmt"], env)
    second = call_helper(["--br=mgmt", "--guest=vm2"], env)
    try:
        assert first.code == 0, first.stderr + second.stderr
        assert second.code == 0, first.stderr + second.stderr
        assert not tap_info(first.fd)[1] & IFF_VNET_HDR
        from netmap.model.names import tap_name

        # --guest names the tap as realize would, from the guest's NIC on that network
        assert tap_info(second.fd)[0] == tap_name("vm2", 1)
        now = links(netns)
        bridge = now["br-eth1"]["index"]
        assert now[tap_info(first.fd)[0]]["master"] == bridge
        assert now[tap_name("vm2", 1)]["master"] == bridge
        # the host side's MAC is the guest's with fe:, as realize gives it
        assert now[tap_name("vm2", 1)]["mac"] == "fe:54:00:ab:00:02"
    finally:
        first.close()
        second.close()


def test_vxlan_mode_tap_on_the_vni_bridge(host_a) -> None:
    from netmap.netlink.tapfd import tap_info

    netns, mappings, acl = host_a
    got = call_helper(["--use-vnet", "--br=tenant-blue", "--verbose"], helper_env(mappings, acl))
    try:
        assert got.code == 0, got.stderr
        name, _ = tap_info(got.fd)
        assert f"network tenant-blue: {name} on bridge brvx5001, MTU 1450" in got.stderr
        now = links(netns)
        assert now["vx5001"]["kind"] == "vxlan"
        assert now["vx5001"]["vni"] == 5001
        assert now["vx5001"]["underlay"] == now["eth0"]["index"]  # the mapped underlay
        assert now["vx5001"]["master"] == now["brvx5001"]["index"]
        assert now[name]["master"] == now["brvx5001"]["index"]
        assert now[name]["mtu"] == 1450
    finally:
        got.close()


def test_frames_written_to_the_fd_reach_the_fabric(host_a) -> None:
    """The fd is the guest's wire: a frame QEMU writes must leave the host through eth1 and
    arrive on the dc1-fabric segment of the lab's fabric namespace."""
    netns, mappings, acl = host_a
    fabric = netns.removesuffix("-host-a") + "-fabric"  # build_lab's naming
    got = call_helper(["--br=mgmt"], helper_env(mappings, acl))
    assert got.code == 0, got.stderr
    capture = subprocess.Popen(
        ["ip", "netns", "exec", fabric, sys.executable, "-c", textwrap.dedent("""
            import socket
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            s.bind(("seg0", 0)); s.settimeout(10)  # build_lab: seg0 is dc1-fabric
            print("ready", flush=True)
            while b"netmap-qemu-test" not in s.recv(2048):
                pass
            print("seen", flush=True)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert capture.stdout.readline().strip() == "ready"
        frame = (b"\xff" * 6 + bytes.fromhex("525400aabbcc") + b"\x88\xb5"
                 + b"netmap-qemu-test" + bytes(30))
        for _ in range(40):  # until the capture sees one
            os.write(got.fd, frame)
            if capture.poll() is not None:
                break
            time.sleep(0.05)
        out, _ = capture.communicate(timeout=10)
        assert out.strip() == "seen"
    finally:
        capture.kill()
        got.close()


def test_concurrent_helpers_share_one_new_bridge(host_a) -> None:
    """Several QEMUs starting at once race to create the network's bridge: all succeed."""
    from concurrent.futures import ThreadPoolExecutor

    from netmap.netlink.tapfd import tap_info

    netns, mappings, acl = host_a
    env = helper_env(mappings, acl)
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda _: call_helper(["--br=mgmt"], env), range(4)))
    try:
        assert [o.code for o in outcomes] == [0] * 4, [o.stderr for o in outcomes]
        now = links(netns)
        names = {tap_info(o.fd)[0] for o in outcomes}
        assert len(names) == 4
        assert {now[n]["master"] for n in names} == {now["br-eth1"]["index"]}
    finally:
        for outcome in outcomes:
            outcome.close()


def test_bridge_mode_with_a_vlan(lab_factory, tmp_path: Path) -> None:
    """host-d bridges prod (VLAN 100): a VLAN-filtering bridge, the tap an access port of
    VLAN 100. A kernel without bridge VLAN filtering gets a clear refusal, nothing left."""
    lab, mappings = lab_factory("nmD", ["host-d"])
    netns = lab.hosts["host-d"]
    acl = tmp_path / "acl.conf"
    acl.write_text("allow prod\n")
    before = links(netns)
    got = call_helper(["--br=prod"], helper_env(mappings, acl, host="host-d"))
    try:
        if got.code == 0:
            import json

            from netmap.netlink.tapfd import tap_info

            name, _ = tap_info(got.fd)
            shown = json.loads(subprocess.run(
                ["bridge", "-n", netns, "-j", "vlan", "show", "dev", name],
                capture_output=True, text=True, check=True).stdout)
            vids = [(v["vlan"], sorted(v.get("flags", []))) for v in shown[0]["vlans"]]
            assert vids == [(100, ["Egress Untagged", "PVID"])]
        else:  # refused as realize refuses it: before any change, naming what is missing
            assert (got.code, got.fd) == (3, None), got.stderr
            assert "step 'create bridge br-prod" in got.stderr
            assert "needs bridge VLAN filtering" in got.stderr
            assert "nothing was changed" in got.stderr
            assert links(netns).keys() == before.keys()
    finally:
        got.close()


def read_frame(fd: int, marker: bytes, timeout: float = 5.0) -> bytes | None:
    """The first frame on a tap fd that carries `marker`, or None."""
    import select

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            frame = os.read(fd, 65536)
            if marker in frame:
                return frame
    return None


@pytest.mark.parametrize("network", ["mgmt", "tenant-blue"])
def test_one_logical_network_across_two_hosts(lab_factory, tmp_path: Path,
                                              network: str) -> None:
    """host-a maps mgmt to eth1, host-b to eno3 (tenant-blue: VNI 5001 over them): a frame
    the guest on host-a sends reaches the guest on host-b, fd to fd, through the fabric."""
    _, mappings = lab_factory("nmD", ["host-a", "host-b"])
    acl = tmp_path / "acl.conf"
    acl.write_text(f"allow {network}\n")
    on_a = call_helper([f"--br={network}"], helper_env(mappings, acl, host="host-a"))
    on_b = call_helper([f"--br={network}"], helper_env(mappings, acl, host="host-b"))
    try:
        assert on_a.code == 0, on_a.stderr + on_b.stderr
        assert on_b.code == 0, on_a.stderr + on_b.stderr
        marker = f"netmap {network} a->b".encode()
        frame = (b"\xff" * 6 + bytes.fromhex("525400aa0001") + b"\x88\xb5" + marker
                 + bytes(40))
        got = None
        for _ in range(20):  # the first frames may race the vxlan's multicast join
            os.write(on_a.fd, frame)
            got = read_frame(on_b.fd, marker, timeout=0.25)
            if got:
                break
        assert got is not None, "the frame did not reach host-b's tap"
        assert got[6:12] == bytes.fromhex("525400aa0001")
    finally:
        on_a.close()
        on_b.close()


def test_vxlan_unicast_remotes(host_a) -> None:
    netns, mappings, acl = host_a
    host_file = mappings / "hosts" / "host-a.toml"
    host_file.write_text(host_file.read_text().replace(
        'vxlan = { group = "239.1.1.1" }', 'vxlan = { remotes = ["10.250.0.2", "10.250.0.3"] }'))
    got = call_helper(["--br=tenant-blue"], helper_env(mappings, acl))
    try:
        assert got.code == 0, got.stderr
        fdb = subprocess.run(["bridge", "-n", netns, "fdb", "show", "dev", "vx5001"],
                             capture_output=True, text=True, check=True).stdout
        heads = {line.split()[2] for line in fdb.splitlines()
                 if line.startswith("00:00:00:00:00:00 dst")}
        assert heads == {"10.250.0.2", "10.250.0.3"}
    finally:
        got.close()


def test_waits_for_the_host_lock(host_a) -> None:
    """A realize/release holding the host's lock is waited for, not raced."""
    import threading

    from netmap.state import host_lock

    _, mappings, acl = host_a
    env = helper_env(mappings, acl)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with host_lock("host-a", env["NETMAP_STATE_DIR"]):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    timer = threading.Timer(0.8, release.set)
    timer.start()
    start = time.monotonic()
    got = call_helper(["--br=mgmt"], env)
    elapsed = time.monotonic() - start
    holder.join()
    try:
        assert got.code == 0, got.stderr
        assert elapsed >= 0.7, "the helper did not wait for the lock"
    finally:
        got.close()


# --- refusals: nothing created, no fd --------------------------------------------------------

@pytest.mark.parametrize(("args", "code", "message"), [
    (["--br=../../x"], 2, "'../../x' is not a logical network name"),
    (["--br=mgmt/../prod"], 2, "is not a logical network name"),
    (["--br=-rf"], 2, "is not a logical network name"),
    (["--br=abcdefghijklmnop"], 2, "has 16 bytes; names of 16 bytes or more are refused"),
    (["--br=" + "é" * 8], 2, "has 16 bytes"),
    (["--br="], 2, "is not a logical network name"),
    ([], 2, "missing --br=NETWORK"),
    (["--br=mgmt", "--br=prod"], 2, "--br given twice"),
    (["--br=mgmt", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["--br=nosuchnet"], 2, "no logical network 'nosuchnet'"),
    (["--br=mgnt"], 1, "does not allow network 'mgnt'"),
    (["--br=storage"], 2, "sriov-vf on host-a: a VF reaches a guest as a PCI device"),
    (["--br=prod"], 2, "a macvtap only receives frames for the guest's MAC"),
    (["--br=prod", "--mac=01:00:5e:00:00:01"], 2, "multicast address"),
    (["--br=prod", "--guest=vm3"], 2, "guest vm3 has 0 NICs on network 'prod'"),
    (["--br=mgmt", "--host=host-x"], 2, "unknown host 'host-x'"),
])
def test_refusals_leave_nothing(host_a, args: list[str], code: int, message: str) -> None:
    netns, mappings, acl = host_a
    before = links(netns)
    got = call_helper(args, helper_env(mappings, acl))
    assert got.fd is None
    assert got.code == code, got.stderr
    assert message in got.stderr
    assert got.stderr.startswith("netmap-qemu-helper: error:") or "usage:" in got.stderr
    assert "Traceback" not in got.stderr
    assert links(netns).keys() == before.keys()


def test_acl_deny_wins_and_names_the_rule(host_a) -> None:
    netns, mappings, acl = host_a
    acl.write_text("allow all\ndeny mgmt\n")
    got = call_helper(["--br=mgmt"], helper_env(mappings, acl))
    assert (got.code, got.fd) == (1, None)
    assert f"denies network 'mgmt' ({acl}:2: deny mgmt)" in got.stderr
    assert "br-eth1" not in links(netns)


def test_missing_acl_file(host_a, tmp_path: Path) -> None:
    _, mappings, _ = host_a
    got = call_helper(["--br=mgmt"], helper_env(mappings, tmp_path / "absent.conf"))
    assert (got.code, got.fd) == (2, None)
    assert "absent.conf does not exist" in got.stderr
    assert "fix:" in got.stderr


@pytest.mark.parametrize("fd_kind", ["closed", "pipe", "datagram"])
def test_fd_that_is_not_the_callers_socket(host_a, fd_kind: str) -> None:
    netns, mappings, acl = host_a
    env = helper_env(mappings, acl)
    keep = []
    if fd_kind == "pipe":
        read, write = os.pipe()
        keep, fd = [read, write], write
    elif fd_kind == "datagram":
        pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        keep, fd = [s.detach() for s in pair], None
        fd = keep[1]
    else:
        fd = 99
    try:
        done = subprocess.run([*HELPER, f"--fd={fd}", "--br=mgmt"], pass_fds=keep, env=env,
                              capture_output=True, text=True, timeout=30, check=False)
    finally:
        for item in keep:
            os.close(item)
    assert done.returncode == 2
    assert re.search(rf"fd {fd} is not an? (open socket|unix stream socket)", done.stderr)
    assert "br-eth1" not in links(netns)


@pytest.mark.parametrize(("argv", "message"), [
    (["--br=mgmt"], "missing --fd=N"),
    (["--fd=x", "--br=mgmt"], "argument --fd: invalid int value: 'x'"),
    (["--fd=3", "--fd=4", "--br=mgmt"], "--fd given twice"),
    (["--fd=3", "--br=mgmt", "extra"], "unrecognized arguments: extra"),
    (["--fd=-1", "--br=mgmt"], "--fd: --fd=-1 is not a file descriptor"),
])
def test_missing_or_malformed_fd(host_a, argv: list[str], message: str) -> None:
    netns, mappings, acl = host_a
    before = links(netns)
    done = subprocess.run([*HELPER, *argv], env=helper_env(mappings, acl), capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert links(netns).keys() == before.keys()


def test_caller_gone_rolls_back_what_was_made(host_a) -> None:
    """The bridge is made, the tap too, then the send fails: both are removed again."""
    netns, mappings, acl = host_a
    before = links(netns)
    got = call_helper(["--br=mgmt"], helper_env(mappings, acl), close_caller=True)
    assert got.code == 3
    assert "cannot send the fd to the caller" in got.stderr
    assert links(netns).keys() == before.keys()
    assert links(netns)["eth1"]["master"] is None


def test_kernel_refusal_rolls_back(host_a) -> None:
    """prod is macvtap-vepa on eth0 with VLAN 100: this kernel has no 802.1q module, which
    realize's transaction finds before it changes anything (the helper applies through it)."""
    netns, mappings, acl = host_a
    if Path("/sys/module/8021q").exists():
        pytest.skip("this kernel has 802.1q; the refusal path needs one without")
    before = links(netns)
    got = call_helper(["--br=prod", "--mac=52:54:00:12:34:56"], helper_env(mappings, acl))
    assert (got.code, got.fd) == (3, None)
    assert "step 'create 802.1Q eth0.100 on eth0" in got.stderr
    assert "needs 802.1Q VLAN support" in got.stderr
    assert links(netns).keys() == before.keys()


def test_missing_namespace_is_named(host_a, mappings: Path) -> None:
    _, mappings, acl = host_a
    host_file = mappings / "hosts" / "host-a.toml"
    host_file.write_text(re.sub(r'netns = ".*?"', 'netns = "nmD-absent"', host_file.read_text()))
    got = call_helper(["--br=mgmt"], helper_env(mappings, acl))
    assert (got.code, got.fd) == (2, None)
    assert "network namespace 'nmD-absent' does not exist" in got.stderr


def test_netmap_command_form(host_a) -> None:
    """`netmap qemu-helper` is the same helper (for helper="netmap qemu-helper ...")."""
    from netmap.netlink.tapfd import tap_info

    netns, mappings, acl = host_a
    ours, theirs = socket.socketpair()
    with ours, theirs:
        done = subprocess.run(
            [sys.executable, "-m", "netmap", "qemu-helper", "--host", "host-a",
             "--use-vnet", f"--fd={theirs.fileno()}", "--br=mgmt"],
            pass_fds=[theirs.fileno()], env=helper_env(mappings, acl, host="nope"),
            capture_output=True, text=True, timeout=30, check=False)
        theirs.close()
        fd = receive_fd(ours)
    assert done.returncode == 0, done.stderr
    assert fd is not None
    try:
        name, _ = tap_info(fd)
        now = links(netns)
        assert now[name]["master"] == now["br-eth1"]["index"]
    finally:
        os.close(fd)


# --- macvtap: the fd of /dev/tapN, removed when the caller exits ------------------------------

FAKE_QEMU = textwrap.dedent("""
    import array, os, socket, subprocess, sys
    from netmap.netlink.tapfd import tap_info
    ours, theirs = socket.socketpair()
    done = subprocess.run(sys.argv[1:] + [f"--fd={theirs.fileno()}"],
                          pass_fds=[theirs.fileno()], capture_output=True, text=True)
    theirs.close()
    _, anc, _, _ = ours.recvmsg(1, socket.CMSG_SPACE(4))
    fds = [array.array("i", data[:4])[0] for _, _, data in anc]
    print(done.returncode, done.stderr.strip().replace(chr(10), " "), flush=True)
    if fds:
        name, flags = tap_info(fds[0])
        print(name, flags, flush=True)
    sys.stdin.readline()  # "QEMU" runs until the test says so
""")


def test_macvtap_mode_sends_the_macvtap_fd_and_cleans_up(host_a) -> None:
    from netmap.netlink.tapfd import IFF_VNET_HDR

    netns, mappings, acl = host_a
    host_file = mappings / "hosts" / "host-a.toml"
    # mgmt as macvtap-bridge on eth1 (eth1 then is no bridge port, as the kernel requires)
    text = host_file.read_text().replace('[networks.mgmt]\nmode = "bridge"',
                                         '[networks.mgmt]\nmode = "macvtap-bridge"')
    host_file.write_text(text)
    fake = subprocess.Popen([sys.executable, "-c", FAKE_QEMU, *HELPER, "--use-vnet",
                             "--br=mgmt", "--guest=vm2"],
                            env=helper_env(mappings, acl), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        status = fake.stdout.readline().split()
        assert status, status
        assert status[0] == "0", status
        name, flags = fake.stdout.readline().split()
        from netmap.model.names import tap_name

        assert name == tap_name("vm2", 1)
        assert int(flags) & IFF_VNET_HDR
        macvtap = links(netns)[name]
        assert macvtap["kind"] == "macvtap"
        assert macvtap["up"]
        assert macvtap["mac"] == "52:54:00:ab:00:02"  # vm2's NIC on mgmt, from its mapping
        assert macvtap["link"] == links(netns)["eth1"]["index"]
    finally:
        fake.communicate("\n", timeout=10)
    assert fake.returncode == 0
    assert wait_gone(netns, name), "the watcher did not remove the macvtap after QEMU exited"


def test_a_bug_is_exit_4_and_says_so(monkeypatch, capsys) -> None:
    """Exit 3 means the kernel refused and all was removed; a bug has a code of its own."""
    from netmap.qemu import helper

    def broken(_request: object) -> int:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(helper, "run", broken)
    assert helper.main(["--fd=3", "--br=mgmt"]) == 4
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: unexpected" in err
    assert "bug in netmap" in err


# Not on the helper's path (QEMU waits for it at every guest start): no renderer, graph,
# whole-fleet load, pyroute2, XML, nor the OVSDB and SR-IOV parts of realize's transaction
# for a network that needs neither. (The plan's steps and the transaction are its path.)
HELPER_SKIPS = ("rich", "networkx", "pyroute2", "netmap.query.graph", "netmap.load.store",
                "netmap.load.fleet", "xml", "urllib.request", "netmap.libvirt",
                "netmap.netlink.ovsdb", "netmap.netlink.ovs_steps", "netmap.netlink.sysfs",
                "netmap.netlink.vf_pool", "netmap.netlink.release")


def test_helper_on_an_existing_bridge_imports_nothing_heavy(lab_factory, tmp_path: Path
                                                           ) -> None:
    _, mappings = lab_factory("nmsp", ["host-a"])
    acl = tmp_path / "qemu-helper.conf"
    acl.write_text(ACL)
    env = helper_env(mappings, acl)
    first = call_helper(["--br=mgmt"], env)  # makes br-eth1
    first.close()
    assert first.code == 0, first.stderr
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "netmap.qemu.helper",
                               f"--fd={theirs.fileno()}", "--br=mgmt"],
                              pass_fds=[theirs.fileno()], env=env, capture_output=True,
                              text=True, timeout=30, check=False)
        theirs.close()
        got = Outcome(done.returncode, done.stderr, receive_fd(ours))
    try:
        assert got.code == 0, got.stderr
        assert got.fd is not None, got.stderr
        imported = {line.rsplit("|", 1)[1].strip() for line in got.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "netmap.netlink.tapfd" in imported  # the parse is right: the path was taken
        assert "netmap.netlink.ensure" in imported  # through realize's transaction
        assert sorted(imported & set(HELPER_SKIPS)) == []
    finally:
        got.close()
