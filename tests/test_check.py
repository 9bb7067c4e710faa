"""The pre-migration check and placement, on the example fleet and on small fleets made here."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import EXAMPLE_MAPPINGS, write_fleet
from hypothesis import given, settings
from hypothesis import strategies as st

from netmap.load import load_fleet
from netmap.modes import REGISTRY
from netmap.query import graph as g
from netmap.query.graph import build_graph, guest_view
from netmap.query.placement import hosts_for_fleet
from netmap.rules.check import check_migration

NETWORKS = """
[networks.prod]
segment = "fab"
vlan = 100
mtu = 9000

[networks.blue]
vni = 7
mtu = 1450
"""


def host(name: str, body: str, features: str = '"vhost-net"', extra: str = "") -> str:
    return f'[host]\nname = "{name}"\nfeatures = [{features}]\n{extra}\n{body}'


PROD_ON = """
[uplinks.{up}]
segments = ["{seg}"]
mtu = {mtu}
{sriov}
[networks.prod]
mode = "{mode}"
uplink = "{up}"
"""


def prod_host(name: str, up: str = "eth0", mode: str = "macvtap-vepa", seg: str = "fab",
              mtu: int = 9000, sriov: str = "", **kw: str) -> str:
    return host(name, PROD_ON.format(up=up, mode=mode, seg=seg, mtu=mtu, sriov=sriov), **kw)


def guest(name: str, on: str, *nics: str) -> str:
    out = f'[guest]\nname = "{name}"\nhost = "{on}"\n'
    for nic in nics:
        out += f"\n[[nics]]\n{nic}\n"
    return out


def nic(network: str = "prod", mac: str = "52:54:00:00:00:01", **keys: str) -> str:
    lines = [f'network = "{network}"', f'mac = "{mac}"']
    lines += [f"{k} = {v}" for k, v in keys.items()]
    return "\n".join(lines)


def fleet(tmp_path: Path, hosts: dict[str, str], guests: dict[str, str]):
    loaded = load_fleet(write_fleet(tmp_path, NETWORKS, hosts, guests))
    assert loaded.problems == (), loaded.problems
    return build_graph(loaded)


def codes(report) -> dict[str, str]:
    return {f.code: f.severity for f in report.findings}


@pytest.fixture(scope="module")
def example():
    return build_graph(load_fleet(EXAMPLE_MAPPINGS))


def test_example_compatible_migration(example):
    report = check_migration(example, "vm1", "host-b")
    assert report.compatible
    assert report.findings == ()
    before, after = report.pairs[0]
    assert (before.uplink, after.uplink) == ("eth0", "eno2")
    assert (before.segment, before.vlan, before.mtu) == (after.segment, after.vlan, after.mtu)


def test_example_warning_only_migration(example):
    report = check_migration(example, "vm2", "host-c")
    assert report.compatible
    assert codes(report) == {"SEMANTIC_CHANGED": "warning"}
    assert not check_migration(example, "vm2", "host-c", strict=True).compatible


def test_example_incompatible_migration(example):
    report = check_migration(example, "vm1", "host-c")
    assert not report.compatible
    unbound = [f for f in report.findings if f.code == "NETWORK_UNBOUND"]
    assert unbound[0].nic == 1
    assert "storage" in unbound[0].message
    assert unbound[0].hint


def test_segment_unreachable_and_vhost(example):
    report = check_migration(example, "vm1", "host-d")
    found = codes(report)
    assert found["SEGMENT_UNREACHABLE"] == "error"
    assert found["VHOST_MISSING"] == "error"  # vm1's prod NIC requires vhost-net


def test_vhost_preferred_is_a_warning(tmp_path: Path):
    graph = fleet(tmp_path, {"a": prod_host("a"), "b": prod_host("b", features="")},
                  {"g": guest("g", "a", nic())})
    assert codes(check_migration(graph, "g", "b")) == {"VHOST_MISSING": "warning"}


def test_mtu_too_small_names_the_limit(tmp_path: Path):
    graph = fleet(tmp_path, {"a": prod_host("a"), "b": prod_host("b", up="eno2", mtu=1500)},
                  {"g": guest("g", "a", nic())})
    report = check_migration(graph, "g", "b")
    finding = next(f for f in report.findings if f.code == "MTU_TOO_SMALL")
    assert "9000" in finding.message
    assert "eno2" in finding.message
    # a guest that declares it only uses 1500 fits
    graph = fleet(tmp_path, {}, {"g": guest("g", "a", nic(mtu="1500"))})
    assert check_migration(graph, "g", "b").compatible


def test_vxlan_underlay_overhead_limits_mtu(tmp_path: Path):
    body = ('[uplinks.eth1]\nsegments = ["fab"]\nmtu = {mtu}\n'
            '[networks.blue]\nmode = "vxlan"\nuplink = "eth1"\n')
    graph = fleet(tmp_path, {"a": host("a", body.format(mtu=1500)),
                             "b": host("b", body.format(mtu=1450))},
                  {"g": guest("g", "a", nic("blue"))})
    report = check_migration(graph, "g", "b")
    assert codes(report) == {"MTU_TOO_SMALL": "error"}
    assert "vxlan overhead" in report.findings[0].message


def test_vlan_override_mismatch(tmp_path: Path):
    b = prod_host("b").replace('uplink = "eth0"', 'uplink = "eth0"\nvlan = 101')
    graph = fleet(tmp_path, {"a": prod_host("a"), "b": b}, {"g": guest("g", "a", nic())})
    assert codes(check_migration(graph, "g", "b"))["VLAN_MISMATCH"] == "error"


def test_pinned_semantic_is_an_error(tmp_path: Path):
    graph = fleet(tmp_path, {"a": prod_host("a"), "b": prod_host("b", mode="macvtap-private")},
                  {"g": guest("g", "a", nic(semantic='"external-hairpin"'))})
    assert codes(check_migration(graph, "g", "b"))["SEMANTIC_CHANGED"] == "error"


def test_free_vfs_count_guests_already_there(tmp_path: Path):
    pool = "sriov = { total_vfs = 2 }"
    hosts = {"a": prod_host("a", mode="sriov-vf", sriov=pool),
             "b": prod_host("b", mode="sriov-vf", sriov=pool)}
    guests = {"g": guest("g", "a", nic()),
              "x": guest("x", "b", nic(mac="52:54:00:00:00:02")),
              "y": guest("y", "b", nic(mac="52:54:00:00:00:03"))}
    report = check_migration(fleet(tmp_path, hosts, guests), "g", "b")
    finding = next(f for f in report.findings if f.code == "NO_FREE_VF")
    assert "0 free VF(s) of 2" in finding.message
    (tmp_path / "guests" / "y.toml").unlink()
    assert check_migration(fleet(tmp_path, {}, {}), "g", "b").compatible


def test_passthrough_uplink_taken(tmp_path: Path):
    hosts = {"a": prod_host("a", mode="macvtap-passthrough"),
             "b": prod_host("b", mode="macvtap-passthrough")}
    guests = {"g": guest("g", "a", nic()), "x": guest("x", "b", nic(mac="52:54:00:00:00:02"))}
    assert "UPLINK_TAKEN" in codes(check_migration(fleet(tmp_path, hosts, guests), "g", "b"))


def test_mac_in_use_on_destination(tmp_path: Path):
    hosts = {"a": prod_host("a"), "b": prod_host("b")}
    guests = {"g": guest("g", "a", nic()), "x": guest("x", "b", nic("blue"))}
    # x uses g's MAC on another network, but on the destination host
    body = ('[uplinks.eth1]\nsegments = ["fab"]\n[networks.blue]\nmode = "vxlan"\n'
            'uplink = "eth1"\n')
    hosts["b"] += body
    report = check_migration(fleet(tmp_path, hosts, guests), "g", "b")
    assert codes(report)["MAC_IN_USE"] == "error"


def test_mac_duplicate_on_segment(tmp_path: Path):
    hosts = {"a": prod_host("a"), "b": prod_host("b"), "c": prod_host("c")}
    guests = {"g": guest("g", "a", nic()), "x": guest("x", "c", nic())}
    report = check_migration(fleet(tmp_path, hosts, guests), "g", "b")
    assert codes(report)["MAC_DUPLICATE"] == "error"


def test_derived_name_too_long(tmp_path: Path):
    hosts = {"a": prod_host("a"), "b": prod_host("b", up="enp129s0f0np0")}
    report = check_migration(fleet(tmp_path, hosts, {"g": guest("g", "a", nic())}), "g", "b")
    finding = next(f for f in report.findings if f.code == "NAME_TOO_LONG")
    assert "enp129s0f0np0.100" in finding.message


def test_host_full(tmp_path: Path):
    hosts = {"a": prod_host("a"), "b": prod_host("b", extra="max_guests = 1")}
    guests = {"g": guest("g", "a", nic()), "x": guest("x", "b", nic(mac="52:54:00:00:00:02"))}
    assert "HOST_FULL" in codes(check_migration(fleet(tmp_path, hosts, guests), "g", "b"))


def test_check_on_the_graph_of_its_two_hosts_is_the_check_on_the_whole(tmp_path: Path):
    """`netmap check` builds the graph of the source and destination alone."""
    pool = "sriov = { total_vfs = 1 }"
    hosts = {"a": prod_host("a"), "b": prod_host("b", extra="max_guests = 1"),
             "c": prod_host("c"), "d": prod_host("d", mode="sriov-vf", sriov=pool)}
    guests = {"g": guest("g", "a", nic()), "x": guest("x", "c", nic()),
              "y": guest("y", "b", nic(mac="52:54:00:00:00:02")),
              "z": guest("z", "d", nic(mac="52:54:00:00:00:03"))}
    for graph in (fleet(tmp_path, hosts, guests), build_graph(load_fleet(EXAMPLE_MAPPINGS))):
        whole = g.fleet_of(graph)
        for name, one in whole.guests.items():
            for dest in whole.hosts:
                part = g.build_graph_of(whole, {dest, one.host}, name)
                assert check_migration(part, name, dest) == check_migration(graph, name, dest)


def test_hosts_for_ranks_clean_hosts_first(example):
    ranked = hosts_for_fleet(g.fleet_of(example), "vm2")
    assert [c.host for c in ranked][:2] == ["host-b", "host-c"]
    assert ranked[0].compatible
    assert ranked[0].warnings == 0
    assert ranked[1].compatible
    assert ranked[1].warnings == 1
    blocked = next(c for c in ranked if c.host == "host-d")
    assert not blocked.compatible
    assert blocked.blocking.code == "NETWORK_UNBOUND"


# --- property: a guest always passes the check against its own host ---------------------------

uplink_names = st.sampled_from(["eth0", "eno2", "ens1f0", "enp65s0f0"])


@st.composite
def one_host_fleets(draw):
    mode = draw(st.sampled_from([m for m in REGISTRY if not REGISTRY[m].overlay]))
    up = draw(uplink_names)
    mtu = draw(st.integers(min_value=1280, max_value=9216))
    vlan = draw(st.one_of(st.none(), st.integers(min_value=1, max_value=4094)))
    sriov = "sriov = { total_vfs = 4 }" if mode == "sriov-vf" else ""
    text = prod_host("h", up=up, mode=mode, mtu=mtu, sriov=sriov)
    if vlan is not None:
        text = text.replace(f'uplink = "{up}"', f'uplink = "{up}"\nvlan = {vlan}')
    vhost = draw(st.sampled_from(['"required"', '"preferred"', '"off"']))
    pin = draw(st.booleans())
    keys = {"vhost": vhost, **({"semantic": f'"{_class(mode)}"'} if pin else {})}
    return text, guest("g", "h", nic(**keys))


def _class(mode: str) -> str:
    return REGISTRY[mode].semantic


@settings(max_examples=40, deadline=None)
@given(one_host_fleets())
def test_a_guest_always_fits_its_own_host(tmp_path_factory, case):
    host_text, guest_text = case
    graph = fleet(tmp_path_factory.mktemp("f"), {"h": host_text}, {"g": guest_text})
    report = check_migration(graph, "g", "h", strict=True)
    assert report.compatible, report.findings
    view = guest_view(graph, graph.graph["fleet"].guests["g"], "h")
    assert [v.mtu for v in view] == [p[1].mtu for p in report.pairs]
