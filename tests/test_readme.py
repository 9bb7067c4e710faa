"""README.rst is what a new user reads first: it must render, every table and list whole
(a malformed table is dropped from the page PyPI and GitHub show, silently)."""

from __future__ import annotations

import docutils.core
import docutils.nodes
from conftest import REPO


def test_readme_renders_without_a_warning() -> None:
    doctree = docutils.core.publish_doctree(
        (REPO / "README.rst").read_text(), source_path="README.rst",
        settings_overrides={"report_level": 5, "halt_level": 5, "warning_stream": False})
    problems = [f"line {message.get('line')}: {message.astext()}"
                for message in doctree.findall(docutils.nodes.system_message)
                if message["level"] >= 2]  # 2: warning, 3: error, 4: severe
    assert problems == []
