"""README's walkthrough of the ovs mode, as a new user types it: a copy of the mappings,
`scripts/ovs_lab.py up`, then check, realize, ovs-vsctl's view, drift, a tag changed by
hand, the repair, release, and Ctrl-C, after which nothing of the lab is left. The
commands run are README's own (its block, parsed), with the test's prefix and directory in
place of README's. Namespaces prefix nmol."""

from __future__ import annotations

import importlib.util
import os
import re
import select
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from netmap.load import load_fleet
from netmap.model.names import tap_name
from netmap.netlink.rtnl import entered_netns
from tests.conftest import (
    EXAMPLE_MAPPINGS,
    REPO,
    interrupt,
    ip_links,
    lab_namespaces,
    needs_netns,
    wait_until_up,
)
from tests.frames import frame
from tests.ovs_lab import missing
from tests.test_realize import tap_fd

# scripts/ovs_lab.py under another name: tests/ovs_lab.py is `ovs_lab` to the OVS tests
_spec = importlib.util.spec_from_file_location("ovs_lab_script", REPO / "scripts/ovs_lab.py")
assert _spec is not None
assert _spec.loader is not None
ovs_lab_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ovs_lab_script)

README_FLEET, README_PREFIX = "/tmp/ovs-fleet", "nmol"
# what the user types, in order; README's block must say exactly this (test below)
WALKTHROUGH = [
    "cp -r mappings /tmp/ovs-fleet && rm /tmp/ovs-fleet/guests/*",
    "python3 scripts/ovs_lab.py up --mappings /tmp/ovs-fleet --prefix nmol "
    "--guest g1@host-a host-a host-b",
    "export NETMAP_MAPPINGS=/tmp/ovs-fleet NETMAP_STATE_DIR=/tmp/ovs-fleet-state",
    "netmap check g1 --to host-b",
    "netmap realize g1 --host host-a",
    "ovs-vsctl --db=unix:/tmp/nmol-ovs/host-a/db.sock show",
    "ovs-vsctl --db=unix:/tmp/nmol-ovs/host-a/db.sock list Interface nm354fec9320",
    "netmap drift --host host-a",
    "ovs-vsctl --db=unix:/tmp/nmol-ovs/host-a/db.sock set Port nm354fec9320 tag=200",
    "netmap drift --host host-a",
    "netmap realize g1 --host host-a",
    "netmap release g1 --host host-a",
]


def readme_walkthrough() -> list[str]:
    """The commands of README's ovs walkthrough block: comments dropped, continued lines
    joined."""
    readme = (REPO / "README.rst").read_text()
    start = readme.index("    cp -r mappings /tmp/ovs-fleet")
    block = []
    for line in readme[start:].splitlines():
        if line and not line.startswith("    "):
            break
        block.append(line)
    joined = re.sub(r"\\\n\s*", "", "\n".join(block))
    commands = [line.split("  #")[0].strip() for line in joined.splitlines()]
    return [c for c in commands if c and not c.startswith("#")]


def test_readme_walkthrough_is_the_one_tested() -> None:
    assert readme_walkthrough() == WALKTHROUGH
    # the tap README names is the one realize makes for g1's first NIC
    assert all(tap_name("g1", 0) in c for c in WALKTHROUGH if "Interface" in c or "Port" in c)


def test_up_rebinds_prod_to_ovs_and_keeps_the_mappings_valid(tmp_path: Path) -> None:
    fleet_dir = tmp_path / "fleet"
    shutil.copytree(EXAMPLE_MAPPINGS, fleet_dir)
    before = load_fleet(fleet_dir)
    hosts = ["host-a", "host-b", "host-c", "host-d"]
    ovs_lab_script.prepare(before, fleet_dir, "nmolp", "prod", hosts)
    after = load_fleet(fleet_dir)
    for host in hosts:
        prod = after.hosts[host].bindings["prod"]
        assert (prod.mode, prod.uplink, prod.datapath_type) == (
            "ovs", before.hosts[host].bindings["prod"].uplink, "netdev")
        assert prod.bridge == before.hosts[host].bindings["prod"].bridge  # host-d's br-prod
        assert after.hosts[host].netns == f"nmolp-{host}"
        assert prod.ovsdb == f"unix:/tmp/nmolp-ovs/{host}/db.sock"
        # only what shared prod's uplink went: a vxlan underlay cannot be an OVS port
        gone = set(before.hosts[host].bindings) - set(after.hosts[host].bindings)
        assert gone == ({"tenant-blue"} if host in ("host-a", "host-b") else set())
        for name, binding in after.hosts[host].bindings.items():
            if name != "prod":
                assert binding == before.hosts[host].bindings[name]
    text = (fleet_dir / "hosts/host-b.toml").read_text()
    assert text.startswith("# Same fabric as host-a, other NIC names")  # comments stay
    assert "the underlay needs an address" not in text  # with the table it was in


def _daemons(directory: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-af", str(directory)], capture_output=True, text=True)
    return found.stdout.splitlines()


SOL_PACKET, PACKET_AUXDATA, TP_STATUS_VLAN_VALID = 263, 8, 1 << 4


def vlan_on_the_wire(fabric: str, netns: str, tap: str, mac: str) -> set[int | None]:
    """The 802.1Q VLAN IDs (None: untagged) of a broadcast written into `tap` as the lab's
    fabric sees it, on every veth and segment bridge there. The kernel moves a received
    tag into the packet's metadata, so it is read from PACKET_AUXDATA (or, if left in
    place, from the frame)."""
    token = uuid.uuid4().bytes
    with entered_netns(fabric):
        sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    sniffer.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    writer = tap_fd(netns, tap)
    seen: set[int | None] = set()
    try:
        poller = select.poll()
        poller.register(sniffer, select.POLLIN)
        deadline, next_send = time.monotonic() + 5, 0.0
        while time.monotonic() < deadline and not seen:
            if time.monotonic() >= next_send:  # again until the port forwards, as ping does
                os.write(writer, frame("ff:ff:ff:ff:ff:ff", mac, token))
                next_send = time.monotonic() + 0.2
            for _ in poller.poll(50):
                data, ancillary, _flags, _addr = sniffer.recvmsg(4096, 256)
                if token not in data:
                    continue
                vid = None
                for level, kind, value in ancillary:
                    if (level, kind) == (SOL_PACKET, PACKET_AUXDATA):
                        status, *_, tci, _tpid = struct.unpack("IIIHHHH", value[:20])
                        if status & TP_STATUS_VLAN_VALID:
                            vid = tci & 0xFFF
                if data[12:14] == b"\x81\x00":
                    vid = int.from_bytes(data[14:16], "big") & 0xFFF
                seen.add(vid)
    finally:
        os.close(writer)
        sniffer.close()
    return seen


@pytest.mark.netns
@needs_netns
@pytest.mark.skipif(missing() is not None, reason=str(missing()))
def test_up_refuses_the_repos_own_mappings() -> None:
    refused = subprocess.run([sys.executable, str(REPO / "scripts/ovs_lab.py"), "up",
                              "--mappings", str(REPO / "mappings"), "host-a"],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
    assert refused.returncode == 2
    assert "copy them first" in refused.stderr


@pytest.mark.netns
@needs_netns
@pytest.mark.skipif(missing() is not None, reason=str(missing()))
def test_readme_ovs_walkthrough(tmp_path: Path) -> None:
    prefix = f"nmol{os.getpid() % 1000}"
    fleet = str(tmp_path / "ovs-fleet")
    ovs_dir = ovs_lab_script.ovs_directory(prefix)

    def ours(command: str) -> list[str]:
        """README's command with this test's directory and prefix."""
        command = command.replace(README_FLEET, fleet).replace(
            f"--prefix {README_PREFIX}", f"--prefix {prefix}").replace(
            f"/tmp/{README_PREFIX}-ovs/", f"{ovs_dir}/")
        return shlex.split(command)

    steps = iter(WALKTHROUGH)
    copy = ours(next(steps))  # cp -r SRC DST && rm DST/guests/*
    assert copy[:3] == ["cp", "-r", "mappings"]
    assert copy[5:7] == ["rm", f"{fleet}/guests/*"]
    shutil.copytree(REPO / copy[2], copy[3])
    for old in Path(copy[3], "guests").iterdir():
        old.unlink()

    up_args = ours(next(steps))
    assert up_args[:2] == ["python3", "scripts/ovs_lab.py"]
    up = subprocess.Popen([sys.executable, *up_args[1:]], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=REPO)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    exported = ours(next(steps))
    assert exported[0] == "export"
    env.update(item.split("=", 1) for item in exported[1:])
    assert env["NETMAP_STATE_DIR"] == f"{fleet}-state"

    def run(command: str) -> subprocess.CompletedProcess:
        args = ours(command)
        program = {"netmap": [sys.executable, "-m", "netmap"],
                   "ovs-vsctl": [shutil.which("ovs-vsctl") or "/usr/bin/ovs-vsctl"]}[args[0]]
        return subprocess.run([*program, *args[1:]], capture_output=True, text=True,
                              cwd=REPO, env=env, timeout=120, check=False)

    tap = tap_name("g1", 0)
    try:
        said_text = wait_until_up(up)
        assert "removed [networks.tenant-blue] (vxlan on eth0)" in said_text
        assert f"ovs-vsctl --db=unix:{ovs_dir}/host-a/db.sock show" in said_text

        checked = run(next(steps))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "compatible: host-b realizes the same topology" in checked.stdout

        realized = run(next(steps))
        assert realized.returncode == 0, realized.stdout + realized.stderr
        assert f"NIC 0 prod (ovs): {tap}" in realized.stdout
        # README: VLAN 100 is the port's tag, on the wire as 802.1Q, with no kernel VLAN
        # device (the CI kernel has no 802.1Q module)
        kinds = ip_links(f"{prefix}-host-a")
        assert not [k for k in kinds if k.get("linkinfo", {}).get("info_kind") == "vlan"]
        assert vlan_on_the_wire(f"{prefix}-fabric", f"{prefix}-host-a", tap,
                                "52:54:00:0b:5e:01") == {100}

        shown = run(next(steps))
        assert shown.returncode == 0, shown.stderr
        assert re.search(r"Bridge br-eth0\n\s+datapath_type: netdev\n", shown.stdout)
        assert re.search(rf"Port {tap}\n\s+tag: 100\n", shown.stdout), shown.stdout
        assert re.search(r"Port eth0\n\s+Interface eth0", shown.stdout), shown.stdout
        assert re.search(r"Port br-eth0\n\s+Interface br-eth0\n\s+type: internal",
                         shown.stdout), shown.stdout
        listed = run(next(steps))
        assert listed.returncode == 0, listed.stderr
        ids = re.search(r"^external_ids\s*: (.*)$", listed.stdout, re.M)
        assert ids is not None, listed.stdout
        for pair in ('attached-mac="52:54:00:0b:5e:01"', "iface-id=g1-nic0",
                     "iface-status=active", "vm-id=g1", "netmap-owner=g1",
                     "netmap-network=prod"):
            assert pair in ids.group(1), ids.group(1)

        drift = run(next(steps))
        # the lab's hosts have no SR-IOV pool and no vhost-net; nothing about OVS
        assert drift.returncode == 1, drift.stdout + drift.stderr
        assert "OVS_" not in drift.stdout, drift.stdout
        clean_codes = set(re.findall(r"^\S+ ([A-Z_]+) ", drift.stdout, re.M))
        assert clean_codes == {"SRIOV_MISSING", "FEATURE_MISSING", "BRIDGE_MISSING"}

        retagged = run(next(steps))
        assert retagged.returncode == 0, retagged.stderr
        drift = run(next(steps))
        assert drift.returncode == 1
        assert set(re.findall(r"^\S+ ([A-Z_]+) ", drift.stdout, re.M)) == clean_codes | {
            "OVS_PORT_WRONG_TAG"}
        assert re.search(r"has tag 200, not\s+100", drift.stdout), drift.stdout

        repaired = run(next(steps))
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert "1 repair" in repaired.stdout, repaired.stdout
        assert run(f"ovs-vsctl --db=unix:/tmp/nmol-ovs/host-a/db.sock get Port {tap} tag"
                   ).stdout.strip() == "100"
        drift = run("netmap drift --host host-a")
        assert set(re.findall(r"^\S+ ([A-Z_]+) ", drift.stdout, re.M)) == clean_codes

        released = run(next(steps))
        assert released.returncode == 0, released.stdout + released.stderr
        bridges = run("ovs-vsctl --db=unix:/tmp/nmol-ovs/host-a/db.sock list-br")
        assert bridges.returncode == 0
        assert bridges.stdout.strip() == ""
        links = subprocess.run(["ip", "-n", f"{prefix}-host-a", "-o", "link"],
                               capture_output=True, text=True, check=True).stdout
        assert tap not in links
        assert next(steps, None) is None  # every README step ran
    finally:
        interrupt(up, 60)
    assert up.returncode == 0, up.stderr.read() if up.stderr else ""
    assert lab_namespaces(prefix) == []
    assert _daemons(ovs_dir) == []
    assert not ovs_dir.exists()
