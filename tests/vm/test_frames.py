"""Real frames on a tagged network between two hosts: the VM itself (uplink enp1s0) and a
network namespace holding the other emulated 82576 (enp2s0); QEMU's hub is the wire.
Each host realizes a guest on the VLAN-filtering bridge of its uplink; the guests' taps
exchange frames, 802.1Q-tagged on the wire, and a guest on another VLAN hears nothing of
them while it does hear its own VLAN."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from frames import frame
from vmhost import (
    HOST,
    arrives,
    guest,
    host_dump,
    ip,
    macvtap_fd,
    pfs,
    set_numvfs,
    tap_fd,
    vf_entries,
    wait_until,
)

from netmap.cli import main

pytestmark = pytest.mark.vm
OTHER = "nmvm-b"  # the second host: a namespace
NETWORKS = """[networks.red]
segment = "hub"
vlan = 120

[networks.blue]
segment = "hub"
vlan = 121
"""


def host_mapping(name: str, uplink: str, netns: str | None) -> str:
    where = f'netns = "{netns}"\n' if netns else ""
    return f"""[host]
name = "{name}"
features = ["tun", "bridge", "vhost-net"]
{where}
[uplinks.{uplink}]
segments = ["hub"]

[networks.red]
mode = "bridge"
uplink = "{uplink}"

[networks.blue]
mode = "bridge"
uplink = "{uplink}"
"""


@contextmanager
def other_host() -> Iterator[tuple[str, str]]:
    """The second PF moved into namespace OTHER (the second host) and back afterwards."""
    here, there = pfs()
    subprocess.run(["ip", "netns", "add", OTHER], check=True)
    try:
        ip("link", "set", there, "netns", OTHER)
        yield here, there
    finally:
        ip("-n", OTHER, "link", "set", there, "netns", "1", check=False)
        subprocess.run(["ip", "netns", "del", OTHER], check=False)
        wait_until(lambda: ip("link", "show", there, check=False), f"{there} back in the VM")


def release_all(where: dict[str, str]) -> None:
    for name, host in where.items():
        main(["release", name, "--host", host])


@pytest.fixture
def two_hosts(fleet) -> Iterator[tuple[str, str]]:
    with other_host() as (here, there):
        root = fleet(NETWORKS, host_mapping(HOST, here, None), {
            "a": guest("a", ("red", "52:54:00:f0:00:01")),
            "b": guest("b", ("red", "52:54:00:f0:00:02")).replace(HOST, OTHER),
            "c": guest("c", ("blue", "52:54:00:f0:00:03")).replace(HOST, OTHER),
            "d": guest("d", ("blue", "52:54:00:f0:00:04"))})
        (root / "hosts" / f"{OTHER}.toml").write_text(host_mapping(OTHER, there, OTHER))
        try:
            yield here, there
        finally:
            release_all({"a": HOST, "b": OTHER, "c": OTHER, "d": HOST})


def tap_of(capsys, name: str, host: str) -> str:
    capsys.readouterr()
    assert main(["realize", name, "--host", host, "--json"]) == 0
    return json.loads(capsys.readouterr().out)["nics"][0]["device"]


def test_frames_cross_the_wire_on_their_vlan_only(two_hosts, capsys) -> None:
    tap_a = tap_of(capsys, "a", HOST)
    tap_b = tap_of(capsys, "b", OTHER)
    tap_c = tap_of(capsys, "c", OTHER)
    tap_d = tap_of(capsys, "d", HOST)
    fd_a, fd_b, fd_c = tap_fd(tap_a), tap_fd(tap_b, OTHER), tap_fd(tap_c, OTHER)
    fd_d = tap_fd(tap_d)
    try:
        token = uuid.uuid4().bytes
        out = frame("ff:ff:ff:ff:ff:ff", "52:54:00:f0:00:01", token)
        assert arrives(fd_b, token, lambda: os.write(fd_a, out), 20), \
            "b (red) never got a's broadcast across the igb wire"
        back = uuid.uuid4().bytes
        reply = frame("52:54:00:f0:00:01", "52:54:00:f0:00:02", back)
        assert arrives(fd_a, back, lambda: os.write(fd_b, reply), 20), \
            "a never got b's unicast reply"
        # c is on blue (VLAN 121), same uplink, same bridge: a's red broadcast stays out
        token = uuid.uuid4().bytes
        out = frame("ff:ff:ff:ff:ff:ff", "52:54:00:f0:00:01", token)
        assert arrives(fd_b, token, lambda: os.write(fd_a, out), 20)  # sent and carried...
        assert not arrives(fd_c, token, lambda: os.write(fd_a, out), 3), \
            "c (blue) got a frame of red"  # ...but not to the other VLAN
        token = uuid.uuid4().bytes  # while d, on blue across the wire, does reach c
        out = frame("ff:ff:ff:ff:ff:ff", "52:54:00:f0:00:04", token)
        assert arrives(fd_c, token, lambda: os.write(fd_d, out), 20), \
            "c (blue) never got d's (blue) broadcast"
    finally:
        for fd in (fd_a, fd_b, fd_c, fd_d):
            os.close(fd)


# --- a VLAN macvtap and a VF, between the two PFs -------------------------------------------
MV_NETWORKS = """[networks.mv-red]
segment = "hub"
vlan = 130

[networks.vf-red]
segment = "hub"
vlan = 131

[networks.mv-blue]
segment = "hub"
vlan = 132
"""
MV_MACS = {"a1": "52:54:00:f1:00:01", "a2": "52:54:00:f1:00:02", "b1": "52:54:00:f1:00:03",
           "b2": "52:54:00:f1:00:04", "b3": "52:54:00:f1:00:05"}


def mv_mapping(name: str, uplink: str, netns: str | None, vf_attach: str = "macvtap") -> str:
    """On this VM: vf-red is a VF of the PF (as a passthru macvtap, or handed over whole);
    on the other host, where the PF's VFs cannot follow it into the namespace, every
    network is a macvtap on the PF's 802.1Q sub-interface."""
    where = f'netns = "{netns}"\n' if netns else ""
    vf = (f'sriov = {{ total_vfs = 4 }}\n\n[networks.vf-red]\nmode = "sriov-vf"\n'
          f'uplink = "{uplink}"\nvf_attach = "{vf_attach}"\n' if netns is None else
          f'\n[networks.vf-red]\nmode = "macvtap-bridge"\nuplink = "{uplink}"\n')
    return f"""[host]
name = "{name}"
features = ["tun", "macvtap", "sriov", "vhost-net"]
{where}
[uplinks.{uplink}]
segments = ["hub"]
{vf}
[networks.mv-red]
mode = "macvtap-bridge"
uplink = "{uplink}"

[networks.mv-blue]
mode = "macvtap-bridge"
uplink = "{uplink}"
"""


@pytest.fixture
def vlan_hosts(sriov_pf, fleet) -> Iterator[None]:
    with other_host() as (here, there):
        assert here == sriov_pf
        on = {"a1": (HOST, "mv-red"), "a2": (HOST, "vf-red"), "b1": (OTHER, "mv-red"),
              "b2": (OTHER, "vf-red"), "b3": (OTHER, "mv-blue")}
        root = fleet(MV_NETWORKS, mv_mapping(HOST, here, None), {
            name: guest(name, (network, MV_MACS[name])).replace(HOST, host)
            for name, (host, network) in on.items()})
        (root / "hosts" / f"{OTHER}.toml").write_text(mv_mapping(OTHER, there, OTHER))
        try:
            yield
        finally:
            release_all({name: host for name, (host, _) in on.items()})


def vf_of(mac: str) -> str:
    """The VF netdev that has `mac` (its passthru macvtap, netmap's nm…, has it too)."""
    return next(link["ifname"] for link in json.loads(ip("-j", "link", "show"))
                if link.get("address") == mac and not link["ifname"].startswith("nm"))


def on_the_wire(netns: str, ifname: str, token: bytes, send) -> str:
    """What PF `ifname` of namespace `netns` receives carrying `token`: its VLAN tag
    (inline or stripped by the NIC), for a failure's message."""
    import socket
    import struct

    from netmap.netlink.rtnl import entered_netns

    with entered_netns(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    with sock:
        sock.bind((ifname, 0))
        sock.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA: the stripped tag
        sock.settimeout(0.2)
        for _ in range(15):
            send()
            try:
                data, ancillary, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(20))
            except TimeoutError:
                continue
            if token not in data:
                continue
            inline = struct.unpack("!HH", data[12:16])
            for _, _, aux in ancillary:
                status, _, _, _, _, tci = struct.unpack_from("IIIHHH", aux)
                if status & 0x10:  # TP_STATUS_VLAN_VALID
                    return f"arrives on {ifname} with VLAN {tci & 0xFFF} (stripped)"
            return (f"arrives on {ifname} with VLAN {inline[1] & 0xFFF}" if inline[0] == 0x8100
                    else f"arrives on {ifname} untagged")
    return f"never reaches {ifname}"


def test_frames_through_a_vlan_macvtap_and_a_vf_on_their_vlan_only(vlan_hosts, capsys,
                                                                   tmp_path: Path) -> None:
    fds = {}
    try:
        for name, host in (("a1", HOST), ("a2", HOST), ("b1", OTHER), ("b2", OTHER),
                           ("b3", OTHER)):
            device = tap_of(capsys, name, host)
            fds[name] = macvtap_fd(device, None if host == HOST else OTHER, tmp_path)

        def exchange(sender: str, receiver: str, *, broadcast: bool) -> bytes:
            token = uuid.uuid4().bytes
            out = frame("ff:ff:ff:ff:ff:ff" if broadcast else MV_MACS[receiver],
                        MV_MACS[sender], token)
            assert arrives(fds[receiver], token, lambda: os.write(fds[sender], out), 20), \
                f"{receiver} never got {sender}'s {'broadcast' if broadcast else 'unicast'}"
            return out

        # VLAN 130: macvtap on enp1s0.130 <-> macvtap on the other PF's .130, both ways
        out = exchange("a1", "b1", broadcast=True)
        exchange("b1", "a1", broadcast=False)
        assert not arrives(fds["b3"], out[14:30], lambda: os.write(fds["a1"], out), 3), \
            "b3 (VLAN 132) got a frame of VLAN 130"
        # VLAN 131: the VF (its entry tags it) <-> a macvtap on the other PF's .131
        token = uuid.uuid4().bytes
        out = frame("ff:ff:ff:ff:ff:ff", MV_MACS["a2"], token)
        if not arrives(fds["b2"], token, lambda: os.write(fds["a2"], out), 20):
            vf = json.loads(ip("-s", "-j", "link", "show", "dev", vf_of(MV_MACS["a2"])))[0]
            pytest.fail(f"b2 never got the VF's broadcast; the VF sent "
                        f"{vf['stats64']['tx']['packets']} frames, and it "
                        + on_the_wire(OTHER, pfs()[1], token, lambda: os.write(fds["a2"], out)))
        exchange("b2", "a2", broadcast=False)
        assert not arrives(fds["b1"], out[14:30], lambda: os.write(fds["a2"], out), 3), \
            "b1 (VLAN 130) got the VF's frame of VLAN 131"
    finally:
        for fd in fds.values():
            os.close(fd)


# --- one VF claimed again and again, in both attach kinds ------------------------------------
@pytest.fixture
def one_vf_and_a_peer(sriov_pf, fleet) -> Iterator[Path]:
    """The PF with ONE VF, so that every claim takes that VF again; b2, on the other host,
    a macvtap on VLAN 131 of the other PF."""
    set_numvfs(sriov_pf, 1)
    # udev renames the new VF netdev (eth0 -> enp1s0v0) when its worker gets to it
    subprocess.run(["udevadm", "settle", "--timeout=60"], check=True)
    with other_host() as (here, there):
        root = fleet(MV_NETWORKS, mv_mapping(HOST, here, None), {
            "b2": guest("b2", ("vf-red", MV_MACS["b2"])).replace(HOST, OTHER)})
        (root / "hosts" / f"{OTHER}.toml").write_text(mv_mapping(OTHER, there, OTHER))
        try:
            yield root
        finally:
            release_all({"a2": HOST, "b2": OTHER})


@contextmanager
def guest_driver_on(netdev: str) -> Iterator[int]:
    """What a guest's VF driver does with a VF handed over whole, played by the host's
    igbvf: it starts with a reset (igbvf resets at ifdown), after which the VF has the MAC
    its PF entry holds, and sends and receives raw frames. Down again after, without IPv6
    addresses, so that the VF is free again once released."""
    import socket

    ip("link", "set", netdev, "addrgenmode", "none")
    ip("link", "set", netdev, "up")
    ip("link", "set", netdev, "down")
    ip("link", "set", netdev, "up")
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    try:
        sock.bind((netdev, 0))
        sock.setblocking(False)
        yield sock.fileno()
    finally:
        sock.close()
        ip("link", "set", netdev, "down")


def both_ways(fd_a: int, mac_a: str, fd_b: int, mac_b: str, what: str) -> None:
    """a's broadcast reaches b, b's unicast reaches a."""
    token = uuid.uuid4().bytes
    out = frame("ff:ff:ff:ff:ff:ff", mac_a, token)
    assert arrives(fd_b, token, lambda: os.write(fd_a, out), 20), \
        f"{what}: the peer never got the VF's broadcast"
    back = uuid.uuid4().bytes
    reply = frame(mac_a, mac_b, back)
    assert arrives(fd_a, back, lambda: os.write(fd_b, reply), 20), \
        f"{what}: the VF never got the peer's unicast"


def test_one_vf_claimed_again_and_again_in_both_attach_kinds_carries_frames_each_time(
        one_vf_and_a_peer, capsys, tmp_path: Path) -> None:
    """A VF is reused after a release, with another guest MAC each time: handed over whole,
    then as a passthru macvtap, and so on. The VM agreement sweep once failed on such a
    reuse (igb refused the macvtap's MAC, EADDRNOTAVAIL). Each claim must succeed on the
    same VF with its own MAC, carry frames both ways on VLAN 131, and each release put the
    VF entry back as found (and, for a macvtap, the whole host)."""
    root = one_vf_and_a_peer
    here = pfs()[0]
    netdev = next(Path(f"/sys/class/net/{here}/device/virtfn0/net").iterdir()).name
    fd_b2 = macvtap_fd(tap_of(capsys, "b2", OTHER), OTHER, tmp_path)
    try:
        for cycle, attach in enumerate(("hostdev", "macvtap", "hostdev", "macvtap", "macvtap",
                                        "hostdev")):
            mac = f"52:54:00:f2:00:{cycle:02x}"
            what = f"claim {cycle + 1} ({attach}, {mac})"
            (root / "hosts" / f"{HOST}.toml").write_text(
                mv_mapping(HOST, here, None, vf_attach=attach))
            (root / "guests" / "a2.toml").write_text(guest("a2", ("vf-red", mac)))
            entries, dump = vf_entries(here), host_dump()

            capsys.readouterr()
            assert main(["realize", "a2", "--host", HOST, "--json"]) == 0, what
            device = json.loads(capsys.readouterr().out)["nics"][0].get("device")
            assert [(e["vf"], e["mac"], e["vlan"]) for e in vf_entries(here)] == [
                (0, mac, 131)], what
            with contextlib.ExitStack() as stack:
                if attach == "macvtap":
                    fd_a2 = macvtap_fd(device, None, tmp_path)
                    stack.callback(os.close, fd_a2)
                else:
                    fd_a2 = stack.enter_context(guest_driver_on(netdev))
                assert json.loads(ip("-j", "link", "show", netdev))[0]["address"] == mac, what
                both_ways(fd_a2, mac, fd_b2, MV_MACS["b2"], what)

            assert main(["release", "a2", "--host", HOST]) == 0, what
            assert vf_entries(here) == entries, what
            if attach == "macvtap":
                assert host_dump() == dump, what
    finally:
        os.close(fd_b2)
