"""Importing libvirt domain XML: libvirt's own test corpus, the mapping rules, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import CORPUS, EXAMPLE_MAPPINGS

from netmap.cli import main as cli_main
from netmap.errors import InputError
from netmap.libvirt.domain import import_domain
from netmap.libvirt.xmlsafe import parse_untrusted, read_untrusted
from netmap.load import load_fleet
from netmap.load.parse import load_guest

DOMAINS = sorted((CORPUS / "domain").glob("*.xml")) if CORPUS.is_dir() else []
# libvirt's own tests expect these to be refused (names ending in -fail / -incorrect)
REFUSED = {p.name for p in DOMAINS if p.stem.endswith(("-fail", "-incorrect"))}

VM1 = """<domain type='kvm'>
  <name>vm1</name>
  <devices>
    <interface type='direct'>
      <mac address='52:54:00:12:34:56'/>
      <source dev='eth0' mode='vepa'/>
      <model type='virtio'/>
      <driver name='vhost' queues='4'/>
      <mtu size='9000'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:12:34:57'/>
      <source network='netmap-vf-eno1' portgroup='storage'/>
      <model type='virtio'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:12:34:58'/>
    </interface>
  </devices>
</domain>
"""


@pytest.fixture(scope="module")
def fleet():
    return load_fleet(EXAMPLE_MAPPINGS)


def _import(fleet, text: str, **kwargs):
    return import_domain(parse_untrusted(text, "test.xml"), fleet.networks, fleet.hosts,
                         **kwargs)


def _interfaces(text: str, metadata: str = "") -> str:
    return (f"<domain><name>g</name><metadata>{metadata}</metadata><devices>{text}"
            "</devices></domain>")


@pytest.mark.skipif(not DOMAINS, reason=f"libvirt corpus not found at {CORPUS}")
@pytest.mark.parametrize("path", DOMAINS, ids=lambda p: p.name)
def test_corpus_domain_maps_or_explains_every_interface(fleet, path: Path) -> None:
    result = import_domain(read_untrusted(path), fleet.networks, fleet.hosts)
    assert result.interfaces, "the corpus holds only domains with <interface>"
    for iface in result.interfaces:
        if iface.nic is not None:
            nic = result.guest.nics[iface.nic]
            assert nic.network in fleet.networks
            assert nic.mac == iface.mac
            continue
        # not mapped: some finding must say so, naming this interface's line
        about = [f for f in result.findings if f"interface #{iface.position} " in f.message]
        assert about, f"{iface.label} neither maps nor has a finding"
        assert all(f.hint and f.message for f in about)
        if iface.line:
            assert f"line {iface.line}" in about[0].message
    invalid = [f for f in result.findings if f.code == "INTERFACE_INVALID"]
    if path.name in REFUSED:
        assert invalid, f"{path.name} is refused by libvirt, so netmap must say why"
        assert all("libvirt refuses it" in f.message and f.severity == "error"
                   for f in invalid)
    else:
        assert not invalid, [f.message for f in invalid]


def test_corpus_is_complete() -> None:
    if not DOMAINS:
        pytest.skip(f"libvirt corpus not found at {CORPUS}")
    assert len(DOMAINS) == 71
    assert {"net-hostdev-fail.xml",
                                              "net-vhostuser-fail.xml",
                                              "tap-vhost-incorrect.xml"} == REFUSED


@pytest.mark.skipif(not DOMAINS, reason=f"libvirt corpus not found at {CORPUS}")
def test_corpus_macvtap_vepa_on_eth0_is_prod_of_host_a(fleet) -> None:
    # lxcconf2xml-macvlannetwork: <source dev='eth0' mode='vepa'/>, which only host-a's
    # mapping explains (eth0 in macvtap-vepa is prod there).
    result = import_domain(read_untrusted(CORPUS / "domain" / "lxcconf2xml-macvlannetwork.xml"),
                           fleet.networks, fleet.hosts)
    assert result.source_host == "host-a"
    assert [n.network for n in result.guest.nics] == ["prod"]
    assert result.interfaces[0].how == "macvtap on 'eth0' on host-a"


def test_vm1_maps_through_host_mapping_and_vf_pool(fleet) -> None:
    result = _import(fleet, VM1)
    assert result.source_host == "host-a"
    first, second = result.guest.nics
    assert (first.network, first.mac, first.model, first.vhost, first.mtu) == (
        "prod", "52:54:00:12:34:56", "virtio", "required", 9000)
    assert (second.network, second.vhost, second.mtu) == ("storage", "preferred", None)
    assert result.interfaces[1].how == "VF pool netmap-vf-eno1 on host-a"
    assert [f.code for f in result.findings] == ["NOT_A_HOST_NETWORK"]
    assert result.guest.host == "host-a"


def test_same_xml_read_as_host_b_does_not_map(fleet) -> None:
    result = _import(fleet, VM1, host="host-b")
    assert not result.guest.nics
    unmapped = [f for f in result.findings if f.code == "INTERFACE_UNMAPPED"]
    assert len(unmapped) == 2
    assert "host-b's mapping has no network on macvtap on 'eth0'" in unmapped[0].message
    assert 'network="NAME"' in unmapped[0].hint


def test_metadata_names_the_network_and_pins_semantic(fleet) -> None:
    meta = ('<netmap:guest xmlns:netmap="https://netmap.dev/xmlns/1" host="host-c">'
            '<netmap:nic mac="52:54:00:00:00:01" network="mgmt" semantic="local-switching"'
            ' vhost="off"/></netmap:guest>')
    text = _interfaces("<interface type='ethernet'><mac address='52:54:00:00:00:01'/>"
                       "<target dev='tap7' managed='no'/><model type='virtio'/></interface>",
                       meta)
    result = _import(fleet, text)
    nic = result.guest.nics[0]
    assert (nic.network, nic.semantic, nic.vhost) == ("mgmt", "local-switching", "off")
    assert result.guest.host == "host-c"
    assert result.interfaces[0].how == "netmap metadata"


def test_bridge_names_and_libvirt_network_names(fleet) -> None:
    text = _interfaces(
        "<interface type='bridge'><mac address='52:54:00:00:00:02'/>"
        "<source bridge='br-eno3'/></interface>"
        "<interface type='bridge'><mac address='52:54:00:00:00:03'/>"
        "<source bridge='brvx5001'/><vlan><tag id='7'/></vlan></interface>"
        "<interface type='network'><mac address='52:54:00:00:00:04'/>"
        "<source network='prod'/><model type='e1000'/></interface>")
    result = _import(fleet, text)
    assert result.source_host == "host-b"
    assert [n.network for n in result.guest.nics] == ["mgmt", "tenant-blue", "prod"]
    assert result.guest.nics[2].vhost == "off"  # vhost-net serves virtio only
    vlan = [f for f in result.findings if f.code == "VLAN_DIFFERS"]
    assert len(vlan) == 1
    assert "tags VLAN 7" in vlan[0].message


def test_ambiguous_source_host_is_reported(fleet) -> None:
    # br-eth1 exists only on host-a, but tenant-blue's bridge brvx5001 is on host-a and b
    text = _interfaces("<interface type='bridge'><mac address='52:54:00:00:00:05'/>"
                       "<source bridge='brvx5001'/></interface>")
    result = _import(fleet, text)
    assert [f.code for f in result.findings] == ["SOURCE_HOST_AMBIGUOUS"]
    assert result.guest.nics[0].network == "tenant-blue"


@pytest.mark.parametrize(("interface", "code", "words"), [
    ("<interface type='bridge'><source bridge='br-eno3'/></interface>",
     "MAC_MISSING", "no <mac address"),
    ("<interface type='bridge'><mac address='01:00:5e:00:00:01'/>"
     "<source bridge='br-eno3'/></interface>", "MAC_INVALID", "multicast"),
    ("<interface type='wormhole'><mac address='52:54:00:00:00:09'/></interface>",
     "UNKNOWN_INTERFACE_TYPE", "no interface type 'wormhole'"),
    ("<interface><mac address='52:54:00:00:00:09'/></interface>",
     "INTERFACE_INVALID", "has no type attribute"),
    ("<interface type='bridge'><mac address='52:54:00:00:00:09'/><mtu size='99999'/>"
     "<source bridge='br-eno3'/></interface>", "INTERFACE_INVALID", "is not an MTU"),
    ("<interface type='bridge'><mac address='52:54:00:00:00:09'/>"
     "<source bridge='br-eno3'/></interface>"
     "<interface type='bridge'><mac address='52:54:00:00:00:09'/>"
     "<source bridge='br-eno3'/></interface>", "MAC_DUPLICATE", "is also interface #0"),
])
def test_bad_interfaces_give_error_findings(fleet, interface: str, code: str,
                                            words: str) -> None:
    result = _import(fleet, _interfaces(interface))
    found = [f for f in result.findings if f.code == code]
    assert found
    assert found[0].severity == "error"
    assert words in found[0].message
    assert found[0].hint


def test_bad_metadata_is_an_error_finding(fleet) -> None:
    meta = ('<g:nic xmlns:g="https://netmap.dev/xmlns/1" mac="52:54:00:00:00:01" '
            'network="nosuch"/>')
    result = _import(fleet, _interfaces("", meta))
    assert result.findings[0].code == "METADATA_INVALID"
    assert "'nosuch', which networks.toml does not define" in result.findings[0].message


@pytest.mark.parametrize(("text", "words", "line"), [
    ("<domain><name>x</name><devices>\n<interface type='user'>\n</domain>",
     "not well-formed XML: mismatched tag", 3),
    ('<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
     ' <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">\n]>\n'
     "<domain><name>&lol2;</name></domain>", "has a DOCTYPE", 2),
    ('<!DOCTYPE d SYSTEM "file:///etc/passwd"><domain/>', "has a DOCTYPE", 1),
    ("", "is empty", None),
    ('<?xml version="1.0" encoding="ISO-8859-1"?><domain/>', "declares encoding", 1),
    ("<network><name>n</name></network>", "is not a libvirt domain", 1),
    ("<domain><devices/></domain>", "has no <name>", 1),
])
def test_malformed_or_hostile_xml_is_a_clear_input_error(fleet, text: str, words: str,
                                                         line: int | None) -> None:
    with pytest.raises(InputError) as caught:
        _import(fleet, text)
    assert words in caught.value.problem
    assert caught.value.fix
    assert caught.value.file == "test.xml"
    assert caught.value.line == line


def test_limits_stop_big_documents_before_building_them() -> None:
    with pytest.raises(InputError, match="larger than"):
        parse_untrusted(b"<domain>" + b" " * 2048 + b"</domain>", "big.xml", max_bytes=1024)
    with pytest.raises(InputError, match="deeper than 5"):
        parse_untrusted("<a>" * 6 + "</a>" * 6, "deep.xml", max_depth=5)
    with pytest.raises(InputError, match="more than 10 elements"):
        parse_untrusted("<a>" + "<b/>" * 20 + "</a>", "wide.xml", max_elements=10)


def test_guest_file_in_mappings_dir_loads_and_refuses_unmapped(mappings: Path) -> None:
    (mappings / "guests" / "vm1.toml").unlink()
    (mappings / "guests" / "vm1.xml").write_text(VM1)
    fleet = load_fleet(mappings)
    assert not fleet.problems
    assert [n.network for n in fleet.guests["vm1"].nics] == ["prod", "storage"]
    assert fleet.guests["vm1"].host == "host-a"
    broken = mappings / "guests" / "vm9.xml"
    broken.write_text(_interfaces("<interface type='bridge'><mac address='52:54:00:09:00:01'/>"
                                  "<source bridge='br-nowhere'/></interface>"))
    with pytest.raises(InputError, match="cannot tell its logical network"):
        load_guest(broken, fleet.networks)


def test_import_command_json_and_write(mappings: Path, tmp_path: Path, capsys) -> None:
    domain = tmp_path / "vm7.xml"
    domain.write_text(VM1.replace("<name>vm1</name>", "<name>vm7</name>")
                      .replace("52:54:00:12:34", "52:54:00:77:34"))
    code = cli_main(["--mappings", str(mappings), "import", str(domain), "--json", "--write"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["guest"] == "vm7"
    assert data["source_host"] == "host-a"
    written = mappings / "guests" / "vm7.toml"
    assert data["written"] == str(written)
    guest = load_fleet(mappings).guests["vm7"]
    assert [(n.network, n.vhost, n.mtu) for n in guest.nics] == [
        ("prod", "required", 9000), ("storage", "preferred", None)]
    assert cli_main(["--mappings", str(mappings), "import", str(domain), "--write"]) == 2
    assert "already exists" in capsys.readouterr().err


def _tree(top: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every path under top with its type and content (or link target)."""
    found: dict[str, tuple[int, bytes | str]] = {}
    for path in sorted(top.rglob("*")):
        mode = path.lstat().st_mode
        content: bytes | str = (os.readlink(path) if path.is_symlink() else
                                path.read_bytes() if path.is_file() else b"")
        found[str(path.relative_to(top))] = (mode, content)
    return found


@pytest.mark.parametrize("name", ["../../x/evil", "../evil", "a/b", "/abs/evil", ".hidden",
                                  "vm 7", "-vm7"])
def test_import_write_refuses_a_bad_name_before_touching_anything(
        mappings: Path, tmp_path: Path, capsys, name: str) -> None:
    domain = tmp_path / "in" / "evil.xml"
    domain.parent.mkdir()
    domain.write_text(VM1.replace("<name>vm1</name>", f"<name>{name}</name>"))
    before = _tree(tmp_path)
    code = cli_main(["--mappings", str(mappings), "import", str(domain), "--write"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{domain}:2: domain.name: the domain's name {name!r} must start" in err
    assert "fix:" in err
    assert "Traceback" not in err
    assert _tree(tmp_path) == before  # no directory, no temporary file, anywhere


def test_import_write_does_not_follow_links_out_of_guests(mappings: Path, tmp_path: Path,
                                                         capsys) -> None:
    domain = tmp_path / "vm7.xml"
    domain.write_text(VM1.replace("<name>vm1</name>", "<name>vm7</name>")
                      .replace("52:54:00:12:34", "52:54:00:77:34"))
    outside = tmp_path / "outside.toml"
    outside.write_text("precious\n")
    planted = mappings / "guests" / "vm7.toml.tmp"  # where the old temporary file went
    planted.symlink_to(outside)
    assert cli_main(["--mappings", str(mappings), "import", str(domain), "--write"]) == 0
    assert outside.read_text() == "precious\n"
    assert load_fleet(mappings).guests["vm7"].nics
    target = mappings / "guests" / "vm7.toml"
    target.unlink()
    target.symlink_to(outside)
    capsys.readouterr()
    code = cli_main(["--mappings", str(mappings), "import", str(domain), "--write", "--force"])
    assert code == 2
    assert "leads out of" in capsys.readouterr().err
    assert outside.read_text() == "precious\n"
    assert sorted(p.name for p in (mappings / "guests").iterdir()) == sorted(
        ["vm1.toml", "vm2.toml", "vm3.toml", "vm4.toml", "vm7.toml", "vm7.toml.tmp"])


def test_guest_names_are_checked_whole(mappings: Path) -> None:
    from netmap.load.parse import load_guest, name_problem

    assert name_problem("vm1\n")
    assert name_problem("vm1") is None
    path = mappings / "guests" / "vm1.toml"
    path.write_text(path.read_text().replace('name = "vm1"', 'name = "vm1\\n"'))
    with pytest.raises(InputError, match="must start with a letter"):
        load_guest(path, load_fleet(EXAMPLE_MAPPINGS).networks)


def test_import_command_bad_input_exits_2(mappings: Path, tmp_path: Path, capsys) -> None:
    domain = tmp_path / "bomb.xml"
    domain.write_text('<!DOCTYPE x [<!ENTITY a "aaaa">]><domain>&a;</domain>')
    assert cli_main(["--mappings", str(mappings), "import", str(domain)]) == 2
    err = capsys.readouterr().err
    assert f"{domain}:1: has a DOCTYPE" in err
    assert "Traceback" not in err


def test_hostdev_vf_maps_by_its_vlan_when_one_network_has_it(fleet) -> None:
    vf = ("<interface type='hostdev' managed='yes'><mac address='52:54:00:00:20:01'/>"
          "<source><address type='pci' domain='0x0000' bus='0x06' slot='0x10' "
          "function='0x2'/></source><vlan><tag id='{vlan}'/></vlan></interface>")
    result = _import(fleet, _interfaces(vf.format(vlan=200)), host="host-a")
    assert [n.network for n in result.guest.nics] == ["storage"]
    assert result.interfaces[0].how == "a VF with VLAN 200 on host-a"
    result = _import(fleet, _interfaces(vf.format(vlan=201)), host="host-a")
    assert not result.guest.nics
    assert "no network on a VF with VLAN 201" in result.findings[0].message


def test_import_command_on_a_refused_corpus_file_exits_2(mappings: Path, capsys) -> None:
    if not DOMAINS:
        pytest.skip(f"libvirt corpus not found at {CORPUS}")
    path = CORPUS / "domain" / "net-hostdev-fail.xml"
    assert cli_main(["--mappings", str(mappings), "import", str(path)]) == 2
    out = capsys.readouterr().out
    assert "[INTERFACE_INVALID]" in out
    assert "<filterref> is not supported on type hostdev" in out


def test_macvtap_in_another_mode_than_the_mapping_maps_with_a_warning(fleet) -> None:
    text = _interfaces("<interface type='direct'><mac address='52:54:00:00:30:01'/>"
                       "<source dev='eth0.100' mode='bridge'/></interface>")
    result = _import(fleet, text)
    assert result.source_host == "host-a"
    assert [n.network for n in result.guest.nics] == ["prod"]
    (finding,) = result.findings
    assert finding.code == "MODE_DIFFERS"
    assert "runs macvtap mode bridge" in finding.message
    assert "mode='vepa'" in finding.hint


def test_metadata_as_virsh_metadata_set_writes_it(fleet) -> None:
    # virsh metadata vm --uri https://netmap.dev/xmlns/1 --key netmap
    #   --set '<guest><nic mac="..." network="mgmt"/></guest>'
    meta = ('<netmap:guest xmlns:netmap="https://netmap.dev/xmlns/1">'
            '<nic mac="52:54:00:00:40:01" network="mgmt"/></netmap:guest>')
    text = _interfaces("<interface type='ethernet'><mac address='52:54:00:00:40:01'/>"
                       "</interface>", meta)
    result = _import(fleet, text)
    assert [n.network for n in result.guest.nics] == ["mgmt"]


def test_destination_is_the_last_choice_for_the_source_host(fleet) -> None:
    text = _interfaces("<interface type='bridge'><mac address='52:54:00:00:50:01'/>"
                       "<source bridge='brvx5001'/></interface>")
    assert _import(fleet, text).source_host == "host-a"
    assert _import(fleet, text, avoid_host="host-a").source_host == "host-b"
    # a hint that names the destination itself is ignored
    assert _import(fleet, text, avoid_host="host-a",
                   prefer_host="host-a").source_host == "host-b"
