"""netmap.ansible_run against real Ansible on this machine (its `local` connection: no SSH,
no root), for what does not depend on how a host is reached."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from netmap.ansible_run import OK, run_everywhere

pytestmark = pytest.mark.skipif(shutil.which("ansible") is None,
                                reason="needs ansible (pip install ansible-core)")


def test_a_fleet_that_prints_more_than_a_pipe_holds_still_finishes(tmp_path: Path,
                                                                     monkeypatch) -> None:
    """Ansible echoes every host's result on its own stdout: 20 hosts of a few hundred links
    each print megabytes. Unread, that output filled the pipe and Ansible blocked on it
    until --timeout (the bench's hosts of 223 links: no fleet discover ever finished)."""
    monkeypatch.setenv("ANSIBLE_LOCAL_TEMP", str(tmp_path / "ansible-local"))
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("\n".join(
        f"h{i} ansible_connection=local ansible_python_interpreter={sys.executable}"
        for i in range(3)) + "\n")
    command = f"{sys.executable} -c \"print('x' * 100000)\""
    runs = run_everywhere(str(inventory), command, forks=3, timeout=90)
    assert [run.host for run in runs] == ["h0", "h1", "h2"]
    assert {run.status for run in runs} == {OK}
    assert all(run.stdout == "x" * 100000 for run in runs)
