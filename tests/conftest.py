"""Shared pytest configuration for abiguard's tests."""
from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "lab: needs the two-host libvirt lab (tests/lab/twohost.sh): root, /dev/kvm, "
        "libvirtd/virsh/qemu; skips loudly when unavailable, fails instead when CI=true",
    )
