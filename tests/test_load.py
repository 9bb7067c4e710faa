"""Loading mappings: the example fleet, and one clear error for every kind of bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from conftest import EXAMPLE_MAPPINGS

from netmap.errors import InputError
from netmap.load import load_fleet, mappings_dir
from netmap.load.parse import load_guest, load_host, load_networks
from netmap.load.tomlcheck import line_of
from netmap.modes import semantic_of

NETWORKS = """
[networks.prod]
segment = "dc1-fabric"
vlan = 100
mtu = 9000

[networks.blue]
vni = 5001
mtu = 1450
"""

HOST = """
[host]
name = "h1"
features = ["vhost-net"]

[uplinks.eth0]
segments = ["dc1-fabric"]
mtu = 9000

[networks.prod]
mode = "macvtap-vepa"
uplink = "eth0"
"""

GUEST = """
[guest]
name = "g1"
host = "h1"

[[nics]]
network = "prod"
mac = "52:54:00:00:00:01"
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def networks(tmp_path: Path):
    return load_networks(write(tmp_path, "networks.toml", NETWORKS))


def host_error(tmp_path: Path, networks, text: str) -> InputError:
    with pytest.raises(InputError) as caught:
        load_host(write(tmp_path, "hosts/h1.toml", text), networks)
    return caught.value


def guest_error(tmp_path: Path, networks, text: str) -> InputError:
    with pytest.raises(InputError) as caught:
        load_guest(write(tmp_path, "guests/g1.toml", text), networks)
    return caught.value


def test_example_fleet_loads_without_problems():
    fleet = load_fleet(EXAMPLE_MAPPINGS)
    assert fleet.problems == ()
    assert set(fleet.hosts) == {"host-a", "host-b", "host-c", "host-d"}
    assert fleet.hosts["host-b"].bindings["prod"].uplink == "eno2"
    assert fleet.hosts["host-a"].bindings["prod"].uplink == "eth0"
    assert fleet.hosts["host-a"].uplinks["eno1"].sriov.total_vfs == 8
    assert fleet.networks["tenant-blue"].segment_id == "vni:5001"
    assert fleet.guests["vm1"].nics[1].network == "storage"


def test_valid_host_and_guest(tmp_path: Path, networks):
    host = load_host(write(tmp_path, "hosts/h1.toml", HOST), networks)
    assert semantic_of(host.bindings["prod"]) == "external-hairpin"
    assert host.features == {"vhost-net"}
    guest = load_guest(write(tmp_path, "guests/g1.toml", GUEST), networks)
    assert guest.nics[0].vhost == "preferred"
    assert guest.nics[0].model == "virtio"


def test_sources_find_their_line_when_asked_even_after_pickling(tmp_path: Path, networks):
    path = write(tmp_path, "hosts/h1.toml", HOST)
    binding = load_host(path, networks).bindings["prod"]
    # pickled before its line was looked up: it travels with the text to find it in
    again = pickle.loads(pickle.dumps(binding))
    assert again == binding
    lines = path.read_text().splitlines()
    assert lines[again.source.line - 1].strip() == "[networks.prod]"
    assert str(again.source) == f"{path}:{again.source.line}"


def test_malformed_toml_names_file_and_line(tmp_path: Path, networks):
    err = host_error(tmp_path, networks, HOST.replace('mode = "macvtap-vepa"', "mode = macvtap"))
    assert err.file.endswith("hosts/h1.toml")
    assert err.line == 11
    assert "not valid TOML" in err.problem
    assert err.fix


def test_unknown_key_suggests_the_right_one(tmp_path: Path, networks):
    err = host_error(tmp_path, networks, HOST.replace("uplink = ", "uplnk = "))
    assert err.key == "networks.prod.uplnk"
    assert err.line == 12
    assert "uplink" in err.fix


def test_wrong_type(tmp_path: Path, networks):
    err = host_error(tmp_path, networks, HOST.replace("mtu = 9000", 'mtu = "9000"'))
    assert err.key == "uplinks.eth0.mtu"
    assert "whole number" in err.problem
    assert err.line == 8


def test_binding_to_missing_uplink(tmp_path: Path, networks):
    err = host_error(tmp_path, networks, HOST.replace('uplink = "eth0"', 'uplink = "eth9"'))
    assert err.key == "networks.prod.uplink"
    assert "eth9" in err.problem
    assert "eth0" in err.fix


def test_binding_to_unknown_network(tmp_path: Path, networks):
    err = host_error(tmp_path, networks, HOST.replace("[networks.prod]", "[networks.prd]"))
    assert err.key == "networks.prd"
    assert "prod" in err.fix


def test_unknown_mode(tmp_path: Path, networks):
    err = host_error(tmp_path, networks, HOST.replace("macvtap-vepa", "macvtap-vpea"))
    assert err.key == "networks.prod.mode"
    assert "macvtap-vepa" in err.fix


@pytest.mark.parametrize("name, why", [
    ("enp129s0f0np0v10", "16 bytes"),
    ("eth/0", "'/'"),
])
def test_bad_interface_names(tmp_path: Path, networks, name: str, why: str):
    text = HOST.replace("[uplinks.eth0]", f'[uplinks."{name}"]').replace('"eth0"', f'"{name}"')
    err = host_error(tmp_path, networks, text)
    assert why in err.problem
    assert err.key == f"uplinks.{name}"


def test_bridge_name_too_long(tmp_path: Path, networks):
    text = HOST.replace('mode = "macvtap-vepa"', 'mode = "bridge"\nbridge = "br-production-01"')
    err = host_error(tmp_path, networks, text)
    assert err.key == "networks.prod.bridge"
    assert "15" in err.problem


@pytest.mark.parametrize("field, value, problem", [
    ("mtu", "40", "out of range"),
    ("vlan", "4095", "out of range"),
    ("vlan", "true", "whole number"),
])
def test_invalid_network_values(tmp_path: Path, field: str, value: str, problem: str):
    text = NETWORKS.replace(f"{field} = " + ("9000" if field == "mtu" else "100"),
                            f"{field} = {value}", 1)
    with pytest.raises(InputError) as caught:
        load_networks(write(tmp_path, "networks.toml", text))
    assert problem in caught.value.problem
    assert caught.value.key == f"networks.prod.{field}"


def test_network_needs_segment_or_vni(tmp_path: Path):
    with pytest.raises(InputError) as caught:
        load_networks(write(tmp_path, "networks.toml", "[networks.x]\nmtu = 1500\n"))
    assert "segment" in caught.value.problem
    assert caught.value.line == 1


def test_guest_unknown_network(tmp_path: Path, networks):
    err = guest_error(tmp_path, networks, GUEST.replace('network = "prod"', 'network = "prd"'))
    assert err.key == "nics[0].network"
    assert err.line == 7
    assert "prod" in err.fix


def test_guest_same_mac_twice(tmp_path: Path, networks):
    err = guest_error(tmp_path, networks, GUEST + GUEST[GUEST.index("[[nics]]"):])
    assert err.key == "nics[1].mac"
    assert err.line == 11
    assert "nics[0]" in err.problem


@pytest.mark.parametrize("mac, problem", [
    ("52:54:00:00:00", "not a MAC"),
    ("01:00:5e:00:00:01", "multicast"),
    ("00:00:00:00:00:00", "not a usable"),
])
def test_guest_invalid_mac(tmp_path: Path, networks, mac: str, problem: str):
    err = guest_error(tmp_path, networks, GUEST.replace("52:54:00:00:00:01", mac))
    assert problem in err.problem
    assert err.key == "nics[0].mac"


def test_macvtap_and_bridge_cannot_share_an_uplink(tmp_path: Path, networks):
    extra = '\n[networks.blue]\nmode = "vxlan"\nuplink = "eth0"\n'
    load_host(write(tmp_path, "hosts/h1.toml", HOST + extra), networks)  # underlay: fine
    networks3 = {**networks, "mgmt": networks["prod"].__class__("mgmt", 1500, "dc1-fabric")}
    text = HOST + '\n[networks.mgmt]\nmode = "bridge"\nuplink = "eth0"\n'
    err = host_error(tmp_path, networks3, text)
    assert err.key == "networks.prod.uplink"
    assert "bridge" in err.problem


def test_vxlan_underlay_cannot_be_a_bridge_port(tmp_path: Path, networks):
    text = HOST.replace('mode = "macvtap-vepa"', 'mode = "bridge"')
    text += '\n[networks.blue]\nmode = "vxlan"\nuplink = "eth0"\n'
    err = host_error(tmp_path, networks, text)
    assert err.key == "networks.blue.uplink"
    assert "underlay" in err.problem


def test_passthrough_owns_its_uplink(tmp_path: Path, networks):
    text = HOST.replace("macvtap-vepa", "macvtap-passthrough")
    text += '\n[networks.blue]\nmode = "vxlan"\nuplink = "eth0"\n'
    err = host_error(tmp_path, networks, text)
    assert err.key == "networks.blue.uplink"
    assert "passthrough" in err.problem


def test_one_bad_guest_file_keeps_the_fleet_usable(mappings: Path):
    (mappings / "guests" / "vm2.toml").write_text("[guest]\nname = 'vm2'\nbogus = 1\n")
    fleet = load_fleet(mappings)
    assert "vm1" in fleet.guests
    assert "vm2" not in fleet.guests
    assert len(fleet.problems) == 1
    assert fleet.problems[0].key == "guest.bogus"


def test_guest_on_unknown_host_is_a_problem(mappings: Path):
    path = mappings / "guests" / "vm4.toml"
    path.write_text(path.read_text().replace('host = "host-c"', 'host = "host-x"'))
    fleet = load_fleet(mappings)
    assert fleet.problems[0].key == "guest.host"
    assert "host-x" in fleet.problems[0].problem


def test_mappings_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NETMAP_MAPPINGS", str(EXAMPLE_MAPPINGS))
    assert mappings_dir() == EXAMPLE_MAPPINGS
    assert mappings_dir(EXAMPLE_MAPPINGS) == EXAMPLE_MAPPINGS
    with pytest.raises(InputError) as caught:
        mappings_dir(tmp_path)
    assert "networks.toml" in caught.value.problem


def test_line_of_finds_nested_keys():
    text = "[a]\nx = 1\n[[nics]]\nm = 1\n[[nics]]\nm = 2\n"
    assert line_of(text, ("a", "x")) == 2
    assert line_of(text, ("nics", 1, "m")) == 6
    assert line_of(text, ("nics", 0)) == 3


@pytest.mark.parametrize("change, key, problem", [
    (("mtu = 9000\n", "mtu = 9000\nsriov = { total_vfs = 0 }\n"), "uplinks.eth0.sriov.total_vfs",
     "0 is out of range"),
    (('uplink = "eth0"', 'uplink = "eth0"\nvxlan = { port = "x" }'), "networks.prod.vxlan.port",
     "must be a whole number, not a string"),
    (('features = ["vhost-net"]', "features = [1]"), "host.features[0]",
     "must be a string, not a number"),
    (("[uplinks.eth0]", "[uplinks.eth0.x]"), "uplinks.eth0.x", "is not a known key here"),
    (("mtu = 9000", "mtu = true"), "uplinks.eth0.mtu", "must be a whole number, not true/false"),
])
def test_a_problem_below_the_top_is_named_exactly(tmp_path: Path, networks, change, key,
                                                  problem):
    """msgspec refuses the file at once; the Python tests then name the first problem."""
    err = host_error(tmp_path, networks, HOST.replace(*change))
    assert (err.key, err.problem) == (key, problem)


def test_a_refusal_the_tests_do_not_explain_still_names_the_key(tmp_path: Path, networks,
                                                               monkeypatch):
    """Should msgspec refuse what the per-key tests accept, its own words and path are told
    (never a traceback)."""
    from netmap.load.tomlcheck import Schema

    monkeypatch.setattr(Schema, "first_problem", lambda self, table: None)
    err = host_error(tmp_path, networks, HOST.replace("mtu = 9000", "mtu = 70000"))
    # msgspec does not name the keys of a table of tables: the message names the table
    assert err.key == "uplinks"
    assert "<= 65535" in err.problem
    err = guest_error(tmp_path, networks, GUEST.replace('"52:54:00:00:00:01"', '52'))
    assert err.key == "nics[0].mac"
    assert err.line == 8
    assert "got `int`" in err.problem
