"""`show` and `diff` as plain data (netmap/views.py): what the fleet graph says, without
importing networkx or rich for a --json answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netmap.load import parse
from netmap.model.fleet import Fleet
from netmap.model.mtu import effective_mtu
from netmap.query import graph as g
from netmap.query import l2, views
from tests.test_cache import generate_fleet

REPO = Path(__file__).resolve().parent.parent


def show_through_the_graph(fleet: Fleet, hosts: list[str]) -> dict[str, object]:
    """`show` as it was answered from the fleet graph: the oracle of views.show_data."""
    graph = g.build_graph(fleet)
    clashes = l2.mac_clashes(graph)
    out = []
    for name in hosts:
        host = fleet.hosts[name]
        guests = g.guests_on(graph, name)
        vfs = g.vf_usage(graph, name)
        uplinks = []
        for uplink in host.uplinks.values():
            networks = []
            for binding in host.bindings.values():
                if binding.uplink != uplink.name:
                    continue
                network = fleet.networks[binding.network]
                networks.append({
                    "network": network.name, "mode": binding.mode,
                    "semantic": g.REGISTRY[binding.mode].semantic,
                    "segment": network.segment_id,
                    "reaches_segment": network.is_overlay
                    or g.reaches(graph, name, uplink.name, network.segment_id),
                    "vlan": binding.vlan if binding.vlan is not None else network.vlan,
                    "mtu": effective_mtu(network, binding, host)[0],
                    "guests": [{"guest": guest.name, "nic": nic.index, "mac": nic.mac,
                                "mac_clash": clashes.get((guest.name, nic.index), [])}
                               for guest in guests for nic in guest.nics
                               if nic.network == network.name]})
            uplinks.append({
                "uplink": uplink.name, "segments": list(uplink.segments), "mtu": uplink.mtu,
                "sriov": {"total_vfs": uplink.sriov.total_vfs, "used_vfs": vfs[uplink.name]}
                if uplink.sriov else None, "networks": networks})
        out.append({"host": name, "features": sorted(host.features), "netns": host.netns,
                    "guests": [guest.name for guest in guests], "uplinks": uplinks,
                    "unbound": sorted(set(fleet.networks) - set(host.bindings))})
    return {"mappings": fleet.root, "hosts": out,
            "problems": [p.as_dict() for p in fleet.problems]}


def loaded(root: Path) -> Fleet:
    base = parse.mappings_dir(root)
    return parse.assemble(base, parse.load_networks(base / "networks.toml"),
                          *parse.fleet_file_names(base))


@pytest.fixture
def generated(tmp_path: Path) -> Path:
    """A generated fleet with VFs in use, and two guests sharing a MAC on one host."""
    root = tmp_path / "generated"
    generate_fleet(root, 60, 40, seed=3)
    fleet = loaded(root)
    first = next(guest for guest in fleet.guests.values() if guest.nics and guest.host)
    text = Path(first.source.file).read_text().replace(
        f'name = "{first.name}"', 'name = "twin"')
    (root / "guests" / "twin.toml").write_text(text)
    return root


def test_show_data_says_what_the_graph_says(mappings: Path, generated: Path) -> None:
    for root in (mappings, generated):
        fleet = loaded(root)
        names = list(fleet.hosts)
        assert views.show_data(fleet, names) == show_through_the_graph(fleet, names)
        for name in names:
            assert views.show_data(fleet, [name]) == show_through_the_graph(fleet, [name])
    shown = views.show_data(loaded(generated), list(loaded(generated).hosts))
    clashing = [n for h in shown["hosts"] for u in h["uplinks"] for net in u["networks"]
                for n in net["guests"] if n["mac_clash"]]
    assert any(n["guest"] == "twin" for n in clashing), "the fixture's clash is shown"
    used = [u["sriov"]["used_vfs"] for h in shown["hosts"] for u in h["uplinks"] if u["sriov"]]
    assert any(used), "the fixture uses VFs"


@pytest.mark.parametrize("argv", [["show", "host-a"], ["diff", "host-a", "host-b"], ["show"]])
def test_json_answers_import_neither_networkx_nor_rich(argv: list[str]) -> None:
    """A dict lookup is the whole job: the graph and the table library are not imported."""
    probe = ("import sys, io, contextlib\n"
             "from netmap.cli import main\n"
             "out = io.StringIO()\n"
             "with contextlib.redirect_stdout(out):\n"
             "    code = main(sys.argv[1:])\n"
             "print(code, 'networkx' in sys.modules, 'rich' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", probe, "--mappings", str(REPO / "mappings"),
                           *argv, "--json"], env=env, capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["0", "False", "False"], done.stderr


def test_show_json_is_the_table_data(mappings: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from netmap.cli import main

    assert main(["--mappings", str(mappings), "show", "host-a", "--json"]) == 0
    fleet = loaded(mappings)
    assert json.loads(capsys.readouterr().out) == json.loads(
        json.dumps(views.show_data(fleet, ["host-a"])))
