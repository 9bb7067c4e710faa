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
    assert row.status == BAD_OUTPUT
    assert row.inventory is None
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


# what `netmap discover --json --with-state` adds on a host where netmap made a tap for g1
STATE = {"version": 1, "host": "h1", "guests": {"g1": {"status": "realized",
                                                        "resources": ["link:nm0123456789"]}},
         "resources": {"link:nm0123456789": {"guests": ["g1"], "created": True,
                                             "step": {"kind": "tap", "bridge": "br0"},
                                             "info": {"ifindex": 7}}}}


def test_the_state_brought_back_with_the_inventory_is_judged_centrally(tmp_path: Path) -> None:
    """fleet drift reads netmap's state from the same output as the inventory: the tap the
    state names is gone from the live host, so ENDPOINT_VANISHED; a host whose output held
    no state gets no endpoint finding and says that it was not judged."""
    from netmap.state import VERSION

    state = {**STATE, "version": VERSION}
    host = ('[host]\nname = "h1"\nfeatures = ["bridge"]\n\n[uplinks.eth0]\n'
            'segments = ["s1"]\nmtu = 9000\n')
    fleet = load_fleet(write_fleet(tmp_path / "m", '[networks.n]\nsegment = "s1"\n',
                                   {"h1": host}, {}))
    with_state = json.dumps({**LIVE.as_dict(), "netmap_state": {"h1": state}})
    row = read_inventory("h1", with_state)
    assert row.state == state
    judged = compare(fleet, row)
    assert judged.status == DRIFT
    (vanished,) = [f for f in judged.findings if f.code == "ENDPOINT_VANISHED"]
    assert "nm0123456789" in vanished.message

    # the state directory held no document for this host: netmap made nothing there
    empty = read_inventory("h1", json.dumps({**LIVE.as_dict(), "netmap_state": {}}))
    assert empty.state is not None
    assert empty.state["resources"] == {}
    assert compare(fleet, empty).status == NO_DRIFT

    plain = read_inventory("h1", json.dumps(LIVE.as_dict()))
    assert plain.state is None
    judged = compare(fleet, plain)
    assert judged.status == NO_DRIFT
    assert [f.code for f in judged.findings if f.code.startswith(("ENDPOINT_", "STATE_"))] \
        == ["STATE_NOT_READ"]

    broken = read_inventory("h1", json.dumps({**LIVE.as_dict(), "netmap_state": [1]}))
    assert broken.status == BAD_OUTPUT
    assert "netmap_state" in (broken.problem or "")


def test_discover_brings_back_every_host_state_of_its_directory_and_no_journal(
        tmp_path: Path) -> None:
    from netmap.cli import main
    from netmap.commands.discover import host_states
    from netmap.errors import InputError
    from netmap.state import VERSION

    state = {**STATE, "version": VERSION}
    (tmp_path / "h1.json").write_text(json.dumps(state))
    (tmp_path / "drain-h1.json").write_text('{"moves": []}')  # a journal beside it
    assert host_states(str(tmp_path)) == {"h1": state}
    (tmp_path / "h2.json").write_text("{not json")
    with pytest.raises(InputError) as damaged:
        host_states(str(tmp_path))
    assert "h2.json" in str(damaged.value.file)
    assert main(["discover", "--with-state"]) == 2  # the state goes into --json only
