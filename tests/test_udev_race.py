"""udev's MACAddressPolicy=persistent against netmap's tap MAC (netmap/netlink/udev.py).

No udev hears a lab namespace's links, so a stand-in plays its part: as each new tap
appears it writes a MAC of its own, as udev does when it read the tap's random MAC before
netmap set its own, and then records the event handled (/run/udev/data/n<ifindex>, here
under a temporary directory). Seen for real in the VM lab: a realized tap with udev's MAC.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import links_by_name, needs_net_admin

from netmap.cli import main
from netmap.netlink import udev

UDEV_MAC = "02:0d:0e:0f:00:01"
GUEST = '[guest]\nname = "vmu"\nhost = "host-a"\n\n[[nics]]\nnetwork = "mgmt"\n' \
        'mac = "52:54:00:0d:00:01"\n'


class FakeUdev(threading.Thread):
    """Gives each tap that appears in `netns` UDEV_MAC, then marks its event handled."""

    def __init__(self, netns: str, run: Path) -> None:
        super().__init__(daemon=True)
        self.netns, self.run_dir = netns, run
        self.handled: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for name, link in links_by_name(self.netns).items():
                kind = link.get("linkinfo", {}).get("info_kind")
                if kind == "tun" and name not in self.handled:
                    subprocess.run(["ip", "-n", self.netns, "link", "set", name, "address",
                                    UDEV_MAC], check=True, capture_output=True)
                    (self.run_dir / "data" / f"n{link['ifindex']}").touch()
                    self.handled[name] = link["ifindex"]
            time.sleep(0.002)


@needs_net_admin
def test_a_tap_whose_mac_udev_rewrote_gets_netmaps_back_before_realize_returns(
        cli_lab_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    lab, _root = cli_lab_factory("nmudev", ["host-a"], {"vmu": GUEST})
    netns = lab.hosts["host-a"]
    run = tmp_path / "udev"
    (run / "data").mkdir(parents=True)
    (run / "control").touch()
    monkeypatch.setattr(udev, "UDEV_RUN", run)
    monkeypatch.setattr(udev, "manages", lambda _netns: True)  # as for the machine's own
    fake = FakeUdev(netns, run)
    fake.start()
    try:
        code = main(["realize", "vmu", "--host", "host-a", "--json"])
        out = capsys.readouterr()
        assert code == 0, out.err
        tap = json.loads(out.out)["nics"][0]["device"]
        assert tap in fake.handled  # udev did rewrite it, before realize returned
        assert links_by_name(netns)[tap]["address"] == "fe:54:00:0d:00:01"  # the host side's
        again = main(["realize", "vmu", "--host", "host-a"])
        assert again == 0
        assert "nothing changed" in capsys.readouterr().out  # nothing left to repair
    finally:
        fake.stop.set()
        fake.join()
    assert main(["release", "vmu", "--host", "host-a"]) == 0


def test_waiting_ends_at_the_timeout_and_names_the_links_udev_never_handled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "n7").touch()
    monkeypatch.setattr(udev, "UDEV_RUN", tmp_path)
    started = time.monotonic()
    assert udev.wait_handled([7, 9], timeout=0.2) == [9]
    assert time.monotonic() - started < 2
    assert udev.wait_handled([7]) == []


def test_udev_is_not_waited_for_in_a_lab_namespace_or_without_udev(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(udev, "UDEV_RUN", tmp_path)
    assert not udev.manages(None)  # no control socket: udev does not run
    (tmp_path / "control").touch()
    assert not udev.manages("nm-lab-host-a")  # udev never hears another namespace's links
