"""check --live folds in the destination's drift, scoped to what one guest uses there
(issue 14, item 13). The live host is a recorded inventory, so no root is needed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import EXAMPLE_MAPPINGS

from netmap.cli import main
from netmap.load import load_fleet
from netmap.model.inventory import Interface, Inventory
from netmap.rules.drift import drift_report


def host_b_as_declared(features: frozenset[str]) -> Inventory:
    """host-b's uplinks as its mapping declares them, up, with its mgmt bridge."""
    def up(index: int, name: str, kind: str = "physical", mtu: int = 1500,
           **extra: object) -> Interface:
        return Interface(index, name, kind, mtu, admin_up=True, oper_state="up",
                         carrier=True, **extra)

    return Inventory("host-b", "nm-lab-host-b", (
        up(2, "eno2", mtu=9000), up(3, "eno3", master="br-eno3"),
        up(4, "br-eno3", "bridge")), {}, features)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Inventory]:
    """Discovery answers with the inventory the test puts here."""
    from netmap.netlink import discover

    answers: list[Inventory] = []
    monkeypatch.setattr(discover, "discover", lambda netns, **_: answers[0])
    monkeypatch.setenv("NETMAP_STATE_DIR", str(tmp_path / "state"))
    return answers


def live_codes(capsys: pytest.CaptureFixture[str], guest: str) -> tuple[int, dict[str, str]]:
    code = main(["--mappings", str(EXAMPLE_MAPPINGS), "check", guest, "--to", "host-b",
                 "--live", "--json"])
    findings = json.loads(capsys.readouterr().out)["findings"]
    return code, {f["code"]: f["message"] for f in findings}


def test_features_the_mapping_lists_are_not_undeclared(
        capsys: pytest.CaptureFixture[str], recorded: list[Inventory]) -> None:
    declared = load_fleet(EXAMPLE_MAPPINGS).hosts["host-b"].features
    recorded.append(host_b_as_declared(declared))
    code, found = live_codes(capsys, "vm4")  # vm4: one NIC on mgmt (bridge)
    assert "FEATURE_UNDECLARED" not in found, found["FEATURE_UNDECLARED"]
    assert code == 0, found


def test_undeclared_is_measured_against_the_whole_mapping() -> None:
    host = load_fleet(EXAMPLE_MAPPINGS).hosts["host-b"]
    fewer = host.features - {"macvtap", "vxlan"}
    narrower = dataclasses.replace(host, features=fewer)
    report = drift_report(narrower, host_b_as_declared(host.features),
                          verify_features={"bridge", "tun"})
    undeclared = [f.message for f in report.findings if f.code == "FEATURE_UNDECLARED"]
    assert undeclared == ["host-b offers macvtap, vxlan, which the mapping does not list; "
                          "check assumes they are absent."]
    # verified: only what was asked; a declared feature the host lacks is missing only then
    lacking = host_b_as_declared(host.features - {"vhost-net"})
    for verify, missing in (({"bridge", "tun"}, False), ({"vhost-net"}, True), (None, True)):
        report = drift_report(host, lacking, verify_features=verify)
        assert any(f.code == "FEATURE_MISSING" and "vhost-net" in f.message
                   for f in report.findings) is missing, verify
