"""Concurrent realizes on the real PF: three netmap processes, started at the same moment,
each realize another guest on the same 2-VF pool. Two get a VF each, never one VF twice;
the third is refused with nothing changed. Read back through iproute2 (the PF's VF
entries) and netmap's state file.

The processes are forks of this one (one interpreter start under TCG costs seconds); each
runs the CLI's main() as `netmap realize` would, with a longer wait for the host lock than
the 60 s default: under TCG one realize can take that long, on a real host well under a
second."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest
from vmhost import HOST, guest, set_numvfs, vf_entries

from netmap.cli import main
from netmap.state import HostState

pytestmark = pytest.mark.vm
NETWORKS = '[networks.storage]\nsegment = "lab-storage"\nvlan = 210\n'
GUESTS, VFS = 3, 2
MACS = {f"c{i}": f"52:54:00:c0:00:0{i}" for i in range(1, GUESTS + 1)}


def host_mapping(pf: str) -> str:
    # the mapping promises 8 VFs: check lets all five through, the live pool decides
    return f"""[host]
name = "{HOST}"
features = ["tun", "sriov", "vhost-net"]

[uplinks.{pf}]
segments = ["lab-storage"]
sriov = {{ total_vfs = 8 }}

[networks.storage]
mode = "sriov-vf"
uplink = "{pf}"
"""


def realize_at_once(names: list[str], logs: Path) -> dict[str, int]:
    """Fork one process per guest; all block on a pipe until every one exists, then
    realize at once. Returns each guest's exit code; its output is in logs/NAME."""
    # what realize imports lazily (fleet loading, networkx, rtnetlink, pyroute2 for the VF
    # entries, rich), once here: each fork would import it anew, seconds under TCG
    import pyroute2  # noqa: F401
    import rich.console  # noqa: F401

    import netmap.commands.realize
    import netmap.load
    import netmap.netlink.apply
    import netmap.plan
    import netmap.query.graph  # noqa: F401

    gate_read, gate_write = os.pipe()
    children = {}
    for name in names:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 4
            try:
                os.close(gate_write)
                os.read(gate_read, 1)  # EOF when the parent closes its end: go
                sys.stdout = sys.stderr = open(logs / name, "w", buffering=1)  # noqa: SIM115
                from netmap.netlink import apply

                apply.realize_plan = functools.partial(apply.realize_plan, lock_timeout=600)
                code = main(["realize", name, "--host", HOST])
            finally:
                os._exit(code)
        children[pid] = name
    os.close(gate_read)
    os.close(gate_write)
    codes = {}
    for pid, name in children.items():
        _, status = os.waitpid(pid, 0)
        codes[name] = os.waitstatus_to_exitcode(status)
    return codes


def test_concurrent_realizes_never_claim_one_vf_twice(sriov_pf, fleet, tmp_path: Path
                                                      ) -> None:
    set_numvfs(sriov_pf, VFS)  # fewer VFs than guests: one must be refused
    fleet(NETWORKS, host_mapping(sriov_pf),
          {name: guest(name, ("storage", mac)) for name, mac in MACS.items()})
    before = vf_entries(sriov_pf)

    codes = realize_at_once(list(MACS), tmp_path)
    said = {name: (tmp_path / name).read_text() for name in MACS}
    winners = sorted(name for name, code in codes.items() if code == 0)
    assert sorted(codes.values()) == [0] * VFS + [3] * (GUESTS - VFS), (codes, said)
    loser = next(name for name in MACS if name not in winners)
    assert "no free VF" in said[loser], said[loser]
    assert sriov_pf in said[loser], said[loser]
    entries = vf_entries(sriov_pf)
    holders = {name: [e["vf"] for e in entries if e["mac"] == MACS[name]] for name in MACS}
    for name in MACS:
        assert len(holders[name]) == (1 if name in winners else 0), (name, entries)
    assert sorted(holders[name][0] for name in winners) == list(range(VFS))
    assert all(e["vlan"] == 210 for e in entries)

    claims = {key: record for key, record in HostState.load(HOST).data["resources"].items()
              if key.startswith("vf:")}
    assert sorted(claims) == sorted(f"vf:{sriov_pf}:{MACS[name]}" for name in winners)
    assert sorted(r["info"]["index"] for r in claims.values()) == list(range(VFS))
    owner = {MACS[name]: name for name in winners}
    assert all(r["guests"] == [owner[key.split(":", 2)[2]]] for key, r in claims.items())

    codes = {name: main(["release", name, "--host", HOST]) for name in winners}
    assert set(codes.values()) == {0}
    assert vf_entries(sriov_pf) == before
