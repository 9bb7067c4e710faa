"""The ovs mode on the kernel datapath (datapath_type "system": Debian's openvswitch module),
which the CI kernel lacks. Two hosts as in test_frames.py: the VM itself runs its own
ovsdb-server and ovs-vswitchd (tests/ovs_lab.py) with the first igb PF as the OVS bridge's
uplink, a trunk; the second PF, in namespace OTHER, is a host whose networks are Linux
bridges (VLAN filtering): QEMU's hub is the wire between them. Frames pass between guests
with the same tag (on the OVS host, and across the wire 802.1Q-tagged to the Linux bridge
host), none between different tags. Read back with ovs-vsctl, ovs-dpctl and iproute2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from frames import frame
from ovs_lab import OvsInstance, missing, start_ovs
from test_frames import OTHER, other_host
from vmhost import HOST, arrives, guest, ip, tap_fd, wait_until

from netmap.cli import main

pytestmark = pytest.mark.vm
BRIDGE = "br-nmov"
NETWORKS = """[networks.red]
segment = "hub"
vlan = 140

[networks.blue]
segment = "hub"
vlan = 141
"""
MACS = {"a": "52:54:00:f4:00:01", "b": "52:54:00:f4:00:02", "c": "52:54:00:f4:00:03",
        "d": "52:54:00:f4:00:04", "e": "52:54:00:f4:00:05"}
WHERE = {"a": ("red", HOST), "d": ("blue", HOST), "e": ("red", HOST),
         "b": ("red", OTHER), "c": ("blue", OTHER)}


def ovs_mapping(uplink: str, remote: str) -> str:
    nets = "".join(f'\n[networks.{net}]\nmode = "ovs"\nuplink = "{uplink}"\n'
                   f'bridge = "{BRIDGE}"\ndatapath_type = "system"\n' for net in ("red", "blue"))
    return (f'[host]\nname = "{HOST}"\nfeatures = ["tun", "vhost-net"]\novsdb = "{remote}"\n'
            f'\n[uplinks.{uplink}]\nsegments = ["hub"]\n{nets}')


def bridge_mapping(uplink: str) -> str:
    nets = "".join(f'\n[networks.{net}]\nmode = "bridge"\nuplink = "{uplink}"\n'
                   for net in ("red", "blue"))
    return (f'[host]\nname = "{OTHER}"\nnetns = "{OTHER}"\nfeatures = ["tun", "bridge"]\n'
            f'\n[uplinks.{uplink}]\nsegments = ["hub"]\n{nets}')


def dpctl() -> str:
    """The kernel's OVS datapaths and their ports, as the module reports them."""
    return subprocess.run(["ovs-dpctl", "show"], capture_output=True, text=True,
                          check=False).stdout


@pytest.fixture
def ovs_hosts(fleet) -> Iterator[tuple[OvsInstance, str]]:
    if subprocess.run(["modprobe", "openvswitch"], capture_output=True).returncode:
        pytest.skip("no openvswitch module in this kernel")
    if missing():
        pytest.skip(str(missing()))
    directory = Path(tempfile.mkdtemp(prefix="nmov", dir="/tmp"))  # a short socket path
    with other_host() as (here, there):
        ovs = start_ovs(None, directory)
        root = fleet(NETWORKS, ovs_mapping(here, ovs.remote), {
            name: guest(name, (net, MACS[name])).replace(HOST, host)
            for name, (net, host) in WHERE.items()})
        (root / "hosts" / f"{OTHER}.toml").write_text(bridge_mapping(there))
        try:
            yield ovs, here
        finally:
            main(["release", "--all", "--host", HOST])
            main(["release", "--all", "--host", OTHER])
            ovs.stop()
            if "ovs-system" in dpctl():  # a datapath outlives ovs-vswitchd: never leave one
                subprocess.run(["ovs-dpctl", "del-dp", "ovs-system"], check=False)
            shutil.rmtree(directory, ignore_errors=True)


def _devices(capsys, *args: str) -> dict[str, str]:
    capsys.readouterr()
    assert main(["realize", *args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    results = out.get("guests", [out])
    return {r["guest"]: r["nics"][0]["device"] for r in results}


def _drift(capsys) -> dict[str, str]:
    capsys.readouterr()
    main(["drift", HOST, "--json"])
    return {f["code"]: f["message"] for f in json.loads(capsys.readouterr().out)["findings"]}


def test_ovs_kernel_datapath_frames_tags_drift_release(ovs_hosts, capsys) -> None:
    ovs, uplink = ovs_hosts
    taps = _devices(capsys, "--all", "--host", HOST)  # a, d, e: one transaction
    taps.update(_devices(capsys, "b", "c", "--host", OTHER))
    assert ovs.vsctl("get", "Bridge", BRIDGE, "datapath_type") == "system"
    ports = set(ovs.vsctl("list-ports", BRIDGE).split())
    assert ports == {uplink, taps["a"], taps["d"], taps["e"]}
    assert ovs.vsctl("get", "Port", taps["a"], "tag") == "140"
    assert ovs.vsctl("get", "Port", taps["d"], "tag") == "141"
    # the kernel datapath holds them: ports of ovs-system, in the module's own listing
    shown = dpctl()
    assert all(name in shown for name in (uplink, taps["a"], taps["d"]))
    assert json.loads(ip("-j", "link", "show", taps["a"]))[0].get("master") == "ovs-system"

    fds = {name: tap_fd(tap, OTHER if WHERE[name][1] == OTHER else None)
           for name, tap in taps.items()}
    try:
        def heard(sender: str, receiver: str, timeout: float) -> bool:
            token = uuid.uuid4().bytes
            out = frame("ff:ff:ff:ff:ff:ff", MACS[sender], token)
            return arrives(fds[receiver], token, lambda: os.write(fds[sender], out), timeout)

        assert heard("a", "e", 20), "e (red) never got a's broadcast on the same OVS bridge"
        assert heard("a", "b", 20), "b (red) never got a's broadcast across the igb wire"
        token = uuid.uuid4().bytes  # and back, unicast, from the Linux-bridge host
        reply = frame(MACS["a"], MACS["b"], token)
        assert arrives(fds["a"], token, lambda: os.write(fds["b"], reply), 20), \
            "a never got b's unicast reply"
        assert heard("d", "c", 20), "c (blue) never got d's (blue) broadcast"
        assert heard("a", "e", 20)  # sent and carried while the other tag hears nothing:
        assert not heard("a", "d", 3), "d (blue) got a frame of red on the OVS bridge"
        assert not heard("a", "c", 3), "c (blue) got a frame of red across the wire"
        assert not heard("d", "e", 3), "e (red) got a frame of blue on the OVS bridge"
    finally:
        for fd in fds.values():
            os.close(fd)

    assert not any(code.startswith("OVS") for code in _drift(capsys))
    ovs.vsctl("set", "Port", taps["a"], "tag=99")
    ovs.vsctl("del-port", BRIDGE, uplink)
    found = _drift(capsys)
    assert taps["a"] in found["OVS_PORT_WRONG_TAG"]
    assert "99" in found["OVS_PORT_WRONG_TAG"]
    assert uplink in found["OVS_UPLINK_MISSING"]
    assert main(["realize", "--all", "--host", HOST]) == 0  # repaired in one transaction
    assert ovs.vsctl("get", "Port", taps["a"], "tag") == "140"
    assert uplink in ovs.vsctl("list-ports", BRIDGE).split()
    assert not any(code.startswith("OVS") for code in _drift(capsys))

    assert main(["release", "--all", "--host", HOST]) == 0
    assert ovs.vsctl("list-br") == ""
    links = {link["ifname"]: link for link in json.loads(ip("-j", "link", "show"))}
    assert not {taps["a"], taps["d"], taps["e"]} & set(links)
    assert links[uplink].get("master") is None  # the PF is no OVS port any more
    # ovs-vswitchd removes the kernel datapath with its last bridge
    wait_until(lambda: "ovs-system" not in dpctl(), "the ovs-system datapath gone")
