"""The VM tier from the normal suite: scripts/vmlab boots Debian's kernel under QEMU with two
igb SR-IOV PFs and runs tests/vm in one pytest process inside; this test passes only if
that run collected tests, and none of them failed, errored or skipped."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import REPO, has_net_admin

VMLAB = REPO / "scripts" / "vmlab"
RUN_TIMEOUT = 900  # the runner's own limit, retries included; a run takes 7-8 minutes


def test_vm_tier(tmp_path: Path) -> None:
    if not has_net_admin():
        pytest.skip("the VM lab needs root (CAP_NET_ADMIN, a mount namespace for its QEMU)")
    check = subprocess.run([sys.executable, str(VMLAB), "--check"], capture_output=True,
                           text=True, check=False)
    if check.returncode == 4:
        pytest.skip("VM lab parts missing (scripts/vmlab-install installs them): "
                    + "; ".join(check.stdout.split("\n")).strip("; "))
    assert check.returncode == 0, check.stdout + check.stderr
    results = tmp_path / "vmlab"
    done = subprocess.run([sys.executable, str(VMLAB), "--timeout", str(RUN_TIMEOUT),
                           "--results", str(results)], capture_output=True, text=True,
                          check=False, timeout=RUN_TIMEOUT + 120)
    output = done.stdout + done.stderr
    print(output)  # shown by pytest on failure: the VM's pytest report or its serial console
    assert done.returncode == 0, f"scripts/vmlab exited {done.returncode}:\n{output[-6000:]}"
    suite = ET.parse(results / "junit.xml").getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    assert counts["tests"] >= 8, counts
    assert counts["failures"] == counts["errors"] == 0, counts
    assert counts["skipped"] == 0, f"a VM test skipped inside the VM: {counts}\n{output}"


def test_every_vm_test_module_imports_outside_the_vm() -> None:
    """The VM tier runs only where its parts are: an import it lost (a module moved in netmap)
    must still fail the normal suite, not first the VM run."""
    modules = sorted((REPO / "tests" / "vm").glob("test_*.py"))
    assert modules
    check = ("import importlib.util, sys\n"
             f"sys.path[:0] = [{str(REPO / 'tests')!r}, {str(REPO / 'tests' / 'vm')!r}]\n"
             "for path in sys.argv[1:]:\n"
             "    spec = importlib.util.spec_from_file_location('vm_' + path, path)\n"
             "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n")
    done = subprocess.run([sys.executable, "-c", check, *map(str, modules)],
                          capture_output=True, text=True, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
