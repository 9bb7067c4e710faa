"""Real frames on a tagged network between two hosts: the VM itself (uplink enp1s0) and a
network namespace holding the other emulated 82576 (enp2s0); QEMU's hub is the wire.
Each host realizes a guest on the VLAN-filtering bridge of its uplink; the guests' taps
exchange frames, 802.1Q-tagged on the wire, and a guest on another VLAN hears nothing of
them while it does hear its own VLAN."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from frames import frame
from vmhost import HOST, arrives, guest, ip, macvtap_fd, pfs, tap_fd, wait_until

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


# --- VLAN macvtaps, between the two PFs ------------------------------------------------------
MV_NETWORKS = """[networks.mv-red]
segment = "hub"
vlan = 130

[networks.mv-blue]
segment = "hub"
vlan = 132
"""
MV_MACS = {"a1": "52:54:00:f1:00:01", "b1": "52:54:00:f1:00:03", "b3": "52:54:00:f1:00:05"}


def mv_mapping(name: str, uplink: str, netns: str | None) -> str:
    where = f'netns = "{netns}"\n' if netns else ""
    return f"""[host]
name = "{name}"
features = ["tun", "macvtap", "vhost-net"]
{where}
[uplinks.{uplink}]
segments = ["hub"]

[networks.mv-red]
mode = "macvtap-bridge"
uplink = "{uplink}"

[networks.mv-blue]
mode = "macvtap-bridge"
uplink = "{uplink}"
"""


@pytest.fixture
def vlan_hosts(fleet) -> Iterator[None]:
    with other_host() as (here, there):
        on = {"a1": (HOST, "mv-red"), "b1": (OTHER, "mv-red"), "b3": (OTHER, "mv-blue")}
        root = fleet(MV_NETWORKS, mv_mapping(HOST, here, None), {
            name: guest(name, (network, MV_MACS[name])).replace(HOST, host)
            for name, (host, network) in on.items()})
        (root / "hosts" / f"{OTHER}.toml").write_text(mv_mapping(OTHER, there, OTHER))
        try:
            yield
        finally:
            release_all({name: host for name, (host, _) in on.items()})


def test_frames_through_vlan_macvtaps_on_their_vlan_only(vlan_hosts, capsys,
                                                         tmp_path: Path) -> None:
    """a1 (this VM) and b1 (the other host) are macvtaps on their PF's 802.1Q
    sub-interface for VLAN 130, b3 one on VLAN 132 beside b1."""
    fds = {}
    try:
        for name, host in (("a1", HOST), ("b1", OTHER), ("b3", OTHER)):
            device = tap_of(capsys, name, host)
            fds[name] = macvtap_fd(device, None if host == HOST else OTHER, tmp_path)

        def exchange(sender: str, receiver: str, *, broadcast: bool) -> bytes:
            token = uuid.uuid4().bytes
            out = frame("ff:ff:ff:ff:ff:ff" if broadcast else MV_MACS[receiver],
                        MV_MACS[sender], token)
            assert arrives(fds[receiver], token, lambda: os.write(fds[sender], out), 20), \
                f"{receiver} never got {sender}'s {'broadcast' if broadcast else 'unicast'}"
            return out

        out = exchange("a1", "b1", broadcast=True)
        exchange("b1", "a1", broadcast=False)
        assert not arrives(fds["b3"], out[14:30], lambda: os.write(fds["a1"], out), 3), \
            "b3 (VLAN 132) got a frame of VLAN 130"
    finally:
        for fd in fds.values():
            os.close(fd)
