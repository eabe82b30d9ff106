"""The x86 KVM probe: supported CPUID, the feature MSRs and their values, quirks."""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ...uapi import kvm
from . import features

if TYPE_CHECKING:
    from ...uapi.kvm import Missing


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
            if rows is not None:
                out["vcpu_msrs"] = _vcpu_msrs(system, rows, msrs, missing)
    else:
        missing.add("KVM_GET_MSR_FEATURE_INDEX_LIST", errno.ENOTTY, "KVM_CAP_GET_MSR_FEATURES is 0")
    out["disable_quirks2"] = _hex(caps.get("KVM_CAP_DISABLE_QUIRKS2", 0))
    return out


def _vcpu_msrs(system: kvm.KvmSystem, rows: list[tuple[int, int, int, int, int, int, int]], msrs: dict[str, str | None],
               missing: Missing) -> dict[str, dict[str, str]]:
    """For each feature MSR QEMU writes into a vCPU it starts (:data:`features.VCPU_FEATURE_MSRS`):
    the bits of KVM's value a vCPU takes from the VMM. KVM offering a value on the system fd
    does not mean a vCPU takes it: on a measured AMD EPYC host (kernel 6.18) KVM offers
    IA32_ARCH_CAPABILITIES 0x400000000c000069 and KVM_SET_MSRS writes none of its bits, so
    QEMU 7.2 and 10.0 abort any vCPU with them ("failed to set MSR 0x10a"). Asked the way
    QEMU asks: a fresh vCPU with KVM's supported CPUID, the whole value, else bit by bit."""
    out: dict[str, dict[str, str]] = {}
    wanted = {index: int(v, 16) for index in features.VCPU_FEATURE_MSRS
              if (v := msrs.get(_hex(index))) is not None}
    if not wanted:
        return out
    vm = missing.attempt("KVM_CREATE_VM (vCPU MSR probe)", system.create_vm)
    if vm is None:
        return out
    with vm:
        vcpu = missing.attempt("KVM_CREATE_VCPU (vCPU MSR probe)", vm.create_vcpu, 0)
        if vcpu is None:
            return out
        with vcpu:
            if missing.attempt("KVM_SET_CPUID2 (vCPU MSR probe)", _set_cpuid, vcpu, rows) is None:
                return out
            for index, value in wanted.items():
                took = missing.attempt(f"KVM_SET_MSRS({index:#x})", vcpu.set_msr, index, value)
                if took is None:
                    continue
                settable = value if took else 0
                if not took:
                    for bit in range(64):
                        if value >> bit & 1 and missing.attempt(f"KVM_SET_MSRS({index:#x}, bit {bit})",
                                                                vcpu.set_msr, index, 1 << bit):
                            settable |= 1 << bit
                out[_hex(index)] = {"value": _hex(value), "settable": _hex(settable)}
    return out


def _set_cpuid(vcpu: kvm.KvmVcpu, rows: list[tuple[int, int, int, int, int, int, int]]) -> bool:
    vcpu.set_cpuid(rows)
    return True


#: libvirt's x86 CPU map (the names its domain XML and CPU APIs accept), as the package installs it
CPU_MAP = "/usr/share/libvirt/cpu_map/x86_features.xml"


def probe_libvirt(conn: Any, domcaps: Any, unavailable: list[dict[str, Any]]) -> dict[str, Any]:
    """``stack.libvirt.cpu``: the CPU feature and model names this libvirt knows, and the
    host-model CPU expanded by this libvirt into every feature it has (what libvirt's own
    baseline takes from each host)."""
    import libvirt
    from lxml import etree

    from ...model.stack import host_model_cpu_xml
    from ...uapi.kvm import note

    out: dict[str, Any] = {}
    try:
        tree = etree.parse(CPU_MAP, etree.XMLParser(resolve_entities=False, no_network=True))
        out["features"] = sorted({f.get("name") for f in tree.iter("feature") if f.get("name")}
                                 | {a.get("name") for a in tree.iter("alias") if a.get("name")})
    except (OSError, etree.XMLSyntaxError) as e:
        note(unavailable, f"libvirt CPU map {CPU_MAP}", errno.ENOENT, str(e)[:200])
    try:
        out["models"] = sorted(conn.getCPUModelNames("x86_64", 0) or [])
    except libvirt.libvirtError as e:
        note(unavailable, "libvirt getCPUModelNames x86_64", errno.EIO, str(e))
    host_model = domcaps.find("cpu/mode[@name='host-model']")
    if host_model is not None and host_model.get("supported") == "yes":
        try:
            expanded = conn.baselineHypervisorCPU(
                domcaps.findtext("path"), "x86_64", domcaps.findtext("machine"), domcaps.findtext("domain"),
                [host_model_cpu_xml(host_model)],
                libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES | libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE)
            root = etree.fromstring(expanded.encode(), etree.XMLParser(resolve_entities=False, no_network=True))
            out["host_features"] = sorted(f.get("name") for f in root.findall("feature")
                                          if f.get("policy") == "require" and f.get("name"))
        except (libvirt.libvirtError, etree.XMLSyntaxError) as e:
            note(unavailable, "libvirt baselineHypervisorCPU of the host-model CPU", errno.EIO, str(e)[:300])
    return {"cpu": out} if out else {}
