"""The central half of `fleet drift`, without Ansible: another host's `discover --json` read
back, and a row per host whatever it printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netmap.load import load_fleet
from netmap.model.inventory import Interface, Inventory, SriovPf, VirtualFunctionUse
from netmap.model.inventory_json import inventory_from_json
from netmap.rules.fleet_drift import (
    BAD_OUTPUT,
    DRIFT,
    NO_DRIFT,
    NO_MAPPING,
    compare,
    read_inventory,
)
from tests.conftest import write_fleet

LIVE = Inventory("h1", None, (
    Interface(1, "lo", "loopback", 65536, admin_up=True, oper_state="unknown"),
    Interface(2, "eth0", "physical", 9000, "52:54:00:00:00:01", True, "up", True,
              altnames=("enp1s0",), addresses=("192.0.2.1/24",), perm_mac="52:54:00:00:00:01"),
    Interface(3, "eth0v0", "physical", 1500, "52:54:00:00:00:02")),
    {"eth0": SriovPf("eth0", 8, 1, (VirtualFunctionUse(0, "0000:01:00.1", "eth0v0"),))},
    frozenset({"bridge", "sriov"}), frozenset({"eth0v0"}))


def test_an_inventory_survives_the_wire() -> None:
    assert inventory_from_json(json.dumps(LIVE.as_dict())) == LIVE


@pytest.mark.parametrize("text", ["", "[1]", '{"interfaces": 3}',
                                  '{"interfaces": [{"name": "eth0"}]}',
                                  '{"interfaces": [], "features": "bridge"}',
                                  '{"interfaces": [{"index": 1, "name": "x", "kind": "veth", '
                                  '"mtu": true}]}'])
def test_output_that_is_not_an_inventory_is_a_row_of_its_own(text: str) -> None:
    row = read_inventory("h1", text)
    assert row.status == BAD_OUTPUT and row.inventory is None
    assert "printed something else" in (row.problem or "")


def test_each_host_is_compared_with_its_own_mapping(tmp_path: Path) -> None:
    host = ('[host]\nname = "h1"\nfeatures = ["bridge"]\n\n[uplinks.{uplink}]\n'
            'segments = ["s1"]\nmtu = 9000\n')
    fleet = load_fleet(write_fleet(tmp_path / "m", '[networks.n]\nsegment = "s1"\n',
                                   {"h1": host.format(uplink="eth0")}, {}))
    text = json.dumps(LIVE.as_dict())
    assert compare(fleet, read_inventory("h1", text)).status == NO_DRIFT
    assert compare(fleet, read_inventory("h9", text)).status == NO_MAPPING
    fleet = load_fleet(write_fleet(tmp_path / "m2", '[networks.n]\nsegment = "s1"\n',
                                   {"h1": host.format(uplink="eth7")}, {}))
    drifted = compare(fleet, read_inventory("h1", text))
    assert drifted.status == DRIFT
    assert any("eth7" in f.message for f in drifted.findings), drifted.findings
