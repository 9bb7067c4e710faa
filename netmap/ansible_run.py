"""Run one command on every host of an Ansible inventory through Ansible's own ad-hoc CLI,
and bring back each host's stdout or why it had none.

Ansible does the distributed part (SSH, forks, per-host failures); netmap reads the
results Ansible's built-in `tree` callback writes, one JSON file per host, as each host
finishes. Nothing here parses what the command printed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from netmap.errors import InputError

OK, UNREACHABLE, FAILED = "ok", "unreachable", "failed"


@dataclass(frozen=True)
class HostRun:
    host: str  # the inventory's name for it
    status: str  # ok, unreachable, failed
    stdout: str = ""
    problem: str | None = None


def _result(host: str, data: dict) -> HostRun:
    if data.get("unreachable"):
        return HostRun(host, UNREACHABLE, problem=str(data.get("msg", "unreachable")).strip())
    if data.get("failed") or data.get("rc", 0) != 0:
        detail = (data.get("stderr") or data.get("msg") or "").strip()
        return HostRun(host, FAILED, data.get("stdout", ""),
                       f"exit code {data.get('rc')}: {detail}"[:2000])
    return HostRun(host, OK, data.get("stdout", ""))


def ansible_command(inventory: str, command: str, tree: Path, *, forks: int,
                    limit: str | None) -> list[str]:
    executable = shutil.which("ansible")
    if executable is None:
        raise InputError("the `ansible` command is not installed, and netmap reaches the "
                         "fleet through it", fix="pip install ansible-core")
    argv = [executable, "all", "-i", inventory, "-m", "ansible.builtin.command",
            "-a", command, "--tree", str(tree), "--forks", str(forks), "--one-line"]
    return argv + (["--limit", limit] if limit else [])


def run_everywhere(inventory: str, command: str, *, forks: int = 20, limit: str | None = None,
                   timeout: float = 600.0,
                   progress: Callable[[HostRun], None] | None = None) -> list[HostRun]:
    """One result per host Ansible reported on, in name order; `progress` hears of each as
    its result file appears."""
    if not Path(inventory).exists() and "," not in inventory:
        raise InputError(f"no Ansible inventory {inventory!r}", key="--inventory",
                         fix="name an inventory file (INI or YAML) or a comma-separated "
                         "host list ending in ','")
    with tempfile.TemporaryDirectory(prefix="netmap-fleet-") as scratch:
        tree = Path(scratch) / "tree"
        argv = ansible_command(inventory, command, tree, forks=forks, limit=limit)
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1"}
        # Ansible echoes every host's result on stdout; the results are read from the tree.
        # A pipe nobody reads until the end fills up (64 KiB: a few hosts' inventories) and
        # Ansible blocks on it for good, so both streams go to files.
        output = Path(scratch) / "ansible.out"
        with output.open("w+") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                       text=True, env=env)
        seen: dict[str, HostRun] = {}
        deadline = time.monotonic() + timeout
        while True:
            done = process.poll() is not None
            if progress is not None:
                for run in _collect(tree, seen):
                    progress(run)
            if done:
                break
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise InputError(f"Ansible did not finish within {timeout:.0f} s",
                                 fix="raise --timeout, or --limit the hosts")
            time.sleep(0.05)
        _collect(tree, seen)
        if not seen and process.returncode not in (0, 2, 4):
            # no host was even tried: the inventory or the command line is wrong
            said = output.read_text(errors="replace").strip()
            raise InputError(f"Ansible failed before reaching any host: {said[-2000:]}",
                             key="--inventory",
                             fix="check the inventory with `ansible-inventory -i INV --list`")
        return [seen[host] for host in sorted(seen)]


def _collect(tree: Path, seen: dict[str, HostRun]) -> list[HostRun]:
    """Result files that appeared since the last call (written whole by Ansible, but read
    again next time should one be caught half-written)."""
    new: list[HostRun] = []
    if not tree.is_dir():
        return new
    for path in tree.iterdir():
        if path.name in seen:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        run = _result(path.name, data if isinstance(data, dict) else {})
        seen[path.name] = run
        new.append(run)
    return new
