"""The VM tier: tests that need what the CI kernel lacks (an SR-IOV PF, 802.1Q, bridge VLAN
filtering, vhost-net). They run only inside the VM that scripts/vmlab boots (which sets
NETMAP_VMLAB=1); anywhere else they are not collected, and tests/test_vmlab.py runs them
through scripts/vmlab instead.

Inside the VM the host is the VM itself: realize acts on its own interfaces (the igb PFs
and their VFs, dummy uplinks), which the VM throws away when it powers off. Each test
still removes what it made, so that the next one starts from a clean host.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fleet_files import write_fleet
from vmhost import HOST, pfs, set_numvfs

INSIDE = os.environ.get("NETMAP_VMLAB") == "1"
collect_ignore_glob = [] if INSIDE else ["test_*.py"]


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """write(networks, host, guests) -> the mappings dir, made the one netmap reads; the
    host mapping is this VM's, state goes to tmp_path."""
    root = tmp_path / "mappings"

    def write(networks: str, host: str, guests: dict[str, str]) -> Path:
        return write_fleet(root, networks, {HOST: host}, guests)

    monkeypatch.setenv("NETMAP_MAPPINGS", str(root))
    monkeypatch.setenv("NETMAP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("NETMAP_HOST", HOST)
    return write


@pytest.fixture
def sriov_pf() -> Iterator[str]:
    """The first igb PF with 4 VFs enabled (entries as the driver makes them); 0 after."""
    pf = pfs()[0]
    set_numvfs(pf, 4)
    yield pf
    set_numvfs(pf, 0)
