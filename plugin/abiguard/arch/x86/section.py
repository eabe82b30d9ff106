"""The x86 part of a host profile (``kvm.x86_64``), read into a typed model.

Written by :mod:`.probe`: ``supported_cpuid`` (KVM_GET_SUPPORTED_CPUID rows, per-CPU
APIC-id bits zeroed), ``pv_features`` (leaf 0x40000001 EAX/EDX), ``feature_msrs``
(KVM_GET_MSR_FEATURE_INDEX_LIST and each value, null where KVM reads none),
``disable_quirks2``; ``vcpu_msrs`` (of the feature MSRs QEMU writes into a vCPU, KVM's
value and the bits a vCPU took from the VMM: absent in profiles made before it was measured).
"""
from __future__ import annotations

from ...model.profile import KvmSection

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

    from ...model.fields import Reader


class CpuidRow:
    __slots__ = ("function", "index", "flags", "eax", "ebx", "ecx", "edx")

    def __init__(self, function: int, index: int, flags: int, eax: int, ebx: int, ecx: int, edx: int) -> None:
        self.function, self.index, self.flags = function, index, flags
        self.eax, self.ebx, self.ecx, self.edx = eax, ebx, ecx, edx


class X86Kvm(KvmSection):
    __slots__ = ("cpuid", "pv_eax", "pv_edx", "feature_msrs", "disable_quirks2", "vcpu_msrs")

    def __init__(self, cpuid: tuple[CpuidRow, ...] | None, pv_eax: int | None, pv_edx: int | None,
                 feature_msrs: dict[int, int | None] | None, disable_quirks2: int | None,
                 vcpu_msrs: dict[int, tuple[int, int]] | None = None) -> None:
        self.cpuid = cpuid
        self.pv_eax, self.pv_edx = pv_eax, pv_edx
        self.feature_msrs = feature_msrs
        self.disable_quirks2 = disable_quirks2
        #: MSR index -> (KVM's value, the bits of it a vCPU takes from the VMM); None: not measured
        self.vcpu_msrs = vcpu_msrs

    def settable(self, index: int) -> int | None:
        """The bits of feature MSR ``index`` a vCPU on this host takes (None: not measured)."""
        got = self.vcpu_msrs.get(index) if self.vcpu_msrs is not None else None
        return None if got is None else got[1]


def from_json(r: Reader, doc: dict[str, Any], where: str) -> X86Kvm:
    cpuid = None
    if "supported_cpuid" in doc:
        rows = []
        for i, row in enumerate(r.lst(doc["supported_cpuid"], f"{where}.supported_cpuid", 4096)):
            w = f"{where}.supported_cpuid[{i}]"
            row = r.obj(row, w)
            rows.append(CpuidRow(r.hexint(row.get("function"), f"{w}.function", 8),
                                 r.integer(row.get("index", 0), f"{w}.index", 0, (1 << 32) - 1),
                                 r.integer(row.get("flags", 0), f"{w}.flags", 0, (1 << 32) - 1),
                                 *(r.hexint(row.get(k), f"{w}.{k}", 8) for k in ("eax", "ebx", "ecx", "edx"))))
        cpuid = tuple(rows)
    pv = r.opt_obj(doc.get("pv_features"), f"{where}.pv_features")
    pv_eax = pv_edx = None
    if pv is not None:
        pv_eax = r.opt_hexint(pv.get("eax"), f"{where}.pv_features.eax", 8)
        pv_edx = r.opt_hexint(pv.get("edx"), f"{where}.pv_features.edx", 8)
    msrs_doc = r.opt_obj(doc.get("feature_msrs"), f"{where}.feature_msrs", 4096)
    msrs = None if msrs_doc is None else {
        r.hexint(k, f"{where}.feature_msrs", 8): r.opt_hexint(v, f"{where}.feature_msrs.{k}", 16)
        for k, v in msrs_doc.items()}
    vdoc = r.opt_obj(doc.get("vcpu_msrs"), f"{where}.vcpu_msrs", 64)
    vcpu = None
    if vdoc is not None:
        vcpu = {}
        for k, v in vdoc.items():
            index = r.hexint(k, f"{where}.vcpu_msrs", 8)
            w = f"{where}.vcpu_msrs.{index:#x}"
            v = r.obj(v, w)
            value = r.hexint(v.get("value"), f"{w}.value", 16)
            settable = r.hexint(v.get("settable"), f"{w}.settable", 16)
            r.need(not settable & ~value, f"member '{w}.settable' has bits its member 'value' lacks")
            vcpu[index] = (value, settable)
    q2 = doc.get("disable_quirks2")
    return X86Kvm(cpuid, pv_eax, pv_edx, msrs, None if q2 is None else r.hexint(q2, f"{where}.disable_quirks2"),
                  vcpu)


def to_view(s: X86Kvm) -> Any:
    return (None if s.cpuid is None else tuple((c.function, c.index, c.flags, c.eax, c.ebx, c.ecx, c.edx)
                                               for c in s.cpuid),
            s.pv_eax, s.pv_edx, s.feature_msrs, s.disable_quirks2, s.vcpu_msrs)


def from_view(v: Any) -> X86Kvm:
    cpuid, eax, edx, msrs, q2, vcpu = v
    if vcpu is not None and not (type(vcpu) is dict and all(
            type(k) is int and type(x) is tuple and len(x) == 2 and type(x[0]) is int and type(x[1]) is int
            for k, x in vcpu.items())):
        raise ValueError("not an x86 profile view")
    return X86Kvm(None if cpuid is None else tuple(CpuidRow(*c) for c in cpuid), eax, edx, msrs, q2, vcpu)
