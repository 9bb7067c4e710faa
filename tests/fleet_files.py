"""Mappings trees written from texts: what the namespace tier (tests/conftest.py) and the VM
tier (tests/vm/conftest.py, which puts this folder on the path) both build fleets with."""

from __future__ import annotations

from pathlib import Path


def write_fleet(root: Path, networks: str, hosts: dict[str, str],
                guests: dict[str, str]) -> Path:
    """A mappings tree: networks.toml, hosts/NAME.toml and guests/NAME.toml from texts."""
    (root / "hosts").mkdir(parents=True, exist_ok=True)
    (root / "guests").mkdir(exist_ok=True)
    (root / "networks.toml").write_text(networks)
    for folder, files in (("hosts", hosts), ("guests", guests)):
        for name, text in files.items():
            (root / folder / f"{name}.toml").write_text(text)
    return root
