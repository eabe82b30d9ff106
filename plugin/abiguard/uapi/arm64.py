"""The arm64 ONE_REG id layout (arch/arm64/include/uapi/asm/kvm.h) and vCPU feature bits,
and which ids are well formed: pure arithmetic, no imports, so the hook and the arm64 lab's
initramfs read register ids without loading the ioctl module (:mod:`abiguard.uapi.kvm`
re-exports the layout). A hop stamp's register stream (:mod:`abiguard.model.stamp`) and an
arm64 contract's (:mod:`abiguard.arch.arm64.body`) are read with :func:`parse_ids`."""
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


#: arm64 ONE_REG groups (arch/arm64/include/uapi/asm/kvm.h KVM_REG_ARM_*: core, demux,
#: sysreg, fw, sve, fw_bmap) and sizes (KVM_REG_SIZE_U32 .. U2048)
_ARM64_COPROCS = frozenset({0x10, 0x11, 0x13, 0x14, 0x15, 0x16})
_ARM64_SIZES = frozenset(range(2, 9))
#: ``id >> 16`` of every well-formed id: KVM_REG_ARM64 (0x60 << 56) | size << 52 | group << 16,
#: every other bit above the low 16 zero -- one set lookup checks all of it
_ID_PREFIXES = frozenset((0x60 << 40) | (size << 36) | coproc for size in _ARM64_SIZES for coproc in _ARM64_COPROCS)
#: the id prefixes (the id shifted right by 16) of every register group KVM defines
ID_PREFIXES = _ID_PREFIXES


def is_reg_id(reg: int) -> bool:
    """A well-formed arm64 ONE_REG id of a group KVM defines (0x60..., 64-bit)."""
    return reg >= 0 and reg >> 16 in _ID_PREFIXES


#: the last few streams parsed, by their words: a hop's stamp usually lists the same
#: stream as the contract (or the previous hop), and parsing ~200 hex words costs
_PARSED: dict[tuple[str, ...], tuple[int, ...]] = {}
_MAX_PARSED = 4


def parse_ids(words: list[str]) -> tuple[list[int], list[str]]:
    """Register ids from their canonical hex spelling, all at once (a stream has ~260):
    (the ids, the words that are not a well-formed arm64 ONE_REG id as abiguard writes it)."""
    key = tuple(words) if set(map(type, words)) <= {str} else None
    if key is not None:
        seen = _PARSED.get(key)
        if seen is not None:
            return list(seen), []
    ids, bad = _parse_ids(words)
    if key is not None and not bad:
        if len(_PARSED) >= _MAX_PARSED:
            _PARSED.clear()
        _PARSED[key] = tuple(ids)
    return ids, bad


def _parse_ids(words: list[str]) -> tuple[list[int], list[str]]:
    try:
        ids = [int(w, 16) for w in words]
    except (ValueError, TypeError):
        pass
    else:
        # hex() is the one spelling abiguard writes: 0x, lowercase, no leading zeros
        if all(type(w) is str for w in words) and [hex(i) for i in ids] == words \
                and all(i >> 16 in _ID_PREFIXES for i in ids):
            return ids, []
    good: list[int] = []
    bad: list[str] = []
    for w in words:
        try:
            rid = int(w, 16)
        except (ValueError, TypeError):
            bad.append(str(w))
            continue
        if type(w) is not str or hex(rid) != w or not is_reg_id(rid):
            bad.append(w if type(w) is str else str(w))
        else:
            good.append(rid)
    return good, bad
