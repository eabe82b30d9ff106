"""Read what this host's KVM offers a guest, from scratch VMs that never run.

The KVM part uses the standard library only, so the arm64 lab runs it inside an
initramfs; QEMU and libvirt are asked in :mod:`abiguard.stack`, imported only when
wanted. Anything that cannot be read is listed under ``unavailable`` with its errno:
never a crash, never a guessed value.
"""
from __future__ import annotations

import errno
import os
import time
from typing import Any, Callable, TypeVar

from . import kvm

T = TypeVar("T")

#: PSCI/SMCCC values tried on the scratch vCPU to learn what this kernel accepts
_WORKAROUND_TRIALS = (0, 1, 2, 3, 4)


class Unavailable:
    """Collects what could not be read, and why."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def attempt(self, what: str, fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return fn(*args)
        except OSError as e:
            self.add(what, e.errno or 0, e.strerror or "")
            return None

    def add(self, what: str, err: int, detail: str = "") -> None:
        self.items.append({"what": what, "errno": err, "error": kvm.errno_name(err), "detail": detail})


def _hex(v: int) -> str:
    return f"{v:#x}"


def _caps(fd: kvm._Fd, missing: Unavailable, where: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, number in kvm.CAPS.items():
        value = missing.attempt(f"KVM_CHECK_EXTENSION({name}) on {where}", fd.check_extension, number)
        if value is not None:
            out[name] = value
    return out


def _set_result(vcpu: kvm.KvmVcpu, reg_id: int, value: int) -> str:
    try:
        vcpu.set_one_reg(reg_id, value)
        return "accepted"
    except OSError as e:
        return kvm.errno_name(e.errno or 0)


# -- arm64 -----------------------------------------------------------------------------

def _arm64_config(system: kvm.KvmSystem, target: int, features: list[str],
                  missing: Unavailable) -> dict[str, Any] | None:
    """One vCPU configuration on a fresh VM: register list and values."""
    from .arch import arm64

    label = "+".join(features)
    with system.create_vm(0) as vm, vm.create_vcpu(0) as vcpu:
        try:
            vcpu.arm_init(target, features)
        except OSError as e:
            missing.add(f"KVM_ARM_VCPU_INIT({label})", e.errno or 0, e.strerror or "")
            return None
        config: dict[str, Any] = {"features": features}
        if "SVE" in features:
            vls = missing.attempt(f"KVM_GET_ONE_REG(SVE_VLS) {label}", vcpu.get_one_reg, kvm.ARM_SVE_VLS)
            if vls is not None:
                config["sve_vls"] = _hex(vls)
            try:
                vcpu.arm_finalize()
            except OSError as e:
                missing.add(f"KVM_ARM_VCPU_FINALIZE(SVE) {label}", e.errno or 0, e.strerror or "")
                return config
        reg_list = missing.attempt(f"KVM_GET_REG_LIST({label})", vcpu.reg_list)
        if reg_list is None:
            return config
        config["reg_list"] = [_hex(r) for r in reg_list]
        # the registers QEMU migrates, with their values; null for a value that moves
        # with time (VOLATILE_REGS) or that KVM would not read (listed as unavailable)
        registers: dict[str, str | None] = {}
        for reg_id in reg_list:
            if kvm.arm64_coproc(reg_id) in arm64.NOT_MIGRATED_COPROCS:
                continue
            value = None
            if reg_id not in arm64.VOLATILE_REGS:
                value = missing.attempt(f"KVM_GET_ONE_REG({arm64.reg_name(reg_id)}) {label}",
                                        vcpu.get_one_reg, reg_id)
            registers[_hex(reg_id)] = None if value is None else _hex(value)
        config["registers"] = registers
        return config


def _arm64_firmware_acceptance(system: kvm.KvmSystem, target: int) -> dict[str, Any]:
    """Which firmware values this kernel accepts, tried on a scratch vCPU before any run."""
    from .arch import arm64

    out: dict[str, Any] = {}
    with system.create_vm(0) as vm, vm.create_vcpu(0) as vcpu:
        vcpu.arm_init(target, ["PSCI_0_2"])
        present = set(vcpu.reg_list())
        for reg in arm64.FW_REGS:
            if reg.id not in present:
                continue
            default = vcpu.get_one_reg(reg.id)
            if reg.kind == "psci":
                out[reg.name] = {ver: _set_result(vcpu, reg.id, value)
                                 for ver, (value, _since) in arm64.PSCI_VERSIONS.items()}
            elif reg.kind == "workaround":
                out[reg.name] = {str(v): _set_result(vcpu, reg.id, v) for v in _WORKAROUND_TRIALS}
            else:
                known = 0
                for bit in range(64):
                    if _set_result(vcpu, reg.id, 1 << bit) == "accepted":
                        known |= 1 << bit
                out[reg.name] = {"known_bits": _hex(known)}
            vcpu.set_one_reg(reg.id, default)
    return out


def _arm64_masks(vm: kvm.KvmVm) -> dict[str, str]:
    from .arch import arm64_idregs

    raw = vm.arm_writable_masks()
    out: dict[str, str] = {}
    for op1 in (0, 1, 3):
        for crm in range(8):
            for op2 in range(8):
                mask = raw[kvm.arm64_feature_id_range_index(3, op1, 0, crm, op2)]
                if not mask:
                    continue
                reg_id = kvm.arm64_sysreg_id(3, op1, 0, crm, op2)
                reg = arm64_idregs.REG_BY_ID.get(reg_id)
                out[reg.name if reg else f"S3_{op1}_C0_C{crm}_{op2}"] = _hex(mask)
    return out


def probe_arm64(system: kvm.KvmSystem, caps: dict[str, int], missing: Unavailable) -> dict[str, Any]:
    from .arch import arm64

    out: dict[str, Any] = {}
    with system.create_vm(0) as vm:
        out["vm_caps"] = _caps(vm, missing, "VM fd")
        target = missing.attempt("KVM_ARM_PREFERRED_TARGET", vm.arm_preferred_target)
        if caps.get("KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES", 0) & 1:
            masks = missing.attempt("KVM_ARM_GET_REG_WRITABLE_MASKS", _arm64_masks, vm)
            out["writable_masks"] = masks
        else:
            out["writable_masks"] = None
            missing.add("KVM_ARM_GET_REG_WRITABLE_MASKS", errno.ENOTTY,
                        "KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES is 0: ID registers are not writable")
    if target is None:
        return out
    out["preferred_target"] = target
    offered = [group for group in arm64.OPTIONAL_VCPU_FEATURES
               if all(caps.get(kvm.ARM_FEATURE_CAP[f], 0) for f in group)]
    out["configs"] = {}
    for name, features in arm64.vcpu_configs(offered).items():
        config = _arm64_config(system, target, features, missing)
        if config is not None:
            out["configs"][name] = config
    seen = {int(r, 16) for c in out["configs"].values() for r in c.get("registers", {})}
    out["register_names"] = {_hex(r): arm64.reg_name(r) for r in sorted(seen)}
    out["firmware_acceptance"] = missing.attempt("firmware write trials", _arm64_firmware_acceptance,
                                                 system, target)
    return out


# -- x86 -------------------------------------------------------------------------------

KVM_CPUID_FEATURES = 0x40000001


def probe_x86(system: kvm.KvmSystem, caps: dict[str, int], missing: Unavailable) -> dict[str, Any]:
    out: dict[str, Any] = {}
    from .arch import x86

    rows = missing.attempt("KVM_GET_SUPPORTED_CPUID", system.supported_cpuid)
    if rows is not None:
        out["supported_cpuid"] = []
        for f, i, fl, *regs in rows:
            entry: dict[str, Any] = {"function": _hex(f), "index": i, "flags": fl}
            for name, value in zip(("eax", "ebx", "ecx", "edx"), regs):
                entry[name] = _hex(value & ~x86.PER_CPU_CPUID_BITS.get((f, name), 0))
            out["supported_cpuid"].append(entry)
        pv = [r for r in rows if r[0] == KVM_CPUID_FEATURES]
        out["pv_features"] = {"eax": _hex(pv[0][3]), "edx": _hex(pv[0][6])} if pv else None
    if caps.get("KVM_CAP_GET_MSR_FEATURES"):
        indices = missing.attempt("KVM_GET_MSR_FEATURE_INDEX_LIST", system.msr_feature_indices)
        if indices is not None:
            msrs: dict[str, str | None] = {}
            for index in indices:
                value = missing.attempt(f"KVM_GET_MSRS({index:#x})", system.feature_msr, index)
                msrs[_hex(index)] = None if value is None else _hex(value)
            out["feature_msrs"] = msrs
    else:
        missing.add("KVM_GET_MSR_FEATURE_INDEX_LIST", errno.ENOTTY, "KVM_CAP_GET_MSR_FEATURES is 0")
    out["disable_quirks2"] = _hex(caps.get("KVM_CAP_DISABLE_QUIRKS2", 0))
    return out


_ARCH_PROBES: dict[str, Callable[[kvm.KvmSystem, dict[str, int], Unavailable], dict[str, Any]]] = {
    "aarch64": probe_arm64,
    "x86_64": probe_x86,
}


def probe_kvm(device: str = "/dev/kvm") -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The ``kvm`` section of a host profile and what could not be read."""
    missing = Unavailable()
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
        section["caps"] = caps = _caps(system, missing, "/dev/kvm")
        arch_probe = _ARCH_PROBES.get(machine)
        if arch_probe is None:
            missing.add(f"{machine} KVM probe", errno.ENOSYS, "abiguard knows aarch64 and x86_64 only")
        else:
            section[machine] = arch_probe(system, caps, missing)
    return section, missing.items


def probe_host(with_stack: bool = True, device: str = "/dev/kvm") -> dict[str, Any]:
    """A complete host profile as a plain dict (see :mod:`abiguard.profile` for the format)."""
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
    from .profile import finalize
    return finalize(profile, probe_seconds=time.monotonic() - started, hostname=uname.nodename)
