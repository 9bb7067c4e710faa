"""README's walkthrough of the fleet with libvirt, as a new user follows it: a copy of the
mappings, `scripts/libvirt_lab.py up` with two guests on host-a, then locate, drain
--execute, locate --write, and Ctrl-C. Namespaces prefix nmflu."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    EXAMPLE_MAPPINGS,
    REPO,
    interrupt,
    lab_namespaces,
    wait_until_up,
)
from tests.libvirt_marks import LIBVIRT_LAB, NEEDS_LIBVIRT_PYTHON

sys.path.insert(0, str(REPO / "scripts"))
import libvirt_lab  # scripts/ is not a package

pytestmark = [*LIBVIRT_LAB, NEEDS_LIBVIRT_PYTHON]

SCRIPT = [sys.executable, str(REPO / "scripts/libvirt_lab.py")]


def test_up_gives_the_walkthrough_a_lab_that_migrates(tmp_path: Path) -> None:
    refused = subprocess.run([*SCRIPT, "up", "--mappings", str(REPO / "mappings"), "host-a"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "copy them first" in refused.stderr

    problem = libvirt_lab.isolation_problem()
    if problem:
        pytest.skip(problem)
    fleet = tmp_path / "fleet"
    shutil.copytree(EXAMPLE_MAPPINGS, fleet)
    for old in (fleet / "guests").iterdir():
        old.unlink()
    prefix = f"nmflu{os.getpid() % 1000}"
    up = subprocess.Popen([*SCRIPT, "up", "--mappings", str(fleet), "--prefix", prefix,
                           "--guest", "g1@host-a", "--guest", "g2@host-a",
                           "host-a", "host-b", "host-c"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    env = {**os.environ, "PYTHONPATH": str(REPO), "NETMAP_MAPPINGS": str(fleet),
           "NETMAP_STATE_DIR": str(tmp_path / "state")}

    def netmap(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "netmap", *args], capture_output=True,
                              text=True, cwd=REPO, env=env, timeout=240, check=False)

    try:
        wait_until_up(up)
        for host in ("host-a", "host-b", "host-c"):
            text = (fleet / "hosts" / f"{host}.toml").read_text()
            assert f'netns = "{prefix}-{host}"' in text
            assert 'libvirt_uri = "qemu+unix:///system?socket=' in text

        where = netmap("locate", "--json")
        assert where.returncode == 0, where.stdout + where.stderr
        assert {g["guest"]: g["status"] for g in json.loads(where.stdout)["guests"]} == {
            "g1": "agrees", "g2": "agrees"}
        moved = netmap("drain", "host-a", "--execute", "--json")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        summary = json.loads(moved.stdout.splitlines()[-1])
        dests = {o["guest"]: o["dest"] for o in summary["outcomes"]}
        assert {o["status"] for o in summary["outcomes"]} == {"released"}
        assert netmap("locate").returncode == 1  # the files still say host-a
        assert netmap("locate", "--write").returncode == 0
        for guest, dest in dests.items():
            assert f'host = "{dest}"' in (fleet / "guests" / f"{guest}.toml").read_text()
    finally:
        interrupt(up)
    assert up.returncode == 0, up.stderr.read() if up.stderr else ""
    assert lab_namespaces(prefix) == []
