"""The arm64 KVM probe: scratch VMs that never run, one per vCPU configuration, and the
write trials that learn which firmware values this kernel accepts. Standard library only:
the arm64 lab runs it inside an initramfs."""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ...uapi import kvm
from . import regs

if TYPE_CHECKING:
    from ...uapi.kvm import Missing


def _hex(v: int) -> str:
    return f"{v:#x}"


def _config(system: kvm.KvmSystem, target: int, features: list[str], missing: Missing) -> dict[str, Any] | None:
    """One vCPU configuration on a fresh VM: register list and values."""
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
            if kvm.arm64_coproc(reg_id) in regs.NOT_MIGRATED_COPROCS:
                continue
            value = None
            if reg_id not in regs.VOLATILE_REGS:
                value = missing.attempt(f"KVM_GET_ONE_REG({regs.reg_name(reg_id)}) {label}",
                                        vcpu.get_one_reg, reg_id)
            registers[_hex(reg_id)] = None if value is None else _hex(value)
        config["registers"] = registers
        config["guest_view"] = _guest_view(system, vm, vcpu, features, missing, label)
        return config


def _guest_view(system: kvm.KvmSystem, vm: kvm.KvmVm, vcpu: kvm.KvmVcpu, features: list[str], missing: Missing,
                label: str) -> dict[str, Any] | None:
    """What a guest of this configuration reads (:mod:`.guest`), run last on the VM whose
    registers were just read; None, and why in ``unavailable``, when it could not finish."""
    from . import guest

    try:
        return guest.run(system, vm, vcpu, features)
    except OSError as e:
        missing.add(f"guest run {label}", e.errno or 0, e.strerror or "")
    except kvm.GuestStop as e:
        missing.add(f"guest run {label}", 0, str(e))
    return None


def _firmware_acceptance(system: kvm.KvmSystem, target: int) -> dict[str, Any]:
    """Which firmware values this kernel accepts: each firmware register's rule tries its
    values on a scratch vCPU before any run, and the default is restored after."""
    from .rules import RULES

    out: dict[str, Any] = {}
    with system.create_vm(0) as vm, vm.create_vcpu(0) as vcpu:
        vcpu.arm_init(target, ["PSCI_0_2"])
        present = set(vcpu.reg_list())
        for reg in regs.FW_REGS:
            if reg.id not in present:
                continue
            default = vcpu.get_one_reg(reg.id)
            out[reg.name] = RULES[reg.kind].trial(vcpu, reg)
            vcpu.set_one_reg(reg.id, default)
    return out


def _masks(vm: kvm.KvmVm) -> dict[str, str]:
    from . import idregs

    raw = vm.arm_writable_masks()
    out: dict[str, str] = {}
    for op1 in (0, 1, 3):
        for crm in range(8):
            for op2 in range(8):
                mask = raw[kvm.arm64_feature_id_range_index(3, op1, 0, crm, op2)]
                if not mask:
                    continue
                reg_id = kvm.arm64_sysreg_id(3, op1, 0, crm, op2)
                reg = idregs.REG_BY_ID.get(reg_id)
                out[reg.name if reg else f"S3_{op1}_C0_C{crm}_{op2}"] = _hex(mask)
    return out


def probe(system: kvm.KvmSystem, caps: dict[str, int], missing: Missing) -> dict[str, Any]:
    """The ``kvm.aarch64`` section (:mod:`.section` reads it back)."""
    from ...uapi.kvm import caps_of

    out: dict[str, Any] = {}
    with system.create_vm(0) as vm:
        out["vm_caps"] = caps_of(vm, missing, "VM fd")
        target = missing.attempt("KVM_ARM_PREFERRED_TARGET", vm.arm_preferred_target)
        if caps.get("KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES", 0) & 1:
            out["writable_masks"] = missing.attempt("KVM_ARM_GET_REG_WRITABLE_MASKS", _masks, vm)
        else:
            out["writable_masks"] = None
            missing.add("KVM_ARM_GET_REG_WRITABLE_MASKS", errno.ENOTTY,
                        "KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES is 0: ID registers are not writable")
    if target is None:
        return out
    out["preferred_target"] = target
    offered = [group for group in regs.OPTIONAL_VCPU_FEATURES
               if all(caps.get(kvm.ARM_FEATURE_CAP[f], 0) for f in group)]
    out["configs"] = {}
    for name, features in regs.vcpu_configs(offered).items():
        config = _config(system, target, features, missing)
        if config is not None:
            out["configs"][name] = config
    seen = {int(r, 16) for c in out["configs"].values() for r in c.get("registers", {})}
    out["register_names"] = {_hex(r): regs.reg_name(r) for r in sorted(seen)}
    out["firmware_acceptance"] = missing.attempt("firmware write trials", _firmware_acceptance, system, target)
    return out
