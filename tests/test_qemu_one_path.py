"""The QEMU helper and realize are one kernel path: the helper plans realize's steps for its
one NIC and applies them through realize's transaction, so the host it makes is the host
realize makes, its shared devices are in state like any guest's, and they go (at QEMU's
exit, or by `netmap release`) by the rules every release follows. Lab namespaces nmqh*."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import guest_toml, needs_netns
from test_drift import lab_sysfs
from test_qemu_helper import FAKE_QEMU, HELPER, call_helper, helper_env, wait_gone
from test_realize import host_dump

from netmap.cli import main
from netmap.model.names import tap_name
from netmap.state import HostState

PREFIX = "nmqh"
SOLO_MAC = "52:54:00:5a:00:01"


@pytest.fixture
def lab(lab_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    built, mappings = lab_factory(PREFIX, ["host-a"])
    state = tmp_path / "state"
    monkeypatch.setenv("NETMAP_STATE_DIR", str(state))
    monkeypatch.setenv("NETMAP_MAPPINGS", str(mappings))
    acl = tmp_path / "qemu-helper.conf"
    acl.write_text("allow mgmt\nallow tenant-blue\n")
    return built.hosts["host-a"], mappings, acl, state


def comparable(dump: dict) -> dict:
    """A host dump where a tap realize made and one the helper handed to QEMU compare
    equal: the tun driver's own flags differ by design (realize's tap persists for QEMU to
    open by name; the helper's lives as long as QEMU's fd, and has a vnet header only when
    QEMU asks for one), and the kernel's random MAC of a new vxlan device (which a bridge
    may take as its own) is named by its device."""
    for link in dump["links"].values():
        if link.get("linkinfo", {}).get("info_kind") == "tun":
            link["linkinfo"].pop("info_data", None)
    text = json.dumps(dump, sort_keys=True)
    for name, link in sorted(dump["links"].items()):
        if link.get("linkinfo", {}).get("info_kind") == "vxlan":
            # as a bridge id, iproute2 prints it without leading zeros (de:54:a:...)
            short = ":".join(f"{int(part, 16):x}" for part in link["address"].split(":"))
            text = text.replace(link["address"], f"<{name}>").replace(short, f"<{name}>")
    return json.loads(text)


def state_steps(state: Path) -> dict[str, tuple[object, bool]]:
    """What state says netmap made on host-a, and whether it made it, by resource."""
    resources = HostState.load("host-a", state).data["resources"]
    return {key: (record["step"], record["created"]) for key, record in resources.items()}


def wait_released(state: Path, timeout: float = 10.0) -> None:
    """The helper's watcher writes state last: poll until no guest is left in it."""
    deadline = time.monotonic() + timeout
    while HostState.load("host-a", state).guests and time.monotonic() < deadline:
        time.sleep(0.05)


class FakeQemu:
    """A process that runs the helper as QEMU does, holds the fd and exits when told."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", FAKE_QEMU, *HELPER, *args],
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        status = self.proc.stdout.readline().split()
        assert status, status
        assert status[0] == "0", status
        self.name = self.proc.stdout.readline().split()[0]

    def exit(self) -> None:
        if self.proc.poll() is None:
            self.proc.communicate("\n", timeout=10)


@needs_netns
@pytest.mark.parametrize("network", ["mgmt", "tenant-blue", "mgmt-macvtap"])
def test_the_helper_makes_the_host_realize_makes(lab, network: str) -> None:
    netns, mappings, acl, state = lab
    if network == "mgmt-macvtap":  # mgmt as macvtap-bridge on eth1
        network = "mgmt"
        host_file = mappings / "hosts" / "host-a.toml"
        host_file.write_text(host_file.read_text().replace(
            '[networks.mgmt]\nmode = "bridge"', '[networks.mgmt]\nmode = "macvtap-bridge"'))
    (mappings / "guests" / "solo.toml").write_text(
        guest_toml("solo", "host-a", (network, SOLO_MAC)))
    before = host_dump(netns)
    assert main(["realize", "solo", "--host", "host-a"]) == 0
    realized, realized_state = comparable(host_dump(netns)), state_steps(state)
    assert main(["release", "solo", "--host", "host-a"]) == 0
    assert host_dump(netns) == before

    qemu = FakeQemu(["--use-vnet", f"--br={network}", "--guest=solo"],
                    helper_env(mappings, acl))
    try:
        assert qemu.name == tap_name("solo", 0)  # realize's name for the NIC
        assert comparable(host_dump(netns)) == realized
        assert state_steps(state) == realized_state  # the same steps, recorded alike
        assert list(HostState.load("host-a", state).guests) == [f"qemu:{qemu.name}"]
    finally:
        qemu.exit()
    wait_released(state)
    # QEMU gone: what the helper made went as a release of the last guest takes it
    assert HostState.load("host-a", state).data["resources"] == {}
    assert host_dump(netns) == before


@needs_netns
def test_shared_devices_are_in_state_and_go_with_the_last_user(lab, capsys) -> None:
    """Two QEMUs on mgmt share the bridge the first one's helper made. State names both as
    its users; drift reads the helper's devices as netmap's; `netmap release qemu:TAP`
    releases one endpoint like a guest (the bridge stays for the other), and the other
    QEMU's exit takes the bridge and eth1's enslavement with it."""
    from netmap.netlink.tapfd import tap_info

    netns, mappings, acl, state = lab
    before = host_dump(netns)
    env = helper_env(mappings, acl)
    env["NETMAP_STATE_DIR"] = str(state)
    first, second = call_helper(["--br=mgmt"], env), call_helper(["--br=mgmt"], env)
    try:
        assert (first.code, second.code) == (0, 0), first.stderr + second.stderr
        taps = [tap_info(first.fd)[0], tap_info(second.fd)[0]]
        owners = [f"qemu:{tap}" for tap in taps]
        recorded = HostState.load("host-a", state)
        for key in ("link:br-eth1", "port:eth1"):
            assert recorded.users(key) == owners, key
            assert recorded.resource(key)["created"] is True, key
        sysfs, dev = lab_sysfs(state.parent)  # the lab's uplinks as drift expects them
        assert main(["drift", "host-a", "--sysfs-root", str(sysfs), "--dev-root", str(dev),
                     "--json"]) == 0, capsys.readouterr().out
        assert json.loads(capsys.readouterr().out)["drift"] is False  # all of it netmap's

        capsys.readouterr()
        assert main(["release", owners[0], "--host", "host-a"]) == 0
        assert wait_gone(netns, taps[0])
        recorded = HostState.load("host-a", state)
        assert recorded.users("link:br-eth1") == owners[1:]
        assert "br-eth1" in host_dump(netns)["links"]
    finally:
        first.close()
        second.close()
    wait_released(state)
    assert HostState.load("host-a", state).data["resources"] == {}
    assert host_dump(netns) == before


def helper_plan(mappings: Path, network: str, **options: str):
    from netmap.qemu import plan_endpoint
    from netmap.qemu.helper import Request, load_mappings

    request = Request(fd=0, network=network, host="host-a", mappings=str(mappings),
                      **options)
    fleet, host = load_mappings(request)
    return plan_endpoint(request, fleet, host).plan


@pytest.mark.parametrize(("network", "nic"), [("mgmt", 1), ("prod", 0)])
def test_the_helpers_plan_is_realizes_plan_for_that_nic(mappings: Path, network: str,
                                                        nic: int) -> None:
    """Pure: for a guest it is told, the helper plans exactly realize's steps for the NIC
    on that network (bridge mode; macvtap with the network's VLAN), as its own state
    owner qemu:IFNAME."""
    from netmap.load import load_fleet
    from netmap.plan.planner import build_plan
    from netmap.query.graph import build_graph

    fleet = load_fleet(mappings)
    realized = build_plan(build_graph(fleet), fleet.guests["vm2"], fleet.hosts["host-a"])
    planned = helper_plan(mappings, network, guest="vm2")
    assert planned.nics == (realized.nics[nic],)
    assert planned.guest == f"qemu:{realized.nics[nic].device}"
    assert (planned.host, planned.netns) == ("host-a", None)  # run inside the namespace


@pytest.mark.parametrize(("options", "ids"), [
    ({}, set()),
    ({"mac": "52:54:00:12:34:56"}, {"attached-mac"}),
    ({"guest": "vm2"}, {"attached-mac", "iface-id"}),
])
def test_an_ovs_port_carries_only_the_ids_the_helper_knows(mappings: Path, options: dict,
                                                           ids: set[str]) -> None:
    """Pure: realize's OVS steps, but without the guest (or its MAC) the helper sets no
    logical port id every such helper would share, nor a MAC that is not the guest's."""
    from netmap.plan import EnsureOvsPort

    host_file = mappings / "hosts" / "host-a.toml"
    host_file.write_text(host_file.read_text().replace(
        '[networks.mgmt]\nmode = "bridge"', '[networks.mgmt]\nmode = "ovs"'))
    (nic,) = helper_plan(mappings, "mgmt", **options).nics
    port = next(s for s in nic.steps if isinstance(s, EnsureOvsPort) and s.port == nic.device)
    found = dict(port.external_ids)
    assert {"iface-id", "attached-mac"} & set(found) == ids
    assert found["netmap-owner"] == found["vm-id"] == options.get("guest", "qemu-helper")
    assert found["netmap-network"] == "mgmt"
