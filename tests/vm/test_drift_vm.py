"""Discovery and drift of what the CI kernel cannot build, on Debian's kernel: a bond as
uplink (its slaves dummies), an admin's 802.1Q sub-interface as uplink, a VLAN-filtering
bridge on the bond, and the 802.1Q sub-interface netmap makes for a VLAN macvtap.
`discover --json` must report them as iproute2 sees them, and `drift` must notice each
one taken away or changed: a VLAN dropped from a bridge port (the trunk's and the access
port's), netmap's sub-interface deleted, the uplink sub-interface deleted, a declared
uplink enslaved to the bond, the bond down."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from vmhost import HOST, bridge, guest, ip

from netmap.cli import main

pytestmark = pytest.mark.vm
DUMMIES = ("nmvmup0", "nmvmup1", "nmvmup2", "nmvmup3", "nmvmup4")
BOND, ADMIN_SUB = "nmvmbond0", "nmvmup2.140"
NETWORKS = """[networks.on-bond]
segment = "lab"
vlan = 142

[networks.on-sub]
segment = "lab-sub"

[networks.tagged-mv]
segment = "lab-mv"
vlan = 141

[networks.spare]
segment = "lab-spare"
"""
HOST_MAPPING = f"""[host]
name = "{HOST}"
features = ["tun", "macvtap", "bridge", "vhost-net"]

[uplinks.{BOND}]
segments = ["lab"]

[uplinks."{ADMIN_SUB}"]
segments = ["lab-sub"]

[uplinks.nmvmup3]
segments = ["lab-mv"]

[uplinks.nmvmup4]
segments = ["lab-spare"]

[networks.on-bond]
mode = "bridge"
uplink = "{BOND}"

[networks.on-sub]
mode = "macvtap-bridge"
uplink = "{ADMIN_SUB}"

[networks.tagged-mv]
mode = "macvtap-bridge"
uplink = "nmvmup3"

[networks.spare]
mode = "macvtap-bridge"
uplink = "nmvmup4"
"""


@pytest.fixture
def lab(fleet) -> Iterator[None]:
    for name in DUMMIES:
        ip("link", "add", name, "type", "dummy")
    ip("link", "add", BOND, "type", "bond", "mode", "active-backup")
    for slave in ("nmvmup0", "nmvmup1"):
        ip("link", "set", slave, "master", BOND)
    for name in (*DUMMIES, BOND):
        ip("link", "set", name, "up")
    ip("link", "add", "link", "nmvmup2", "name", ADMIN_SUB, "type", "vlan", "id", "140")
    ip("link", "set", ADMIN_SUB, "up")
    fleet(NETWORKS, HOST_MAPPING, {"g1": guest(
        "g1", ("on-bond", "52:54:00:d1:00:01"), ("on-sub", "52:54:00:d1:00:02"),
        ("tagged-mv", "52:54:00:d1:00:03"))})
    yield
    main(["release", "g1", "--host", HOST])
    for name in (f"br-{BOND}", ADMIN_SUB, BOND, *DUMMIES):  # whatever release could not
        ip("link", "del", name, check=False)


def run_json(capsys, *argv: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def drift(capsys) -> tuple[int, dict[str, list[str]]]:
    code, report = run_json(capsys, "drift", HOST)
    found: dict[str, list[str]] = {}
    for finding in report["findings"]:
        if finding["severity"] != "info":
            found.setdefault(finding["code"], []).append(finding["message"])
    return code, found


def test_discover_and_drift_of_bond_and_8021q(lab, capsys) -> None:
    code, realized = run_json(capsys, "realize", "g1", "--host", HOST)
    assert code == 0
    tap = realized["nics"][0]["device"]
    bridge_name = json.loads(ip("-j", "link", "show", BOND))[0]["master"]

    code, inventory = run_json(capsys, "discover")
    assert code == 0
    links = {link["name"]: link for link in inventory["interfaces"]}
    bond_mode = json.loads(ip("-d", "-j", "link", "show", BOND))[0]["linkinfo"]["info_data"]
    assert links[BOND]["kind"] == "bond"
    assert bond_mode["mode"] == "active-backup"
    assert links[BOND]["bond_mode"] == 1  # active-backup
    assert [links[s]["master"] for s in ("nmvmup0", "nmvmup1")] == [BOND, BOND]
    assert (links[ADMIN_SUB]["kind"], links[ADMIN_SUB]["vlan_id"],
            links[ADMIN_SUB]["lower"]) == ("vlan", 140, "nmvmup2")
    assert (links["nmvmup3.141"]["kind"], links["nmvmup3.141"]["vlan_id"],
            links["nmvmup3.141"]["lower"]) == ("vlan", 141, "nmvmup3")
    assert links[BOND]["master"] == bridge_name
    assert 142 in links[BOND]["vlans"]
    assert links[tap]["vlans"] == [142]  # the access port carries its one VLAN
    assert drift(capsys) == (0, {})

    bridge("vlan", "del", "dev", tap, "vid", "142")
    bridge("vlan", "del", "dev", BOND, "vid", "142")
    code, found = drift(capsys)
    assert code == 1, found
    assert set(found) == {"BRIDGE_VLAN_MISSING"}, found
    assert sorted(m.split()[1] for m in found["BRIDGE_VLAN_MISSING"]) == sorted([BOND, tap])
    assert all("VLAN 142" in m for m in found["BRIDGE_VLAN_MISSING"])
    bridge("vlan", "add", "dev", BOND, "vid", "142")
    bridge("vlan", "add", "dev", tap, "vid", "142", "pvid", "untagged")
    assert drift(capsys) == (0, {})

    ip("link", "del", "nmvmup3.141")  # netmap's sub-interface (its macvtap goes with it)
    code, found = drift(capsys)
    assert code == 1, found
    assert set(found) == {"ENDPOINT_VANISHED"}, found
    assert any("nmvmup3.141" in m for m in found["ENDPOINT_VANISHED"])

    ip("link", "del", ADMIN_SUB)  # the admin's sub-interface, the declared uplink
    ip("link", "set", "nmvmup4", "down")
    ip("link", "set", "nmvmup4", "master", BOND)  # a declared uplink, now the bond's slave
    ip("link", "set", BOND, "down")
    code, found = drift(capsys)
    assert code == 1
    assert [m for m in found["UPLINK_MISSING"] if f"uplink {ADMIN_SUB} does not" in m]
    assert [m for m in found["UPLINK_ENSLAVED"] if "nmvmup4" in m and f"bond {BOND}" in m]
    assert [m for m in found["UPLINK_DOWN"] if m.startswith(f"uplink {BOND} ")]
