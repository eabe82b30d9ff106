"""Shared pytest configuration for abiguard's tests."""
from __future__ import annotations

import sys
from pathlib import Path

# make tests/lab importable as the namespace package "lab" (e.g. lab.conftest_twohost)
# also under --import-mode=importlib, which does not put tests/ on sys.path
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "lab: needs the two-host libvirt lab (tests/lab/twohost.sh): root, /dev/kvm, "
        "libvirtd/virsh/qemu; skips loudly when unavailable, fails instead when CI=true",
    )
