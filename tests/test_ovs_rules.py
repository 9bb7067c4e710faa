"""The ovs mode without root: what load accepts and refuses, what check says about a move
between an OVS host and a Linux-bridge host, and the plan's steps."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import guest_toml, write_fleet

from netmap.errors import InputError
from netmap.load import load_fleet
from netmap.modes import REGISTRY
from netmap.plan import CreateTap, EnsureOvsBridge, EnsureOvsPort, RequireLink
from netmap.plan.planner import build_plan
from netmap.query.graph import build_graph
from netmap.rules.check import check_migration

NETWORKS = """
[networks.prod]
segment = "fab"
vlan = 100
mtu = 1500

[networks.over]
vni = 5

[networks.other]
segment = "fab"
mtu = 1500
"""


def host(name: str, bindings: str, head: str = "") -> str:
    return (f'[host]\nname = "{name}"\nfeatures = ["vhost-net"]\n{head}\n'
            '[uplinks.eth0]\nsegments = ["fab"]\n\n'
            f"[uplinks.eth1]\nsegments = [\"fab\"]\n\n{bindings}")


OVS = """[networks.prod]
mode = "ovs"
uplink = "eth0"
bridge = "br-int"
external_ids = { "owner" = "sdn" }
"""
BRIDGE = '[networks.prod]\nmode = "bridge"\nuplink = "eth0"\n'
GUEST = guest_toml("vm1", "ha", ("prod", "52:54:00:00:00:01"))


def fleet(tmp_path: Path, hosts: dict[str, str]):
    return load_fleet(write_fleet(tmp_path / "m", NETWORKS, hosts, {"vm1": GUEST}))


def load_error(tmp_path: Path, text: str) -> InputError:
    root = write_fleet(tmp_path / "m", NETWORKS, {"ha": text}, {})
    problems = load_fleet(root).problems
    assert problems, "the host file was accepted"
    return problems[0]


def test_an_ovs_binding_loads_with_its_keys(tmp_path: Path) -> None:
    found = fleet(tmp_path, {"ha": host("ha", OVS, 'ovsdb = "unix:/run/ovs/db.sock"')})
    binding = found.hosts["ha"].bindings["prod"]
    assert (binding.mode, binding.bridge, binding.external_ids, binding.ovsdb) == (
        "ovs", "br-int", (("owner", "sdn"),), "unix:/run/ovs/db.sock")
    assert REGISTRY[binding.mode].semantic == "local-switching"


@pytest.mark.parametrize(("bindings", "head", "key", "words"), [
    # an OVS port cannot also be a Linux-bridge port or a macvlan lower device
    (OVS + '\n[networks.other]\nmode = "bridge"\nuplink = "eth0"\n', "",
     "networks.other.uplink", "OVS bridge br-int"),
    (OVS + '\n[networks.other]\nmode = "macvtap-bridge"\nuplink = "eth0"\n', "",
     "networks.other.uplink", "macvtap"),
    (OVS + '\n[networks.over]\nmode = "vxlan"\nuplink = "eth0"\n', "",
     "networks.over.uplink", "vxlan underlay"),
    (OVS + '\n[networks.other]\nmode = "ovs"\nuplink = "eth0"\nbridge = "br-x"\n', "",
     "networks.other.bridge", "one OVS bridge"),
    # one OVS bridge, two datapaths asked: the first guest realized would decide
    (OVS + 'datapath_type = "netdev"\n\n[networks.other]\nmode = "ovs"\nuplink = "eth0"\n'
     'bridge = "br-int"\n', "", "networks.other.datapath_type", "datapath netdev"),
    (BRIDGE + 'external_ids = { "a" = "b" }\n', "", "networks.prod.external_ids",
     "only ovs mode"),
    (BRIDGE + 'datapath_type = "netdev"\n', "", "networks.prod.datapath_type", "only ovs"),
    (OVS + 'datapath_type = "dpdk"\n', "", "networks.prod.datapath_type", "not known"),
    (OVS, 'ovsdb = "tcp:127.0.0.1:6640"', "host.ovsdb", "unix:/ABSOLUTE/PATH"),
    (OVS.replace('"sdn"', "3"), "", "networks.prod.external_ids.owner", "string"),
    # one name, two bridges: OVS bridge br-int and a Linux bridge br-int on another uplink
    # (the kernel holds one device of that name; realize refused the second, check passed)
    (OVS + '\n[networks.other]\nmode = "bridge"\nuplink = "eth1"\nbridge = "br-int"\n', "",
     "networks.other.bridge", "OVS bridge br-int of network prod"),
    ('[networks.other]\nmode = "bridge"\nuplink = "eth1"\nbridge = "br-int"\n\n' + OVS, "",
     "networks.prod.bridge", "Linux bridge br-int of network other"),
    (OVS + '\n[networks.over]\nmode = "vxlan"\nuplink = "eth1"\nbridge = "br-int"\n'
     'vxlan = { group = "239.1.1.1" }\n', "", "networks.over.bridge", "OVS bridge br-int"),
    # ... and where the OVS binding names no bridge: br-eth0 is the Linux bridge's
    ('[networks.other]\nmode = "bridge"\nuplink = "eth1"\nbridge = "br-eth0"\n\n'
     '[networks.prod]\nmode = "ovs"\nuplink = "eth0"\n', "", "networks.other.bridge",
     "OVS bridge br-eth0 of network prod"),
])
def test_load_refuses(tmp_path: Path, bindings: str, head: str, key: str, words: str) -> None:
    err = load_error(tmp_path, host("ha", bindings, head))
    assert err.key == key, str(err)
    assert words in str(err), str(err)
    assert err.fix
    assert err.file
    assert err.file.endswith("ha.toml")


def test_a_move_between_ovs_and_a_linux_bridge_keeps_the_topology(tmp_path: Path) -> None:
    graph = build_graph(fleet(tmp_path, {"ha": host("ha", OVS), "hb": host("hb", BRIDGE)}))
    report = check_migration(graph, "vm1", "hb", strict=True)
    assert report.compatible
    assert report.findings == ()
    before, after = report.pairs[0]
    assert (before.mode, after.mode) == ("ovs", "bridge")
    assert before.semantic == after.semantic == "local-switching"


def test_a_move_to_another_vlan_is_refused(tmp_path: Path) -> None:
    other = host("hb", OVS + "vlan = 200\n")
    report = check_migration(build_graph(fleet(tmp_path, {"ha": host("ha", OVS),
                                                          "hb": other})), "vm1", "hb")
    assert not report.compatible
    assert any(f.code.startswith("VLAN") for f in report.findings), report.findings


def test_the_plan_is_bridge_uplink_port_tap_and_access_port(tmp_path: Path,
                                                              monkeypatch) -> None:
    monkeypatch.setenv("OVS_RUNDIR", "/tmp/ovs-run")
    found = fleet(tmp_path, {"ha": host("ha", OVS)})
    plan = build_plan(build_graph(found), found.guests["vm1"], found.hosts["ha"])
    steps = [step for _, step in plan.steps]
    assert [type(s) for s in steps] == [RequireLink, EnsureOvsBridge, EnsureOvsPort,
                                        CreateTap, EnsureOvsPort]
    bridge, uplink, tap, port = steps[1:]
    assert bridge.ovsdb == "unix:/tmp/ovs-run/db.sock"  # as ovs-vsctl finds it
    assert (uplink.port, uplink.tag) == ("eth0", None)  # a trunk
    assert tap.bridge == ""  # no kernel master: OVSDB adds it
    assert (port.port, port.bridge, port.tag) == (tap.name, "br-int", 100)
    assert dict(port.external_ids) == {
        "owner": "sdn", "iface-id": "vm1-nic0", "attached-mac": "52:54:00:00:00:01",
        "vm-id": "vm1", "iface-status": "active", "netmap-owner": "vm1",
        "netmap-network": "prod"}


# --- libvirt ----------------------------------------------------------------------------------

def _ovs_fleet(tmp_path: Path):
    networks = NETWORKS + '\n[networks.blue]\nsegment = "fab"\nvlan = 10\n'
    ovs = OVS + '\n[networks.blue]\nmode = "ovs"\nuplink = "eth0"\nbridge = "br-int"\n'
    return load_fleet(write_fleet(tmp_path / "m", networks, {
        "ha": host("ha", ovs), "hb": host("hb", BRIDGE + '\n[networks.blue]\nmode = "bridge"'
                                          '\nuplink = "eth0"\n')}, {"vm1": GUEST}))


def test_libvirt_networks_for_ovs_are_openvswitch_with_a_tagged_portgroup(
        tmp_path: Path) -> None:
    from xml.etree import ElementTree as ET

    from netmap.libvirt.networks import host_networks

    found = _ovs_fleet(tmp_path)
    nets = {n.name: ET.fromstring(n.xml) for n in host_networks(found, found.hosts["ha"])}
    for name, vlan in (("prod", "100"), ("blue", "10")):
        xml = nets[name]
        assert xml.find("forward").get("mode") == "bridge"
        assert xml.find("bridge").get("name") == "br-int"
        assert xml.find("virtualport").get("type") == "openvswitch"
        group = xml.find("portgroup")
        assert group.get("name") == name
        assert group.find("vlan/tag").get("id") == vlan
    # the Linux bridge host's networks carry no virtualport
    linux = [ET.fromstring(n.xml) for n in host_networks(found, found.hosts["hb"])]
    assert all(x.find("virtualport") is None for x in linux)


@pytest.mark.skipif(not (shutil.which("virt-xml-validate") and shutil.which("xmllint")),
                    reason="virt-xml-validate (libvirt-clients) and xmllint are not installed")
def test_libvirt_networks_for_ovs_pass_virt_xml_validate(tmp_path: Path) -> None:
    from netmap.libvirt.networks import host_networks

    found = _ovs_fleet(tmp_path)
    for network in host_networks(found, found.hosts["ha"]):
        path = tmp_path / f"{network.name}.xml"
        path.write_text(network.xml)
        done = subprocess.run(["virt-xml-validate", str(path), "network"],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, (network.xml, done.stdout, done.stderr)
    broken = tmp_path / "broken.xml"
    broken.write_text(network.xml.replace("<virtualport type=", "<virtualport tipe="))
    assert subprocess.run(["virt-xml-validate", str(broken), "network"],
                          capture_output=True, check=False).returncode != 0


OVS_DOMAIN = """<domain type='kvm'><name>vm9</name><devices>
  <interface type='bridge'>
    <mac address='52:54:00:00:00:09'/>
    <source bridge='br-int'/>
    <virtualport type='openvswitch'/>
    <vlan><tag id='{vlan}'/></vlan>
    <model type='virtio'/>
  </interface>
</devices></domain>"""


@pytest.mark.parametrize(("vlan", "network"), [("100", "prod"), ("10", "blue")])
def test_import_maps_an_openvswitch_interface_by_its_bridge_and_tag(
        tmp_path: Path, vlan: str, network: str) -> None:
    from netmap.libvirt.domain import import_domain
    from netmap.libvirt.xmlsafe import parse_untrusted

    found = _ovs_fleet(tmp_path)
    result = import_domain(parse_untrusted(OVS_DOMAIN.format(vlan=vlan), "vm9.xml"),
                           found.networks, found.hosts, host="ha")
    assert [nic.network for nic in result.guest.nics] == [network], result.findings
    assert result.interfaces[0].virtualport == "openvswitch"


OVS_RUNNING = b"""<domain type='kvm'>
  <name>vm1</name>
  <uuid>3e3fce45-4f53-4fa7-bb32-11f34168b82b</uuid>
  <memory unit='KiB'>1048576</memory>
  <devices>
    <interface type='bridge'>
      <mac address='52:54:00:00:00:01'/>
      <source bridge='br-int'/>
      <virtualport type='openvswitch'>
        <parameters interfaceid='09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f'/>
      </virtualport>
      <vlan><tag id='100'/></vlan>
      <target dev='vnet0'/>
      <model type='virtio'/>
      <mtu size='1500'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
  </devices>
</domain>
"""


def _hook(root: Path, host: str, xml: bytes) -> tuple[int, bytes, str]:
    from netmap.libvirt.hook import migrate_begin

    result = migrate_begin("vm1", xml, mappings=str(root), host=host)
    return result.exit_code, result.output, "\n".join(result.messages)


def _guest_view(xml: bytes) -> str:
    """What the guest sees of its NICs: everything but the host-side placement (the
    interface's type, its <source>, <virtualport>, <vlan>, the tap's <target>)."""
    from xml.etree import ElementTree as ET

    root = ET.fromstring(xml)
    for interface in root.iter("interface"):
        interface.attrib.pop("type", None)
        for tag in ("source", "virtualport", "vlan", "target"):
            for child in interface.findall(tag):
                interface.remove(child)
    return ET.canonicalize(ET.tostring(root, encoding="unicode"), strip_text=True)


def test_the_migrate_hook_rewrites_between_ovs_and_a_linux_bridge(tmp_path: Path) -> None:
    from xml.etree import ElementTree as ET

    root = write_fleet(tmp_path / "m", NETWORKS, {"ha": host("ha", OVS),
                                                  "hb": host("hb", BRIDGE)}, {})
    code, out, messages = _hook(root, "hb", OVS_RUNNING)  # OVS host -> Linux bridge host
    assert code == 0, messages
    iface = ET.fromstring(out).find("devices/interface")
    assert iface.get("type") == "bridge"
    assert iface.find("source").get("bridge") == "br-eth0"
    assert iface.find("virtualport") is None
    assert iface.find("vlan") is None
    assert _guest_view(out) == _guest_view(OVS_RUNNING)
    assert out.count(b"\n") == OVS_RUNNING.count(b"\n") - 4  # only those lines went
    code, back, messages = _hook(root, "ha", out)  # and back to the OVS host
    assert code == 0, messages
    iface = ET.fromstring(back).find("devices/interface")
    assert iface.find("source").get("bridge") == "br-int"
    assert iface.find("virtualport").get("type") == "openvswitch"
    assert iface.find("vlan/tag").get("id") == "100"
    assert _guest_view(back) == _guest_view(OVS_RUNNING)


def test_drift_of_an_ovs_binding_from_a_hand_made_ovsdb_view() -> None:
    from netmap.model.fleet import Binding, Network
    from netmap.model.inventory import OvsPortState, OvsState
    from netmap.rules.drift.ovs import check_ovs

    binding = Binding("prod", "ovs", "eth0", "br-int")
    network = Network("prod", segment="fab", vlan=100)

    def codes(state: OvsState) -> dict[str, str]:
        found: dict[str, str] = {}
        check_ovs(binding, network, state, lambda code, _sev, message, _fix:
                  found.__setitem__(code, message))
        return found

    trunk = OvsPortState("eth0", "br-int")
    guest = OvsPortState("nm1", "br-int", 100, (), (("netmap-network", "prod"),
                                                     ("netmap-owner", "vm1")))
    clean = OvsState("unix:/x", {"br-int": "system"}, (trunk, guest), True)
    assert codes(clean) == {}
    access = OvsState("unix:/x", {"br-int": "system"},
                      (OvsPortState("eth0", "br-int", 7), guest), True)
    assert "tag 7" in codes(access)["OVS_UPLINK_NOT_TRUNK"]
    gone = OvsState("unix:/x", error="cannot connect to OVSDB at unix:/x")
    assert list(codes(gone)) == ["OVSDB_UNREACHABLE"]


def test_show_diff_hosts_for_and_drain_take_ovs_hosts(tmp_path: Path, capsys) -> None:
    import json

    from netmap.cli import main

    root = write_fleet(tmp_path / "m", NETWORKS, {"ha": host("ha", OVS),
                                                  "hb": host("hb", BRIDGE)}, {"vm1": GUEST})
    base = ["--mappings", str(root)]
    assert main([*base, "show", "--json"]) == 0
    shown = capsys.readouterr().out
    assert '"ovs"' in shown
    assert main([*base, "diff", "ha", "hb", "--json"]) == 0
    assert '"ovs"' in capsys.readouterr().out
    assert main([*base, "hosts-for", "vm1", "--strict", "--json"]) == 0
    ranked = json.loads(capsys.readouterr().out)["hosts"]
    assert [(h["host"], h["compatible"], h["findings"]) for h in ranked] == [("hb", True, [])]
    assert main([*base, "drain", "ha", "--strict", "--json"]) == 0
    drained = json.loads(capsys.readouterr().out)
    assert drained["moves"] == [{"guest": "vm1", "destination": "hb", "warnings": []}]


def test_the_draft_binds_a_network_whose_vlan_an_ovs_port_is_tagged_with(monkeypatch) -> None:
    monkeypatch.delenv("OVS_RUNDIR", raising=False)
    from netmap.model.fleet import Network
    from netmap.model.inventory import Interface, Inventory, OvsPortState, OvsState
    from netmap.rules.draft import draft_host

    ovs = OvsState("unix:/run/openvswitch/db.sock", {"br-int": "system"},
                   (OvsPortState("eno1", "br-int"), OvsPortState("vnet3", "br-int", 100)),
                   True)
    inventory = Inventory("h1", None, (Interface(2, "eno1", "physical", 1500),), ovs=ovs)
    networks = {"prod": Network("prod", segment="fab", vlan=100),
                "other": Network("other", segment="fab", vlan=200)}
    text = draft_host(inventory, networks=networks)
    assert '[networks.prod]\nmode = "ovs"\nuplink = "eno1"\nbridge = "br-int"' in text
    assert "[networks.other]" not in text  # no port is tagged 200
    assert 'ovsdb = "unix:/run/openvswitch/db.sock"' in text  # not the default socket here


def test_a_new_bridge_of_the_kernel_datapath_needs_the_openvswitch_module(
        tmp_path: Path) -> None:
    """A bridge netmap creates with datapath system (OVS's default) needs the kernel's
    openvswitch module: realize asks the kernel probe up front, as for 802.1Q, instead of
    learning it from a port ovs-vswitchd cannot use after the change (the agreement
    sweep's finding); netdev needs only tun, and an existing bridge is used as it is."""
    from netmap.netlink.kernel_support import KernelProbe, features_needed

    for datapath in ("system", None):
        bridge = EnsureOvsBridge("br-int", "unix:/run/ovs/db.sock", datapath)
        assert features_needed(bridge, "create") == ["openvswitch"]
        assert features_needed(bridge, "adopt") == []
        assert features_needed(bridge, "unchanged") == []
    netdev = EnsureOvsBridge("br-int", "unix:/run/ovs/db.sock", "netdev")
    assert features_needed(netdev, "create") == []
    (tmp_path / "proc").mkdir()
    config = tmp_path / "proc" / "config.gz"
    import gzip

    with gzip.open(config, "wt") as stream:
        stream.write("# CONFIG_OPENVSWITCH is not set\nCONFIG_TUN=y\n")
    probe = KernelProbe(tmp_path, "6.1.0-test")
    reason = probe.lacks("openvswitch") or ""
    assert "CONFIG_OPENVSWITCH" in reason
    assert 'datapath_type = "netdev"' in probe.fix("openvswitch", reason)
    (tmp_path / "sys" / "module" / "openvswitch").mkdir(parents=True)  # loaded
    assert KernelProbe(tmp_path, "6.1.0-test").lacks("openvswitch") is None
