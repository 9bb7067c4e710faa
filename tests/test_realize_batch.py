"""Several guests realized as one transaction, beyond OVS (tests/test_ovs_batch.py has the
OVS cases): a part they share is decided once, so guests that need it differently are
refused together, before anything is touched. In a namespace the test creates (nmov-)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import guest_toml, links_by_name, needs_netns, write_fleet

from netmap.cli import main
from netmap.state import HostState

pytestmark = [pytest.mark.netns, needs_netns]
NETWORKS = """[networks.red]
segment = "fabric"
vlan = 10

[networks.plain]
segment = "other"
"""


@pytest.fixture
def host_h(netns_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """Host h in a namespace of its own (uplink eth0, a veth), guests a (red) and b (plain)."""
    netns = netns_factory("nmov")
    subprocess.run(["ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name",
                    "eth0p"], check=True)
    host = (f'[host]\nname = "h"\nnetns = "{netns}"\n\n[uplinks.eth0]\n'
            'segments = ["fabric", "other"]\n\n[networks.red]\nmode = "bridge"\n'
            'uplink = "eth0"\n\n[networks.plain]\nmode = "bridge"\nuplink = "eth0"\n')
    root = write_fleet(tmp_path / "m", NETWORKS, {"h": host}, {
        "a": guest_toml("a", "h", ("red", "52:54:00:0d:00:01")),
        "b": guest_toml("b", "h", ("plain", "52:54:00:0d:00:02"))})
    monkeypatch.setenv("NETMAP_MAPPINGS", str(root))
    monkeypatch.setenv("NETMAP_STATE_DIR", str(tmp_path / "state"))
    return netns, root


def test_guests_that_need_a_shared_bridge_differently_are_refused_together(
        host_h: tuple[str, Path], capsys) -> None:
    netns, _root = host_h
    before = set(links_by_name(netns))
    assert main(["realize", "a", "b", "--host", "h"]) == 3
    err = capsys.readouterr().err
    assert "a and b need link:br-eth0 differently" in err, err
    assert "realize a and b one after the other" in err
    assert "nothing was changed" in err
    assert set(links_by_name(netns)) == before
    assert HostState.load("h").guests == {}


def test_realize_all_says_which_guest_files_it_could_not_read(host_h: tuple[str, Path],
                                                              capsys) -> None:
    _netns, root = host_h
    (root / "guests" / "a.toml").unlink()
    (root / "guests" / "c.toml").write_text('[guest]\nname = "c"\nhost = "h"\n[[nics]\n')
    assert main(["realize", "--all", "--host", "h", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "c.toml cannot be read, its guest is not realized" in captured.err
    assert "dry run" in captured.out
    assert "b" in captured.out
