"""Mappings directory -> model: the file parsers live in netmap/load/parse.py."""

from __future__ import annotations

from netmap.load.parse import (
    fleet_file_names,
    load_fleet,
    load_guest,
    load_host,
    load_networks,
    mappings_dir,
    name_problem,
    require_guest,
    require_host,
)

__all__ = ["fleet_file_names", "load_fleet", "load_guest", "load_host", "load_networks",
           "mappings_dir", "name_problem", "require_guest", "require_host"]
