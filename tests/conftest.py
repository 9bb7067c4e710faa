"""Shared fixtures. Tests that touch the kernel build throw-away network namespaces and
always delete them; each test module uses its own namespace name prefix."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_MAPPINGS = REPO / "mappings"
CORPUS = REPO.parent / "shared" / "corpus" / "libvirt"
CAP_NET_ADMIN = 12


def has_net_admin() -> bool:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    match = re.search(r"^CapEff:\s*([0-9a-f]+)$", status, re.M)
    return bool(match and int(match.group(1), 16) & (1 << CAP_NET_ADMIN)) and bool(
        shutil.which("ip"))


needs_netns = pytest.mark.skipif(
    not has_net_admin(), reason="needs CAP_NET_ADMIN and iproute2 to build network namespaces")


@pytest.fixture
def mappings(tmp_path: Path) -> Path:
    """A private copy of the example mappings that a test may change."""
    target = tmp_path / "mappings"
    shutil.copytree(EXAMPLE_MAPPINGS, target)
    return target


@pytest.fixture
def netns_factory() -> Iterator[Callable[[str], str]]:
    """make(prefix) -> a new, uniquely named network namespace, deleted after the test."""
    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        made.append(name)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def lab_mappings(mappings: Path, prefix: str) -> Path:
    """Point every host of a mappings copy at namespaces named `prefix`-HOST."""
    for path in (mappings / "hosts").glob("*.toml"):
        text = path.read_text()
        host = path.stem
        text = re.sub(r'^netns = ".*?"', f'netns = "{prefix}-{host}"', text, flags=re.M)
        if "netns =" not in text:
            text = text.replace("[host]\n", f'[host]\nnetns = "{prefix}-{host}"\n', 1)
        path.write_text(text)
    return mappings


@pytest.fixture
def lab_factory(mappings: Path) -> Iterator[Callable[..., object]]:
    """make(prefix, hosts=None) -> (Lab, mappings dir): the example fleet as namespaces."""
    from netmap.lab import build_lab, teardown_lab
    from netmap.load import load_fleet

    labs = []

    def make(prefix: str, hosts: list[str] | None = None):
        unique = f"{prefix}{os.getpid() % 10000}"
        lab_mappings(mappings, unique)
        lab = build_lab(load_fleet(mappings), unique, hosts)
        labs.append(lab)
        return lab, mappings

    yield make
    for lab in labs:
        teardown_lab(lab)
