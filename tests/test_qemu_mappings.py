"""What the QEMU helper reads of the mappings: QEMU waits for it at every guest start and
hotplug, so without a guest to look up it reads networks.toml and this host's file only,
and answers as the whole fleet's load would. Pure: no namespace, no root."""

from __future__ import annotations

from pathlib import Path

import pytest

import netmap.load
from netmap.errors import InputError
from netmap.load import load_fleet
from netmap.qemu.helper import Request, load_mappings


def request(mappings: Path, **options: str) -> Request:
    return Request(fd=0, network="mgmt", mappings=str(mappings), **options)


def refuse_whole_fleet(monkeypatch) -> None:
    def whole(*_args, **_kwargs):
        raise AssertionError("read the whole fleet")

    monkeypatch.setattr(netmap.load, "load_fleet", whole)


def test_one_host_read_as_the_whole_fleet_reads_it(mappings: Path, monkeypatch) -> None:
    fleet = load_fleet(mappings)
    (mappings / "hosts" / "host-c.toml").write_text("not TOML at all [")  # never opened
    refuse_whole_fleet(monkeypatch)
    small, host = load_mappings(request(mappings, host="host-a"))
    assert host == fleet.hosts["host-a"]
    assert small.networks == fleet.networks
    assert list(small.hosts) == ["host-a"]
    assert small.root == fleet.root


def test_host_from_the_environment(mappings: Path, monkeypatch) -> None:
    monkeypatch.setenv("NETMAP_HOST", "host-b")
    refuse_whole_fleet(monkeypatch)
    assert load_mappings(request(mappings))[1].name == "host-b"


@pytest.mark.parametrize("option", [{"guest": "vm1"}, {"mac": "52:54:00:12:34:56"}])
def test_a_named_guest_needs_the_whole_fleet(mappings: Path, monkeypatch,
                                            option: dict[str, str]) -> None:
    refuse_whole_fleet(monkeypatch)
    with pytest.raises(AssertionError, match="whole fleet"):
        load_mappings(request(mappings, host="host-a", **option))


def test_a_file_named_otherwise_is_found_as_the_whole_fleet_finds_it(mappings: Path) -> None:
    (mappings / "hosts" / "host-a.toml").rename(mappings / "hosts" / "a.toml")
    fleet, host = load_mappings(request(mappings, host="host-a"))
    assert host == load_fleet(mappings).hosts["host-a"]
    assert set(fleet.hosts) == {"host-a", "host-b", "host-c", "host-d"}


@pytest.mark.parametrize("name", ["../hosts/host-a", ".host-a", "nosuch"])
def test_odd_or_unknown_names_are_the_whole_fleets_errors(mappings: Path, name: str) -> None:
    with pytest.raises(InputError, match="unknown host"):
        load_mappings(request(mappings, host=name))


def test_a_broken_own_file_is_reported_as_everywhere(mappings: Path) -> None:
    path = mappings / "hosts" / "host-a.toml"
    path.write_text(path.read_text().replace('name = "host-a"', 'name = "host a"'))
    with pytest.raises(InputError) as caught:
        load_mappings(request(mappings, host="host-a"))
    assert caught.value.file is not None
    assert Path(caught.value.file).name == "host-a.toml"
