"""Read what this host's KVM offers a guest, from scratch VMs that never run: the
generic part, and the arch plugin's probe (:meth:`abiguard.arch.base.Arch.probe`), both
through the ioctls of :mod:`abiguard.uapi.kvm` (which records what fails: ``Missing``).

The KVM part uses the standard library only, so the arm64 lab runs it inside an
initramfs; QEMU and libvirt are asked in :mod:`abiguard.probe.stack`, imported only when
wanted. Anything that cannot be read is listed under ``unavailable`` with its errno:
never a crash, never a guessed value.
"""
from __future__ import annotations

import errno
import os
import time
from typing import Any

from ..uapi import kvm
from ..uapi.kvm import Missing, caps_of


def probe_kvm(device: str = "/dev/kvm") -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The ``kvm`` section of a host profile and what could not be read."""
    from ..arch import PLUGINS, get

    missing = Missing()
    machine = os.uname().machine
    try:
        system = kvm.KvmSystem(device)
    except OSError as e:
        missing.add(f"open {device}", e.errno or 0, e.strerror or "")
        return None, missing.items
    with system:
        section: dict[str, Any] = {"device": device, "api_version": system.api_version()}
        if section["api_version"] != kvm.KVM_API_VERSION:
            missing.add("KVM_GET_API_VERSION", errno.EPROTO,
                        f"API version {section['api_version']}, expected {kvm.KVM_API_VERSION}")
            return section, missing.items
        section["caps"] = caps = caps_of(system, missing, "/dev/kvm")
        if machine not in PLUGINS:
            missing.add(f"{machine} KVM probe", errno.ENOSYS, "abiguard knows aarch64 and x86_64 only")
        else:
            section[machine] = get(machine).probe(system, caps, missing)
    return section, missing.items


def probe_host(with_stack: bool = True, device: str = "/dev/kvm") -> dict[str, Any]:
    """A complete host profile as its JSON document (:mod:`abiguard.model.profile` reads it)."""
    started = time.monotonic()
    uname = os.uname()
    kvm_section, unavailable = probe_kvm(device)
    profile: dict[str, Any] = {
        "host": {"kernel_release": uname.release, "kernel_version": uname.version,
                 "machine": uname.machine},
        "kvm": kvm_section,
        "unavailable": unavailable,
    }
    if with_stack:
        from . import stack
        profile["stack"] = stack.probe_stack(uname.machine, unavailable)
    from ..model.profile import finalize
    return finalize(profile, probe_seconds=time.monotonic() - started, hostname=uname.nodename)
