"""What a guest reads where it is not what KVM_GET_ONE_REG reports: CTR_EL0 before Linux 6.3
(KVM sets HCR_EL2.TID2 only since "KVM: arm64: Normalize cache configuration", so an older
guest reads the CPU's own register while ONE_REG gives the sanitised one, IDC set).

One place answers it, so that the guest's view recorded in a profile (issue 23's probe,
``kvm.aarch64.guest_view``: register id -> value the guest read) replaces the bundled lab
observations (``data/guest-reads/arm64.json``) without any other change."""
from __future__ import annotations

from . import regs

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

    from ...model.profile import Profile

#: the registers a guest may read apart from ONE_REG, and from which kernel on KVM traps the
#: read and gives the VM's own value
TRAPPED_SINCE: dict[int, tuple[int, ...]] = {regs.CTR_EL0_ID: regs.CACHE_WRITABLE_SINCE}
_records: list[Any] = []


def _bundled() -> list[Any]:
    if not _records:
        import json
        import os

        path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "data", "guest-reads", "arm64.json")
        with open(path, "rb") as f:
            _records.extend(json.loads(f.read())["records"])
    return _records


def guest_reads(profile: Profile, registers: dict[int, int | None]) -> dict[int, int | None]:
    """Register id -> what a guest on this host reads, for the registers of
    :data:`TRAPPED_SINCE` this kernel does not trap: a value where the profile's guest view
    or a bundled lab record knows it, None where nothing does. Empty for a kernel that
    traps them all (the guest reads the VM's value, which ONE_REG reports)."""
    kernel = regs.kernel_version(profile.kernel_release)
    untrapped = [rid for rid, since in TRAPPED_SINCE.items() if kernel < since and rid in registers]
    if not untrapped:
        return {}
    out: dict[int, int | None] = dict.fromkeys(untrapped)
    aarch64 = ((profile.doc or {}).get("kvm") or {}).get("aarch64") or {}
    view = aarch64.get("guest_view") if isinstance(aarch64, dict) else None
    if isinstance(view, dict):
        for rid in untrapped:
            from ...model.fields import is_hex

            v = view.get(f"{rid:#x}")
            if isinstance(v, str) and is_hex(v, 16):
                out[rid] = int(v, 16)
        return out
    midr = registers.get(regs.MIDR_EL1_ID)
    for rec in _bundled():
        if rec["kernel_release"] != profile.kernel_release or midr is None or int(rec["midr"], 16) != midr:
            continue
        if any(registers.get(int(k, 16)) != int(v, 16) for k, v in rec["one_reg"].items()):
            continue
        for k, v in rec["guest"].items():
            if int(k, 16) in out:
                out[int(k, 16)] = int(v, 16)
    return out
