"""VLAN networks on Debian's kernel (8021q, bridge VLAN filtering): macvtap in every mode on
uplink.VLAN, and a VLAN-filtering bridge with the uplink as trunk and the tap as access
port. The uplinks are dummy devices of the VM; everything is read back through iproute2.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmhost import HOST, bridge, guest, host_dump, ip

from netmap.cli import main
from netmap.errors import ApplyError
from netmap.load import load_fleet
from netmap.netlink.apply import realize_plan
from netmap.plan.planner import build_plan
from netmap.query.graph import build_graph

pytestmark = pytest.mark.vm
MACVTAP_VIDS = {"macvtap-bridge": 101, "macvtap-vepa": 102, "macvtap-private": 103,
                "macvtap-passthrough": 104}
KERNEL_MODE = {"macvtap-bridge": "bridge", "macvtap-vepa": "vepa",
               "macvtap-private": "private", "macvtap-passthrough": "passthru"}
BRIDGE_VID = 110
# passthrough hands its uplink (here: nmvmup2.104) to one guest; netmap's loader keeps every
# other network off that uplink, so it gets one of its own
UPLINK = {mode: "nmvmup2" if mode == "macvtap-passthrough" else "nmvmup0"
          for mode in MACVTAP_VIDS}
UPLINKS = ("nmvmup0", "nmvmup1", "nmvmup2")
NETWORKS = "".join(f'[networks.{mode}]\nsegment = "lab"\nvlan = {vid}\n\n'
                   for mode, vid in MACVTAP_VIDS.items()) + (
    f'[networks.tagged-bridge]\nsegment = "lab"\nvlan = {BRIDGE_VID}\n')
HOST_MAPPING = f"""[host]
name = "{HOST}"
features = ["tun", "macvtap", "bridge", "vhost-net"]

[uplinks.nmvmup0]
segments = ["lab"]

[uplinks.nmvmup1]
segments = ["lab"]

[uplinks.nmvmup2]
segments = ["lab"]

[networks.tagged-bridge]
mode = "bridge"
uplink = "nmvmup1"
""" + "".join(f'\n[networks.{mode}]\nmode = "{mode}"\nuplink = "{UPLINK[mode]}"\n'
              for mode in MACVTAP_VIDS)
MACS = {mode: f"52:54:00:1a:00:0{i}" for i, mode in enumerate(MACVTAP_VIDS, 1)}
BRIDGE_MAC = "52:54:00:1a:01:01"


@pytest.fixture
def uplinks() -> Iterator[None]:
    """Dummy uplinks, up; deleted after the test with whatever still sits on them."""
    for name in UPLINKS:
        ip("link", "add", name, "type", "dummy")
        ip("link", "set", name, "up")
    yield
    for name in UPLINKS:
        ip("link", "del", name, check=False)


@pytest.fixture
def lab(uplinks, fleet) -> Path:
    return fleet(NETWORKS, HOST_MAPPING, {
        "macvtaps": guest("macvtaps", *((mode, MACS[mode]) for mode in MACVTAP_VIDS)),
        "bridged": guest("bridged", ("tagged-bridge", BRIDGE_MAC)),
        "one": guest("one", ("macvtap-bridge", "52:54:00:1a:02:01"))})


def links() -> dict[str, dict]:
    return {link["ifname"]: link for link in json.loads(ip("-d", "-j", "link", "show"))}


def bridge_vlans() -> dict[str, dict[int, list[str]]]:
    return {port["ifname"]: {v["vlan"]: sorted(v.get("flags", [])) for v in port["vlans"]}
            for port in json.loads(bridge("-j", "vlan", "show") or "[]")}


def test_macvtap_in_every_mode_on_the_vlan_subinterface(lab) -> None:
    before = host_dump()
    assert main(["realize", "macvtaps", "--host", HOST]) == 0
    now = links()
    for mode, vid in MACVTAP_VIDS.items():
        sub = now[f"{UPLINK[mode]}.{vid}"]
        assert sub["linkinfo"]["info_kind"] == "vlan"
        assert sub["linkinfo"]["info_data"]["id"] == vid
        assert sub["link"] == UPLINK[mode]
        # (a passthru macvtap gives its lower device the guest's MAC too: kernel behaviour)
        taps = [link for link in now.values() if link.get("address") == MACS[mode]
                and link.get("linkinfo", {}).get("info_kind") == "macvtap"]
        assert len(taps) == 1, f"{mode}: {len(taps)} macvtaps with the guest's MAC"
        tap = taps[0]
        assert tap["link"] == f"{UPLINK[mode]}.{vid}"
        assert tap["linkinfo"]["info_data"]["mode"] == KERNEL_MODE[mode]

    realized = host_dump()
    assert main(["realize", "macvtaps", "--host", HOST]) == 0
    assert host_dump() == realized  # a second realize changes nothing at all

    assert main(["release", "macvtaps", "--host", HOST]) == 0
    assert host_dump() == before  # the sub-interfaces netmap made are gone too


def test_vlan_filtering_bridge_uplink_trunk_tap_access(lab) -> None:
    before = host_dump()
    assert main(["realize", "bridged", "--host", HOST]) == 0
    now = links()
    master = now["nmvmup1"]["master"]
    assert now[master]["linkinfo"]["info_data"]["vlan_filtering"] == 1
    ports = [name for name, link in now.items() if link.get("master") == master]
    taps = [name for name in ports if name != "nmvmup1"]
    assert len(taps) == 1
    assert now[taps[0]]["linkinfo"]["info_kind"] == "tun"
    vlans = bridge_vlans()
    assert BRIDGE_VID in vlans["nmvmup1"]
    assert vlans["nmvmup1"][BRIDGE_VID] == []
    assert vlans[taps[0]] == {BRIDGE_VID: ["Egress Untagged", "PVID"]}  # access port only

    realized = host_dump()
    assert main(["realize", "bridged", "--host", HOST]) == 0
    assert host_dump() == realized

    assert main(["release", "bridged", "--host", HOST]) == 0
    assert host_dump() == before


def test_release_keeps_a_subinterface_netmap_did_not_make(lab) -> None:
    ip("link", "add", "link", "nmvmup0", "name", "nmvmup0.101", "type", "vlan", "id", "101")
    ip("link", "set", "nmvmup0.101", "up")
    before = host_dump()
    assert main(["realize", "one", "--host", HOST]) == 0
    tap = next(link for link in links().values() if link.get("address") == "52:54:00:1a:02:01")
    assert tap["link"] == "nmvmup0.101"  # the existing one, exactly what was needed
    assert main(["release", "one", "--host", HOST]) == 0
    assert host_dump() == before  # nmvmup0.101 is still there, as it was


def test_failure_before_every_step_leaves_the_host_as_before(lab) -> None:
    fleet = load_fleet(lab)
    graph = build_graph(fleet)
    for name in ("macvtaps", "bridged"):
        plan = build_plan(graph, fleet.guests[name], fleet.hosts[HOST])
        before = host_dump()
        assert len(plan.steps) >= 3
        for failing in range(len(plan.steps)):
            def hook(position: int, _step, failing=failing) -> None:
                if position == failing:
                    raise RuntimeError("injected")

            with pytest.raises(ApplyError, match="every change was undone"):
                realize_plan(plan, on_step=hook)
            assert host_dump() == before, f"{name}: step {failing} left changes behind"
        assert realize_plan(plan).changed  # and afterwards it still works
        assert main(["release", name, "--host", HOST]) == 0
        assert host_dump() == before
