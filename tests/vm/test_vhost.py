"""vhost-net on Debian's kernel: `check --live` on the destination believes /dev/vhost-net,
and notices when it is gone (the CI kernel has none, so only the second half runs there)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from qemu_fds import fds_of
from vmhost import HOST, guest, ip, wait_until

from netmap.cli import main

pytestmark = pytest.mark.vm
NETWORKS = '[networks.lan]\nsegment = "lab"\n'
BINDING = '[uplinks.nmvmup0]\nsegments = ["lab"]\n\n[networks.lan]\nmode = "macvtap-bridge"\n' \
          'uplink = "nmvmup0"\n'
DEST = f'[host]\nname = "{HOST}"\nfeatures = ["tun", "macvtap", "vhost-net"]\n\n{BINDING}'
SOURCE = '[host]\nname = "nmvm-src"\nfeatures = ["tun", "macvtap", "vhost-net"]\n\n' + BINDING
VHOST = Path("/dev/vhost-net")


@pytest.fixture
def lab(fleet):
    ip("link", "add", "nmvmup0", "type", "dummy")
    ip("link", "set", "nmvmup0", "up")
    root = fleet(NETWORKS, DEST, {"g1": guest("g1", ("lan", "52:54:00:7e:00:01")).replace(
        f'host = "{HOST}"', 'host = "nmvm-src"') + 'vhost = "required"\n'})
    (root / "hosts" / "nmvm-src.toml").write_text(SOURCE)
    yield root
    ip("link", "del", "nmvmup0", check=False)
    subprocess.run(["modprobe", "vhost_net"], check=False)


def live_codes(capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["check", "g1", "--to", HOST, "--live", "--json"])
    report = json.loads(capsys.readouterr().out)
    return code, [f"{f['code']}: {f['message']}" for f in report["findings"]]


def test_check_live_sees_vhost_net(lab, capsys) -> None:
    assert VHOST.exists()
    code, findings = live_codes(capsys)
    assert code == 0, findings
    assert not [f for f in findings if "vhost" in f.lower()], findings

    subprocess.run(["modprobe", "-r", "vhost_net"], check=True)
    wait_until(lambda: not VHOST.exists(), "/dev/vhost-net to go with its module")
    code, findings = live_codes(capsys)
    assert code == 1
    assert any(f.startswith("FEATURE_MISSING") and "vhost-net" in f for f in findings), findings


# --- a real QEMU with vhost=on: through the QEMU helper, and on a multi-queue tap ----------
# The VM lab's QEMU: the VM sees QEMU 10's module dir where Debian's QEMU 7.2 looks for its
# own (scripts/vmlab's QEMU covers it, and the VM's root is served through that QEMU).
QEMU = os.environ.get("NETMAP_VMLAB_QEMU", "/opt/netmap-vmlab/bin/qemu-system-x86_64")
BRIDGED = '[networks.lanbr]\nsegment = "lab"\n'
BRIDGED_HOST = f"""[host]
name = "{HOST}"
features = ["tun", "bridge", "vhost-net"]

[uplinks.nmvmup0]
segments = ["lab"]

[networks.lanbr]
mode = "bridge"
uplink = "nmvmup0"
"""


def vhost_workers(pid: int) -> int:
    """Kernel threads vhost-net started for `pid`: one per VHOST_SET_OWNER."""
    names = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            names.append(comm.read_text().strip())
    return names.count(f"vhost-{pid}")


@pytest.fixture
def bridged(fleet, tmp_path: Path):
    ip("link", "add", "nmvmup0", "type", "dummy")
    ip("link", "set", "nmvmup0", "up")
    root = fleet(BRIDGED, BRIDGED_HOST, {
        "gmq": guest("gmq", ("lanbr", "52:54:00:7e:01:01")) + "queues = 4\n"})
    acl = tmp_path / "qemu-helper.conf"
    acl.write_text("allow lanbr\n")
    yield root, acl
    main(["release", "gmq", "--host", HOST])
    for name in ("br-nmvmup0", "nmvmup0"):
        ip("link", "del", name, check=False)


def test_qemu_with_vhost_on_through_the_helper_and_per_queue(bridged, capsys,
                                                              tmp_path: Path) -> None:
    """One QEMU (no machine, CPUs stopped: its netdevs are what is tested) with two vhost=on
    netdevs: one whose tap the QEMU helper makes and sends (QEMU runs it with --use-vnet), and
    the 4-queue tap realize made, which QEMU opens once per queue, with /dev/vhost-net opened
    and owned (VHOST_SET_OWNER: one vhost worker thread each) for every queue."""
    _root, acl = bridged
    capsys.readouterr()
    assert main(["realize", "gmq", "--host", HOST, "--json"]) == 0
    mq_tap = json.loads(capsys.readouterr().out)["nics"][0]["device"]
    helper = f"{sys.executable} -m netmap.qemu.helper"
    log = tmp_path / "qemu.log"
    env = {**os.environ, "NETMAP_QEMU_ACL": str(acl)}
    argv = [QEMU, "-nodefaults", "-display", "none", "-machine", "none", "-S",
            "-netdev", f"tap,id=h0,helper={helper},br=lanbr,vhost=on",
            "-netdev", f"tap,id=m0,ifname={mq_tap},script=no,downscript=no,queues=4,vhost=on"]
    with log.open("w") as stderr:
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                env=env)
    try:
        def settled() -> bool:
            if qemu.poll() is not None:
                raise AssertionError(f"QEMU exited {qemu.returncode}: {log.read_text()}")
            return sum("/dev/vhost-net" in fd for fd in fds_of(qemu.pid)) == 5
        wait_until(settled, "QEMU's five vhost-net fds (helper + 4 queues)", timeout=120)
        fds = fds_of(qemu.pid)
        assert fds.count(f"/dev/net/tun {mq_tap}") == 4, fds
        helper_taps = [fd.split()[1] for fd in fds if fd.startswith("/dev/net/tun ")
                       and fd.split()[1] != mq_tap]
        assert len(helper_taps) == 1, fds
        bridge_port = json.loads(ip("-d", "-j", "link", "show", helper_taps[0]))[0]
        assert bridge_port["master"] == "br-nmvmup0"  # the helper's tap, on lanbr's bridge
        assert json.loads(ip("-j", "link", "show", mq_tap))[0]["master"] == "br-nmvmup0"
        assert vhost_workers(qemu.pid) == 5
    finally:
        qemu.terminate()
        qemu.wait(timeout=60)
    wait_until(lambda: vhost_workers(qemu.pid) == 0, "QEMU's vhost workers to stop")
