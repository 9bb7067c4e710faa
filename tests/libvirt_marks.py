"""The marks every test that runs private libvirtd labs (scripts/libvirt_lab.py) carries:
written once, so that a new libvirt test module cannot forget the lock or a skip."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import REPO, needs_netns

sys.path.insert(0, str(REPO / "scripts"))
import libvirt_lab  # scripts/ is not a package

# one module's labs at a time (see the fixture), namespaces, QEMU, and libvirtd installed
LIBVIRT_LAB = [
    pytest.mark.usefixtures("one_libvirt_lab_at_a_time"),
    pytest.mark.netns,
    pytest.mark.qemu,
    needs_netns,
    pytest.mark.skipif(libvirt_lab.missing() is not None, reason=str(libvirt_lab.missing())),
]
# for tests that drive the daemons through the libvirt Python binding, as netmap does
NEEDS_LIBVIRT_PYTHON = pytest.mark.skipif(libvirt_lab.python_binding_missing() is not None,
                                          reason=str(libvirt_lab.python_binding_missing()))
