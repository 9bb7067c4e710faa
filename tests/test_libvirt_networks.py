"""libvirt <network> definitions generated from a host's mapping."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from conftest import EXAMPLE_MAPPINGS

from netmap.cli import main as cli_main
from netmap.libvirt import NAMESPACE
from netmap.libvirt.domain import import_domain
from netmap.libvirt.networks import host_networks, libvirt_network_for
from netmap.libvirt.xmlsafe import parse_untrusted
from netmap.load import load_fleet

HAS_VALIDATOR = bool(shutil.which("virt-xml-validate") and shutil.which("xmllint"))
needs_validator = pytest.mark.skipif(
    not HAS_VALIDATOR, reason="virt-xml-validate (libvirt-clients) and xmllint (libxml2-utils) "
    "are not installed")

EXTRA_NETWORKS = """
[networks.backup]
segment = "dc1-storage"
vlan = 300
mtu = 9000

[networks.lab]
segment = "dc1-fabric"
vlan = 42
"""


def _by_name(fleet, host: str) -> dict[str, ET.Element]:
    return {n.name: ET.fromstring(n.xml) for n in host_networks(fleet, fleet.hosts[host])}


@pytest.fixture
def rich_mappings(mappings: Path) -> Path:
    """The example fleet plus a second VLAN on host-a's PF and more macvtap modes."""
    (mappings / "networks.toml").write_text((mappings / "networks.toml").read_text()
                                            + EXTRA_NETWORKS)
    host_b = mappings / "hosts" / "host-b.toml"
    host_b.write_text(host_b.read_text() + '\n[networks.backup]\nmode = "sriov-vf"\n'
                      'uplink = "ens1f0"\nvf_attach = "macvtap"\nspoofchk = false\n')
    host_a = mappings / "hosts" / "host-a.toml"
    host_a.write_text(host_a.read_text()
                      + '\n[networks.backup]\nmode = "sriov-vf"\nuplink = "eno1"\n'
                      + '\n[uplinks.eth2]\nsegments = ["dc1-fabric"]\n'
                      + '\n[networks.lab]\nmode = "macvtap-private"\nuplink = "eth2"\n')
    return mappings


def test_example_host_a_networks() -> None:
    fleet = load_fleet(EXAMPLE_MAPPINGS)
    nets = _by_name(fleet, "host-a")
    assert set(nets) == {"prod", "mgmt", "tenant-blue", "netmap-vf-eno1"}
    prod = nets["prod"]
    assert prod.find("forward").get("mode") == "vepa"
    # VLAN 100 on a vepa macvtap: libvirt cannot tag it, so the lower device is eth0.100
    assert [i.get("dev") for i in prod.findall("forward/interface")] == ["eth0.100"]
    assert prod.find("vlan") is None
    assert prod.find("bridge") is None
    mgmt = nets["mgmt"]
    assert mgmt.find("forward").get("mode") == "bridge"
    assert mgmt.find("bridge").get("name") == "br-eth1"
    assert nets["tenant-blue"].find("bridge").get("name") == "brvx5001"
    pool = nets["netmap-vf-eno1"]
    assert pool.find("forward").attrib == {"mode": "hostdev", "managed": "yes"}
    assert pool.find("forward/pf").get("dev") == "eno1"
    group = pool.find("portgroup")
    assert group.attrib == {"name": "storage", "default": "yes"}
    assert group.find("vlan/tag").get("id") == "200"
    identity = pool.find(f"metadata/{{{NAMESPACE}}}network")
    assert identity.attrib == {"name": "storage", "mode": "sriov-vf", "uplink": "eno1",
                               "mtu": "9000", "segment": "dc1-storage", "vlan": "200"}


def test_vlan_on_a_bridge_and_mtu_are_explained_not_dropped() -> None:
    fleet = load_fleet(EXAMPLE_MAPPINGS)
    (prod,) = host_networks(fleet, fleet.hosts["host-d"])
    assert prod.forward == "bridge"
    assert any("cannot tag VLAN 100 on a Linux bridge" in note for note in prod.notes)
    assert any(note.startswith("MTU 9000") for note in prod.notes)
    assert "cannot tag VLAN 100" in prod.xml  # as an XML comment too
    assert ET.fromstring(prod.xml).find("bridge").get("name") == "br-prod"


def test_one_pool_per_pf_with_a_portgroup_per_network(rich_mappings: Path) -> None:
    fleet = load_fleet(rich_mappings)
    assert not fleet.problems, fleet.problems
    pool = _by_name(fleet, "host-a")["netmap-vf-eno1"]
    groups = {g.get("name"): g.find("vlan/tag").get("id") for g in pool.findall("portgroup")}
    assert groups == {"backup": "300", "storage": "200"}
    assert all(g.get("default") is None for g in pool.findall("portgroup"))
    lab = _by_name(fleet, "host-a")["lab"]
    assert lab.find("forward").get("mode") == "private"
    assert lab.find("forward/interface").get("dev") == "eth2.42"
    # host-b: storage hands VFs over whole, backup wants macvtap: one pool serves one kind
    (b_pool,) = [n for n in host_networks(fleet, fleet.hosts["host-b"])
                 if n.name == "netmap-vf-ens1f0"]
    assert b_pool.forward == "passthrough"
    assert any("mix vf_attach" in note for note in b_pool.notes)
    assert any("spoof checking off" in note for note in b_pool.notes)


def test_passthrough_binding(mappings: Path) -> None:
    host_c = mappings / "hosts" / "host-c.toml"
    host_c.write_text(host_c.read_text().replace('mode = "macvtap-bridge"',
                                                 'mode = "macvtap-passthrough"'))
    fleet = load_fleet(mappings)
    prod = _by_name(fleet, "host-c")["prod"]
    assert prod.find("forward").get("mode") == "passthrough"
    # the guest owns the whole uplink: no VLAN device under it
    assert prod.find("forward/interface").get("dev") == "ens1f0"


@pytest.mark.parametrize("mapping", ["example", "rich"])
def test_every_binding_round_trips_through_a_domain_interface(mapping: str,
                                                              rich_mappings: Path) -> None:
    """What `libvirt_network_for` names, the importer reads back as the same network."""
    fleet = load_fleet(EXAMPLE_MAPPINGS if mapping == "example" else rich_mappings)
    for host in fleet.hosts.values():
        for index, network in enumerate(sorted(host.bindings)):
            name, portgroup = libvirt_network_for(host, network)
            group = f" portgroup='{portgroup}'" if portgroup else ""
            xml = (f"<domain><name>g</name><devices><interface type='network'>"
                   f"<mac address='52:54:00:00:10:{index:02x}'/>"
                   f"<source network='{name}'{group}/></interface></devices></domain>")
            result = import_domain(parse_untrusted(xml, "rt.xml"), fleet.networks,
                                   fleet.hosts, host=host.name)
            assert [n.network for n in result.guest.nics] == [network], (host.name, network)


@needs_validator
@pytest.mark.parametrize("mapping", ["example", "rich"])
def test_generated_xml_passes_virt_xml_validate(mapping: str, rich_mappings: Path,
                                                tmp_path: Path) -> None:
    fleet = load_fleet(EXAMPLE_MAPPINGS if mapping == "example" else rich_mappings)
    paths = []
    for host in fleet.hosts.values():
        for network in host_networks(fleet, host):
            path = tmp_path / f"{host.name}-{network.name}.xml"
            path.write_text(network.xml)
            paths.append(path)
    assert len(paths) >= 11
    for path in paths:
        result = subprocess.run(["virt-xml-validate", str(path), "network"],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, (path.name, result.stdout, result.stderr)


@needs_validator
def test_validator_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    fleet = load_fleet(EXAMPLE_MAPPINGS)
    xml = host_networks(fleet, fleet.hosts["host-a"])[0].xml
    bad = tmp_path / "bad.xml"
    bad.write_text(xml.replace("<forward mode=", "<forward mood="))
    result = subprocess.run(["virt-xml-validate", str(bad), "network"], capture_output=True,
                            text=True, check=False)
    assert result.returncode != 0


def test_cli_json_and_out(tmp_path: Path, capsys, monkeypatch) -> None:
    code = cli_main(["--mappings", str(EXAMPLE_MAPPINGS), "libvirt-networks", "--host",
                     "host-b", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["host"] == "host-b"
    assert {n["name"]: n["forward"] for n in data["networks"]} == {
        "mgmt": "bridge", "prod": "vepa", "tenant-blue": "bridge",
        "netmap-vf-ens1f0": "hostdev"}
    monkeypatch.setenv("NETMAP_HOST", "host-c")
    out = tmp_path / "nets"
    assert cli_main(["--mappings", str(EXAMPLE_MAPPINGS), "libvirt-networks",
                     "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["mgmt.xml", "prod.xml"]
    assert ET.parse(out / "prod.xml").getroot().find("forward/interface").get(
        "dev") == "ens1f0.100"


def test_cli_unknown_host_is_bad_input(capsys) -> None:
    code = cli_main(["--mappings", str(EXAMPLE_MAPPINGS), "libvirt-networks", "--host",
                     "host-q"])
    assert code == 2
    assert "unknown host 'host-q'" in capsys.readouterr().err
