"""The fleet graph: its dict lookups against networkx's own graph, L2 domains as the
components of the NICs' paths (MAC_DUPLICATE, show's MAC clash, reachability), and which
answers import networkx. Pure: fleets are built from the model here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLE_MAPPINGS, REPO, write_fleet
from hypothesis import given, settings
from hypothesis import strategies as st

from netmap.cli import main
from netmap.load import load_fleet
from netmap.model.fleet import Binding, Fleet, Guest, GuestNic, Host, Network, Uplink
from netmap.query import graph as g
from netmap.query import l2
from netmap.query.drain import drain
from netmap.query.views import show_data
from netmap.rules.check import check_migration

MAC = "52:54:00:00:00:01"
NETWORKS = {
    "prod": Network("prod", 1500, segment="fab", vlan=100),
    "other": Network("other", 1500, segment="fab", vlan=200),
    "stor": Network("stor", 1500, segment="san", vlan=100),
    "blue": Network("blue", 1450, vni=7),
    "green": Network("green", 1450, vni=8),
}


def host(name: str, network: str = "prod", segments: tuple[str, ...] = ("fab",),
         vlan: int | None = None, mode: str = "macvtap-bridge") -> Host:
    """A host whose uplink eth0 reaches `segments` and binds `network` on it."""
    if NETWORKS[network].is_overlay:
        mode = "vxlan"
    return Host(name, uplinks={"eth0": Uplink("eth0", segments)},
                bindings={network: Binding(network, mode, "eth0", vlan=vlan)})


def guest(name: str, on: str | None, network: str = "prod", mac: str = MAC) -> Guest:
    return Guest(name, on, (GuestNic(0, network, mac),))


def fleet(*hosts: Host, guests: tuple[Guest, ...]) -> g.FleetGraph:
    return g.build_graph(Fleet(NETWORKS, {h.name: h for h in hosts},
                               {x.name: x for x in guests}))


def codes(report) -> list[str]:
    return [f.code for f in report.findings]


def duplicate(graph: g.FleetGraph, name: str = "g", dest: str = "b"):
    report = check_migration(graph, name, dest)
    return [f for f in report.findings if f.code == "MAC_DUPLICATE"]


# --- MAC_DUPLICATE: one MAC twice in one L2 domain --------------------------------------------

def test_same_mac_on_one_segment_and_vlan_on_two_hosts_is_a_duplicate():
    graph = fleet(host("a"), host("b"), host("c"), guests=(guest("g", "a"), guest("x", "c")))
    found = duplicate(graph)
    assert len(found) == 1
    assert "guest x (on c)" in found[0].message
    assert "(fab, VLAN 100)" in found[0].message


def test_the_duplicate_names_the_route_on_which_the_frames_meet():
    graph = fleet(host("a"), host("b"), host("c"), guests=(guest("g", "a"), guest("x", "c")))
    route = ("nic:g/0@b -> binding:b/prod -> uplink:b/eth0.100 -> segment:fab/vlan:100 -> "
             "uplink:c/eth0.100 -> binding:c/prod -> nic:x/0@c")
    assert route in duplicate(graph)[0].message


def test_same_mac_on_two_isolated_vlans_is_no_duplicate():
    graph = fleet(host("a"), host("b"), host("c", "other"),
                  guests=(guest("g", "a"), guest("x", "c", "other")))
    assert duplicate(graph) == []


def test_a_hosts_vlan_override_puts_its_guest_in_that_vlan():
    """c tags prod's frames with VLAN 200 on its uplink (its binding says so): x is in
    (fab, 200), not where prod's definition would put it."""
    graph = fleet(host("a"), host("b"), host("c", vlan=200),
                  guests=(guest("g", "a"), guest("x", "c")))
    assert duplicate(graph) == []


def test_another_network_tagged_into_the_same_vlan_is_a_duplicate():
    """c binds `other` (fab, VLAN 200) with VLAN 100 on its uplink: x's frames are in prod's
    domain, although their networks differ."""
    graph = fleet(host("a"), host("b"), host("c", "other", vlan=100),
                  guests=(guest("g", "a"), guest("x", "c", "other")))
    found = duplicate(graph)
    assert len(found) == 1
    assert "(fab, VLAN 100)" in found[0].message


def test_an_uplink_in_two_segments_joins_them():
    """c's uplink reaches fab and san: VLAN 100 on that wire is one domain in both, so x on
    stor (san, VLAN 100) shares one with g on prod (fab, VLAN 100)."""
    graph = fleet(host("a"), host("b"), host("c", "stor", ("fab", "san")),
                  guests=(guest("g", "a"), guest("x", "c", "stor")))
    assert len(duplicate(graph)) == 1


def test_segments_apart_stay_apart():
    graph = fleet(host("a"), host("b"), host("c", "stor", ("san",)),
                  guests=(guest("g", "a"), guest("x", "c", "stor")))
    assert duplicate(graph) == []


def test_l2_domains_are_components_a_third_wire_joins():
    """x is on san alone; y's uplink joins san to fab: g landing on fab shares a domain
    with both, x reached over y's wire."""
    graph = fleet(host("a"), host("b"), host("c", "stor", ("san",)),
                  host("d", "stor", ("fab", "san")),
                  guests=(guest("g", "a"), guest("x", "c", "stor"), guest("y", "d", "stor")))
    found = {f.message.split("guest ")[1].split(" ")[0]: f for f in duplicate(graph)}
    assert sorted(found) == ["x", "y"]
    assert "uplink:d/eth0.100" in found["x"].message


def test_a_guest_whose_uplink_misses_the_segment_is_where_its_uplink_is():
    """c binds prod to an uplink that reaches only lab: x's frames land on lab (c's own
    SEGMENT_UNREACHABLE), not on fab."""
    graph = fleet(host("a"), host("b"), host("c", segments=("lab",)),
                  guests=(guest("g", "a"), guest("x", "c")))
    assert duplicate(graph) == []


def test_a_guest_placed_nowhere_counts_where_its_network_is():
    graph = fleet(host("a"), host("b"), guests=(guest("g", "a"), guest("x", None)))
    found = duplicate(graph)
    assert len(found) == 1
    assert "(on no host)" in found[0].message


def test_one_vni_is_one_domain_on_every_host():
    graph = fleet(host("a", "blue"), host("b", "blue"), host("c", "blue"),
                  guests=(guest("g", "a", "blue"), guest("x", "c", "blue")))
    found = duplicate(graph)
    assert len(found) == 1
    assert "(vni:7, VLAN untagged)" in found[0].message


def test_two_vnis_are_two_domains_on_one_underlay():
    graph = fleet(host("a", "blue"), host("b", "blue"), host("c", "green"),
                  guests=(guest("g", "a", "blue"), guest("x", "c", "green")))
    assert duplicate(graph) == []


def test_same_mac_on_the_destination_host_is_in_use_whatever_the_domain():
    both = Host("b", uplinks={"eth0": Uplink("eth0", ("fab",))},
                bindings={n: Binding(n, "macvtap-bridge", "eth0") for n in ("prod", "other")})
    graph = fleet(host("a"), both, guests=(guest("g", "a"), guest("x", "b", "other")))
    assert "MAC_IN_USE" in codes(check_migration(graph, "g", "b"))


def test_mac_duplicate_is_the_same_on_the_graph_of_two_hosts():
    """check reads the other guest's host beyond the graph of source and destination."""
    whole = Fleet(NETWORKS, {h.name: h for h in (host("a"), host("b"),
                                                 host("c", "other", vlan=100))},
                  {x.name: x for x in (guest("g", "a"), guest("x", "c", "other"))})
    part = g.build_graph_of(whole, {"a", "b"}, "g")
    assert check_migration(part, "g", "b") == check_migration(g.build_graph(whole), "g", "b")


# --- reachability and paths -----------------------------------------------------------------

def test_a_nic_path_goes_nic_binding_wire_and_into_its_domains():
    graph = fleet(host("a", segments=("fab", "san")), guests=(guest("g", "a"),))
    path = l2.nic_path(graph, "g", GuestNic(0, "prod", MAC), "a")
    assert path.nodes == ("nic:g/0@a", "binding:a/prod", "uplink:a/eth0.100")
    assert path.domains == ("segment:fab/vlan:100", "segment:san/vlan:100")


def test_nics_reach_each_other_only_in_one_domain():
    graph = fleet(host("a"), host("b"), host("c", "other"),
                  guests=(guest("g", "a"), guest("x", "b", mac="52:54:00:00:00:02"),
                          guest("y", "c", "other", mac="52:54:00:00:00:03")))
    fleet_ = g.fleet_of(graph)
    paths = {name: l2.nic_path(graph, name, fleet_.guests[name].nics[0], fleet_.guests[name].host)
             for name in ("g", "x", "y")}
    graph_l2 = l2.l2_graph(paths.values())
    assert l2.reachable(graph_l2, paths["g"].nic, paths["x"].nic) is not None
    assert l2.reachable(graph_l2, paths["g"].nic, paths["y"].nic) is None


# --- show's MAC clash -----------------------------------------------------------------------

def test_show_marks_a_clash_only_in_one_domain():
    graph = fleet(host("a"), host("c", vlan=200), host("d"),
                  guests=(guest("g", "a"), guest("x", "c"), guest("y", "d")))
    data = show_data(g.fleet_of(graph), ["a", "c"])
    clash = {entry["guest"]: entry["mac_clash"] for h in data["hosts"] for u in h["uplinks"]
             for n in u["networks"] for entry in n["guests"]}
    assert clash["g"] == ["y"]
    assert clash["x"] == []


# --- drain ----------------------------------------------------------------------------------

def test_drain_moves_a_guest_where_its_mac_is_no_duplicate():
    """On b (an uplink in fab and san) g's MAC meets x's on san; on d it does not: the
    drain sends g to d, where the check passes."""
    graph = fleet(host("a"), host("b", segments=("fab", "san")), host("d"),
                  host("c", "stor", ("san",)),
                  guests=(guest("g", "a"), guest("x", "c", "stor")))
    assert "MAC_DUPLICATE" in codes(check_migration(graph, "g", "b"))
    plan = drain(graph, "a")
    assert [(move.guest, move.dest) for move in plan.moves] == [("g", "d")]


# --- which answers import networkx ----------------------------------------------------------

def _imports_networkx(argv: list[str], mappings: Path) -> bool:
    code = ("import sys\nfrom netmap.cli import main\n"
            f"main(['--mappings', {str(mappings)!r}, *{argv!r}])\n"
            "print('NETWORKX=' + str('networkx' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=False).stdout
    return out.strip().splitlines()[-1] == "NETWORKX=True"


@pytest.mark.parametrize("argv", [["check", "vm1", "--to", "host-b", "--json"],
                                  ["hosts-for", "vm1", "--json"], ["show", "--json"],
                                  ["show", "host-a", "--json"],
                                  ["diff", "host-a", "host-c", "--json"]])
def test_dict_lookups_answer_without_networkx(argv: list[str]):
    assert not _imports_networkx(argv, EXAMPLE_MAPPINGS)


def test_a_shared_mac_asks_networkx_for_its_domain(tmp_path: Path):
    networks = '[networks.prod]\nsegment = "fab"\nvlan = 100\n'
    body = ('[host]\nname = "{0}"\n[uplinks.eth0]\nsegments = ["fab"]\n'
            '[networks.prod]\nmode = "macvtap-bridge"\nuplink = "eth0"\n')
    guests = {name: f'[guest]\nname = "{name}"\nhost = "{on}"\n[[nics]]\nnetwork = "prod"\n'
              f'mac = "{MAC}"\n' for name, on in (("g", "a"), ("x", "c"))}
    root = write_fleet(tmp_path, networks, {h: body.format(h) for h in "abc"}, guests)
    assert _imports_networkx(["check", "g", "--to", "b", "--json"], root)


def test_a_vlan_override_in_a_mapping_moves_the_duplicate(tmp_path: Path, capsys):
    """End to end from TOML: c's binding tags prod 200, so x's MAC is no duplicate."""
    networks = '[networks.prod]\nsegment = "fab"\nvlan = 100\n'
    body = ('[host]\nname = "{0}"\n[uplinks.eth0]\nsegments = ["fab"]\n'
            '[networks.prod]\nmode = "macvtap-bridge"\nuplink = "eth0"\n{1}')
    hosts = {"a": body.format("a", ""), "b": body.format("b", ""),
             "c": body.format("c", "vlan = 200\n")}
    guests = {name: f'[guest]\nname = "{name}"\nhost = "{on}"\n[[nics]]\nnetwork = "prod"\n'
              f'mac = "{MAC}"\n' for name, on in (("g", "a"), ("x", "c"))}
    root = write_fleet(tmp_path, networks, hosts, guests)
    assert load_fleet(root).problems == ()
    assert main(["--mappings", str(root), "check", "g", "--to", "b", "--json"]) == 0
    found = [f["code"] for f in json.loads(capsys.readouterr().out)["findings"]]
    assert "MAC_DUPLICATE" not in found


# --- the dict lookups are the graph's edges -------------------------------------------------

@pytest.mark.parametrize("scope", ["whole", "two hosts"])
def test_dict_lookups_answer_as_the_networkx_graph(scope: str):
    fleet_ = load_fleet(EXAMPLE_MAPPINGS)
    graph = {"whole": lambda: g.build_graph(fleet_),
             "two hosts": lambda: g.build_graph_of(fleet_, {"host-a", "host-b"}, "vm1")}[scope]()
    digraph = graph.digraph()
    for name in fleet_.hosts:
        hid = g.host_id(name)
        expected = [digraph.nodes[n]["obj"] for n in digraph.predecessors(hid)] \
            if hid in digraph else []
        assert g.guests_on(graph, name) == expected
        for uplink in fleet_.hosts[name].uplinks.values():
            for segment in {*uplink.segments, "nowhere"}:
                edge = digraph.has_edge(g.uplink_id(name, uplink.name), f"segment:{segment}")
                assert g.reaches(graph, name, uplink.name, segment) == edge
        for network in fleet_.networks:
            bid = g.binding_id(name, network)
            held = digraph.nodes[bid]["obj"] if bid in digraph else None
            assert graph.binding(name, network) == held
    for network in fleet_.networks:
        binders = {digraph.nodes[b]["host"] for b in digraph.predecessors(f"network:{network}")
                   if digraph.nodes[b]["kind"] == "binding"}
        assert g.hosts_binding(graph, network) == binders


# --- property: check's "same topology" is the graph's "same L2 domain" ------------------------

@settings(max_examples=60, deadline=None)
@given(st.sampled_from([None, 100, 200]), st.sampled_from([("fab",), ("san",)]),
       st.sampled_from([None, 100, 200]), st.sampled_from([("fab",), ("san",)]))
def test_topology_findings_are_the_nic_landing_in_another_domain(src_vlan, src_segments,
                                                                 dst_vlan, dst_segments):
    """SEGMENT_UNREACHABLE and VLAN_MISMATCH compare the NIC's view on both hosts, one dict
    step per hop; they fire exactly when the NIC's path on the destination does not reach
    the L2 domain of its network's segment at the VLAN the guest has on its source
    (uplinks of one segment each)."""
    graph = fleet(host("a", segments=src_segments, vlan=src_vlan),
                  host("b", segments=dst_segments, vlan=dst_vlan), guests=(guest("g", "a"),))
    apart = {"SEGMENT_UNREACHABLE", "VLAN_MISMATCH"} & set(codes(check_migration(graph, "g", "b")))
    wanted = l2.domain_id("fab", src_vlan if src_vlan is not None else 100)
    there = l2.nic_path(graph, "g", GuestNic(0, "prod", MAC), "b")
    graph_l2 = l2.l2_graph([l2.NicPath(("source",), (wanted,)), there])
    assert bool(apart) == (l2.reachable(graph_l2, "source", there.nic) is None)


# --- a NIC's path explains where it would land ------------------------------------------------

def test_segment_unreachable_names_the_path_the_frames_would_take():
    graph = fleet(host("a"), host("b", segments=("lab",)), guests=(guest("g", "a"),))
    found = [f for f in check_migration(graph, "g", "b").findings
             if f.code == "SEGMENT_UNREACHABLE"]
    assert len(found) == 1
    assert ("nic:g/0@b -> binding:b/prod -> uplink:b/eth0.100 -> segment:lab/vlan:100"
            in found[0].message)


def test_vlan_mismatch_names_the_domain_the_guest_would_join():
    graph = fleet(host("a"), host("b", vlan=200), guests=(guest("g", "a"),))
    found = [f for f in check_migration(graph, "g", "b").findings if f.code == "VLAN_MISMATCH"]
    assert len(found) == 1
    assert "uplink:b/eth0.200 -> segment:fab/vlan:200" in found[0].message


def test_a_path_on_an_uplink_of_no_segment_says_so():
    graph = fleet(host("a"), host("b", segments=()), guests=(guest("g", "a"),))
    path = l2.nic_path(graph, "g", GuestNic(0, "prod", MAC), "b")
    assert l2.path_text(path).endswith("uplink:b/eth0.100 -> no segment")


# --- property: show's MAC clash is check's MAC finding ----------------------------------------

@st.composite
def small_fleets(draw):
    hosts = [host(f"h{i}", draw(st.sampled_from(["prod", "other", "stor", "blue"])),
                  draw(st.sampled_from([("fab",), ("san",), ("fab", "san"), ()])),
                  draw(st.sampled_from([None, 100, 200])))
             for i in range(4)]
    guests = []
    for i in range(5):
        placed = draw(st.sampled_from([*hosts, None]))
        # a guest runs where its network is bound (check stops at NETWORK_UNBOUND)
        on = placed.name if placed is not None else None
        network = next(iter(placed.bindings)) if placed is not None else draw(
            st.sampled_from(sorted(NETWORKS)))
        mac = draw(st.sampled_from([MAC, "52:54:00:00:00:02"]))
        guests.append(guest(f"g{i}", on, network, mac))
    return fleet(*hosts, guests=tuple(guests))


@settings(max_examples=60, deadline=None)
@given(small_fleets())
def test_show_marks_the_clashes_check_finds_in_place(graph):
    """For every placed guest, the guests show marks as sharing its MAC are those check (of
    the guest where it runs) reports in MAC_IN_USE or MAC_DUPLICATE: one rule, two views."""
    clashes = l2.mac_clashes(graph)
    for name, one in g.fleet_of(graph).guests.items():
        if one.host is None:
            continue
        found = [f for f in check_migration(graph, name, one.host).findings
                 if f.code in ("MAC_IN_USE", "MAC_DUPLICATE")]
        others = sorted(f.message.split("guest ")[1].split(" ")[0] for f in found)
        assert others == sorted(clashes.get((name, 0), []))
