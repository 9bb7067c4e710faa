"""The real QEMU (Debian's qemu-system-x86) with netmap as its bridge helper.

QEMU runs inside a lab host namespace (prefix nmD) with `-netdev bridge,br=NETWORK,
helper=WRAPPER`, where the wrapper sets netmap's environment and execs the helper. The
machine is `microvm` with `-S` (no guest image, CPUs never start, TCG): enough for QEMU to
open the netdev, attach a virtio-net device to it and answer QMP. While QEMU runs, netlink
must show its tap where the mapping says, and /proc must show QEMU holding it; once QEMU
quits, the tap (or macvtap) must be gone.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, has_net_admin
from tests.qemu_fds import fds_of
from tests.test_qemu_helper import links, wait_gone

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(not has_net_admin(), reason="needs CAP_NET_ADMIN and iproute2"),
    pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed "
                       "(Debian: apt-get install qemu-system-x86)"),
]


class Qmp:
    """The smallest QMP client: one command, one answer (events are skipped)."""

    def __init__(self, path: Path, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.settimeout(timeout)
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.reader = self.sock.makefile("r")
        assert "QMP" in json.loads(self.reader.readline())
        self.command("qmp_capabilities")

    def command(self, name: str, **arguments: object) -> object:
        self.sock.sendall(json.dumps({"execute": name, "arguments": arguments}).encode())
        while True:
            reply = json.loads(self.reader.readline())
            if "return" in reply or "error" in reply:
                assert "error" not in reply, reply
                return reply["return"]

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def lab(lab_factory, tmp_path: Path):
    """host-a as a namespace, an ACL, and a helper wrapper pointing at both."""
    lab, mappings = lab_factory("nmD", ["host-a"])
    acl = tmp_path / "qemu-helper.conf"
    acl.write_text("allow mgmt\nallow tenant-blue\n")
    wrapper = tmp_path / "netmap-qemu-helper"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"export PYTHONPATH='{REPO}' NETMAP_MAPPINGS='{mappings}' NETMAP_HOST=host-a "
        f"NETMAP_QEMU_ACL='{acl}' NETMAP_STATE_DIR='{tmp_path / 'state'}'\n"
        f"exec '{sys.executable}' -m netmap.qemu.helper --verbose \"$@\"\n")
    wrapper.chmod(0o755)
    return lab.hosts["host-a"], mappings, wrapper, tmp_path


def start_qemu(netns: str, netdev: str, device: str, workdir: Path
               ) -> tuple[subprocess.Popen, Path, Path]:
    qmp_path, log = workdir / "qmp.sock", workdir / "qemu.log"
    argv = ["ip", "netns", "exec", netns, QEMU, "-nodefaults", "-display", "none",
            "-machine", "microvm,accel=tcg", "-S", "-m", "64",
            "-netdev", netdev, "-device", device,
            "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    with log.open("w") as stderr:  # a file, not a pipe: the helper's watcher may inherit it
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    return qemu, qmp_path, log


def helper_line(log: Path) -> list[str]:
    lines = [line for line in log.read_text().splitlines() if "netmap-qemu-helper:" in line]
    assert len(lines) == 1, log.read_text()
    return lines[0].split()


def quit_qemu(qemu: subprocess.Popen, qmp: Qmp) -> None:
    """Ask QEMU to quit through QMP, as libvirt does, and expect a clean exit."""
    qmp.command("quit")
    qmp.close()
    assert qemu.wait(timeout=20) == 0


@pytest.mark.parametrize(("network", "bridge", "mtu"), [
    ("mgmt", "br-eth1", 1500),  # bridge mode on eth1
    ("tenant-blue", "brvx5001", 1450),  # vxlan over eth0: the VNI's bridge
])
def test_qemu_gets_a_tap_on_the_mapped_bridge(lab, network: str, bridge: str,
                                              mtu: int) -> None:
    netns, _, wrapper, workdir = lab
    qemu, qmp_path, log = start_qemu(
        netns, f"bridge,id=n0,br={network},helper={wrapper}",
        "virtio-net-device,netdev=n0,mac=52:54:00:ab:00:02", workdir)
    try:
        qmp = Qmp(qmp_path)
        # QEMU knows the netdev as a bridge-helper tap for the logical network
        network_info = qmp.command("human-monitor-command", **{"command-line": "info network"})
        assert f"br={network}" in network_info
        assert "52:54:00:ab:00:02" in network_info
        words = helper_line(log)
        tap = words[words.index(f"{network}:") + 1]
        now = links(netns)
        assert now[tap]["master"] == now[bridge]["index"]
        assert now[tap]["up"]
        assert now[tap]["mtu"] == mtu
        assert f"/dev/net/tun {tap}" in fds_of(qemu.pid)  # QEMU holds the tap
        quit_qemu(qemu, qmp)
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
    assert wait_gone(netns, tap), "the tap outlived QEMU"
    # the helper made the bridge for QEMU's tap alone: it goes with its last user, as a
    # release of the last realized guest takes it
    assert wait_gone(netns, bridge), "the bridge outlived its last user"


def test_qemu_gets_a_macvtap_and_it_goes_with_qemu(lab) -> None:
    """A macvtap binding: the helper string carries --guest so the macvtap has the guest's
    MAC; QEMU takes the /dev/tapN fd as it would a tap's; the watcher removes it after."""
    netns, mappings, wrapper, workdir = lab
    host_file = mappings / "hosts" / "host-a.toml"
    host_file.write_text(host_file.read_text().replace(
        '[networks.mgmt]\nmode = "bridge"', '[networks.mgmt]\nmode = "macvtap-bridge"'))
    qemu, qmp_path, log = start_qemu(
        netns, f"bridge,id=n0,br=mgmt,helper={wrapper} --guest=vm2",
        "virtio-net-device,netdev=n0,mac=52:54:00:ab:00:02", workdir)
    try:
        qmp = Qmp(qmp_path)
        words = helper_line(log)
        name = words[words.index("mgmt:") + 1]
        macvtap = links(netns)[name]
        assert macvtap["kind"] == "macvtap"
        assert macvtap["up"]
        assert macvtap["mac"] == "52:54:00:ab:00:02"
        assert macvtap["link"] == links(netns)["eth1"]["index"]
        # the helper opened the macvtap through a private node NAME on a tmpfs of its own
        # (then removed the node and the tmpfs)
        assert any(fd.endswith(f"/{name} (deleted)") for fd in fds_of(qemu.pid)), \
            f"QEMU holds no macvtap fd: {fds_of(qemu.pid)}"
        quit_qemu(qemu, qmp)
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
    assert wait_gone(netns, name), "the macvtap outlived QEMU"


@pytest.mark.parametrize(("br", "message"), [
    ("storage", "does not allow network 'storage'"),
    ("../../x", "is not a logical network name"),
])
def test_qemu_refused_when_the_helper_refuses(lab, br: str, message: str) -> None:
    netns, _, wrapper, workdir = lab
    before = links(netns)
    qemu, _, log = start_qemu(netns, f"bridge,id=n0,br={br},helper={wrapper}",
                              "virtio-net-device,netdev=n0", workdir)
    assert qemu.wait(timeout=30) != 0
    text = log.read_text()
    assert message in text
    assert "bridge helper failed" in text  # QEMU's own verdict on a non-zero exit
    assert links(netns).keys() == before.keys()
