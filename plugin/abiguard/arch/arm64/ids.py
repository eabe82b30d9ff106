"""The arm64 ONE_REG id layout (arch/arm64/include/uapi/asm/kvm.h) and vCPU feature bits:
pure arithmetic, no imports, so the hook and the arm64 lab's initramfs read register ids
without loading the ioctl module (:mod:`abiguard.probe.kvm` re-exports all of it)."""
from __future__ import annotations

# arm64 KVM_ARM_VCPU_INIT feature bits (features[0])
ARM_VCPU_FEATURES: dict[str, int] = {
    "EL1_32BIT": 1, "PSCI_0_2": 2, "PMU_V3": 3, "SVE": 4,
    "PTRAUTH_ADDRESS": 5, "PTRAUTH_GENERIC": 6, "HAS_EL2": 7,
}
#: the capability that says a vCPU feature can be asked for
ARM_FEATURE_CAP: dict[str, str] = {
    "EL1_32BIT": "KVM_CAP_ARM_EL1_32BIT", "PSCI_0_2": "KVM_CAP_ARM_PSCI_0_2",
    "PMU_V3": "KVM_CAP_ARM_PMU_V3", "SVE": "KVM_CAP_ARM_SVE",
    "PTRAUTH_ADDRESS": "KVM_CAP_ARM_PTRAUTH_ADDRESS",
    "PTRAUTH_GENERIC": "KVM_CAP_ARM_PTRAUTH_GENERIC", "HAS_EL2": "KVM_CAP_ARM_EL2",
}
ARM_FINALIZE_SVE = 4  # KVM_ARM_VCPU_SVE passed to KVM_ARM_VCPU_FINALIZE

# ONE_REG id layout
REG_ARCH_MASK = 0xFF00000000000000
REG_ARM64 = 0x6000000000000000
REG_SIZE_SHIFT = 52
REG_SIZE_MASK = 0x00F0000000000000
REG_SIZE_U64 = 0x0030000000000000
ARM_COPROC_SHIFT = 16
ARM_COPROC_MASK = 0x0FFF0000
#: arm64 ONE_REG "coprocessor" groups (arch/arm64/include/uapi/asm/kvm.h)
ARM_COPROC: dict[int, str] = {0x0010: "core", 0x0011: "demux", 0x0013: "sysreg",
                              0x0014: "fw", 0x0015: "sve", 0x0016: "fw_bmap"}
ARM_SVE_VLS = 0x606000000015FFFF
ARM_FEATURE_ID_RANGE_SIZE = 192  # u64 entries filled by KVM_ARM_GET_REG_WRITABLE_MASKS


def arm64_sysreg_id(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    return (REG_ARM64 | REG_SIZE_U64 | 0x13 << ARM_COPROC_SHIFT
            | op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2)


def arm64_sysreg_encoding(reg_id: int) -> tuple[int, int, int, int, int]:
    return ((reg_id >> 14) & 3, (reg_id >> 11) & 7, (reg_id >> 7) & 15,
            (reg_id >> 3) & 15, reg_id & 7)


def arm64_feature_id_range_index(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """KVM_ARM_FEATURE_ID_RANGE_IDX: where a register's mask sits in the 192-entry array."""
    op1 &= 3
    return ((op1 - (op1 == 3)) << 6) | ((crm & 7) << 3) | op2


def arm64_coproc(reg_id: int) -> str:
    return ARM_COPROC.get((reg_id & ARM_COPROC_MASK) >> ARM_COPROC_SHIFT, "other")


def reg_size(reg_id: int) -> int:
    return 1 << ((reg_id & REG_SIZE_MASK) >> REG_SIZE_SHIFT)
