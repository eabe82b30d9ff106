"""The x86 KVM probe: supported CPUID, the feature MSRs and their values, quirks."""
from __future__ import annotations

import errno

from ...probe import kvm
from . import features

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ...probe.host import Missing


def _hex(v: int) -> str:
    return f"{v:#x}"


KVM_CPUID_FEATURES = 0x40000001


def probe(system: kvm.KvmSystem, caps: dict[str, int], missing: Missing) -> dict[str, Any]:
    """The ``kvm.x86_64`` section (:mod:`.section` reads it back)."""
    out: dict[str, Any] = {}

    rows = missing.attempt("KVM_GET_SUPPORTED_CPUID", system.supported_cpuid)
    if rows is not None:
        out["supported_cpuid"] = []
        for f, i, fl, *regs in rows:
            entry: dict[str, Any] = {"function": _hex(f), "index": i, "flags": fl}
            for name, value in zip(("eax", "ebx", "ecx", "edx"), regs):
                entry[name] = _hex(value & ~features.PER_CPU_CPUID_BITS.get((f, name), 0))
            out["supported_cpuid"].append(entry)
        pv = [r for r in rows if r[0] == KVM_CPUID_FEATURES]
        out["pv_features"] = {"eax": _hex(pv[0][3]), "edx": _hex(pv[0][6])} if pv else None
    if caps.get("KVM_CAP_GET_MSR_FEATURES"):
        indices = missing.attempt("KVM_GET_MSR_FEATURE_INDEX_LIST", system.msr_feature_indices)
        if indices is not None:
            msrs: dict[str, str | None] = {}
            for index in indices:
                msr = missing.attempt(f"KVM_GET_MSRS({index:#x})", system.feature_msr, index)
                msrs[_hex(index)] = None if msr is None else _hex(msr)
            out["feature_msrs"] = msrs
    else:
        missing.add("KVM_GET_MSR_FEATURE_INDEX_LIST", errno.ENOTTY, "KVM_CAP_GET_MSR_FEATURES is 0")
    out["disable_quirks2"] = _hex(caps.get("KVM_CAP_DISABLE_QUIRKS2", 0))
    return out
