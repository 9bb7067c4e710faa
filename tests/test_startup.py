"""What a short command imports: `netmap discover --json` is a process a fleet runs on
every host (scripts/bench_discover.py holds it against `ip -j -d link show`), so it loads
only the link reader, not the step kinds, the plan, pyroute2, rich or networkx."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import needs_netns

REPO = Path(__file__).resolve().parent.parent
PROBE = """
import contextlib, io, sys
from netmap.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(sys.argv[1:])
heavy = ("netmap.steps", "netmap.plan", "netmap.modes", "netmap.load", "pyroute2", "rich",
         "networkx", "msgspec", "tomli", "concurrent.futures")
print(code, *sorted(m for m in heavy if m in sys.modules))
"""


@needs_netns
def test_discover_json_imports_only_the_link_reader(
        netns_factory: Callable[[str], str]) -> None:
    netns = netns_factory("nmsp")
    subprocess.run(["ip", "-n", netns, "link", "add", "a0", "type", "veth", "peer", "name",
                    "a0p"], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", PROBE, "discover", "--netns", netns,
                           "--json"], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0"], done.stderr
