"""arm64 registers that are not ID-register fields: firmware pseudo-registers, PSCI
versions, SMCCC workaround levels, vCPU feature sets, names, and which rule kind judges
each register (:mod:`.rules`).

Sources: arch/arm64/include/uapi/asm/kvm.h, Documentation/virt/kvm/arm/fw-pseudo-registers.rst,
arch/arm64/kvm/hypercalls.c (``kvm_arm_set_fw_reg``, ``kvm_arm_set_fw_reg_bmap``),
QEMU target/arm/kvm.c (``kvm_arm_init_cpreg_list``: core and SVE registers are not cpregs).
Other system registers are named by the kernel's own tables (data/sysreg/arm64.json, which
packaging/gen-sysreg-names writes from arch/arm64/tools/sysreg and asm/sysreg.h).
Kernel versions are first mainline releases; the arm64 lab measures the Debian builds.
Standard library only: this runs inside the arm64 lab's initramfs and on the hook's path.
"""
from __future__ import annotations

from ...uapi import arm64 as kvm  # the uapi id layout, without the ioctls
from ...uapi.arm64 import (  # which ids are well formed: the uapi layout, read as arm64 registers
    ID_PREFIXES as ID_PREFIXES,
    is_reg_id as is_reg_id,
    parse_ids as parse_ids,
)


class FwReg:
    """A firmware pseudo-register (KVM_REG_ARM_FW / KVM_REG_ARM_FW_FEAT_BMAP).

    :param kind: the rule kind that judges its value (``psci``, ``workaround``, ``bitmap``)
    :param since: first mainline kernel that lists it in KVM_GET_REG_LIST
    :param bits: bitmap bit -> (service name, first kernel)
    """

    __slots__ = ("id", "name", "kind", "since", "bits")

    def __init__(self, id: int, name: str, kind: str, since: str,
                 bits: dict[int, tuple[str, str]] | None = None) -> None:
        self.id = id
        self.name = name
        self.kind = kind
        self.since = since
        self.bits = bits or {}

    def bit_names(self, mask: int) -> list[str]:
        return [self.bits.get(b, (f"bit {b}", ""))[0] for b in range(64) if mask >> b & 1]


#: Adding a firmware register of an existing kind is one row here (and, to pin it, the
#: preload library's allow-list in abiguard_pin.c, which admits 0x603000000014000X and
#: 0x603000000016000X already).
FW_REGS: tuple[FwReg, ...] = (
    FwReg(0x6030000000140000, "PSCI_VERSION", "psci", "4.17"),
    FwReg(0x6030000000140001, "SMCCC_ARCH_WORKAROUND_1", "workaround", "5.3"),
    FwReg(0x6030000000140002, "SMCCC_ARCH_WORKAROUND_2", "workaround", "5.3"),
    # Spectre-BHB, commit a5905d6af492; Debian's 5.10.223 carries the stable backport
    FwReg(0x6030000000140003, "SMCCC_ARCH_WORKAROUND_3", "workaround", "5.17"),
    FwReg(0x6030000000160000, "STD_BMAP", "bitmap", "5.19", {0: ("TRNG_V1_0", "5.19")}),
    FwReg(0x6030000000160001, "STD_HYP_BMAP", "bitmap", "5.19", {0: ("PV_TIME", "5.19")}),
    FwReg(0x6030000000160002, "VENDOR_HYP_BMAP", "bitmap", "5.19",
          {0: ("FUNC_FEAT", "5.19"), 1: ("PTP", "5.19")}),
    # opt-in: its default is 0 (commit c0000e58c74e)
    FwReg(0x6030000000160003, "VENDOR_HYP_BMAP_2", "bitmap", "6.15",
          {0: ("DISCOVER_IMPL_VER", "6.15"), 1: ("DISCOVER_IMPL_CPUS", "6.15")}),
)
FW_BY_ID: dict[int, FwReg] = {r.id: r for r in FW_REGS}
FW_BY_NAME: dict[str, FwReg] = {r.name: r for r in FW_REGS}

#: PSCI_VERSION encodings, (major << 16) | minor, with the kernel that first accepts them
PSCI_VERSIONS: dict[str, tuple[int, str]] = {
    "0.1": (0x00000001, "4.17"), "0.2": (0x00000002, "4.17"), "1.0": (0x00010000, "4.17"),
    "1.1": (0x00010001, "5.18"), "1.2": (0x00010002, "6.13"), "1.3": (0x00010003, "6.13"),
}


def psci_name(value: int) -> str:
    return f"{value >> 16}.{value & 0xFFFF}"


#: SMCCC workaround levels; KVM accepts a written level only if the host level is >= it,
#: ordered NOT_AVAIL < AVAIL < NOT_REQUIRED (hypercalls.c ``kvm_arm_set_fw_reg``).
WORKAROUND_LEVELS: dict[int, str] = {0: "NOT_AVAIL", 1: "AVAIL", 2: "NOT_REQUIRED"}
#: WA2 is stored as 0 or 3: {0,1} -> 0 and {2,3} -> 3 before the same >= comparison
WORKAROUND_2_LEVELS: dict[int, str] = {0: "NOT_AVAIL", 1: "UNKNOWN", 2: "AVAIL", 3: "NOT_REQUIRED"}
#: the levels the probe writes to learn which ones a kernel takes
WORKAROUND_TRIALS: tuple[int, ...] = (0, 1, 2, 3, 4)

#: optional vCPU feature groups, by the short name configurations are named with; the
#: pointer-authentication pair must be requested together (Documentation/virt/kvm/api.rst,
#: KVM_ARM_VCPU_INIT)
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "pmu": ("PMU_V3",), "sve": ("SVE",), "ptrauth": ("PTRAUTH_ADDRESS", "PTRAUTH_GENERIC"),
}
OPTIONAL_VCPU_FEATURES: tuple[tuple[str, ...], ...] = tuple(FEATURE_GROUPS.values())
#: every vCPU asks for PSCI 0.2 (QEMU always does on KVM)
BASE_FEATURES = ("PSCI_0_2",)


def config_name(features: list[str] | tuple[str, ...]) -> str:
    """``psci`` plus the groups present, in table order: ``psci+pmu+sve``."""
    parts = ["psci"] + [g for g, fs in FEATURE_GROUPS.items() if all(f in features for f in fs)]
    return "+".join(parts)


def config_features(name: str) -> list[str]:
    """The KVM_ARM_VCPU_INIT features of a configuration; ValueError for an unknown name."""
    groups = name.split("+") if isinstance(name, str) else []
    if not groups or groups[0] != "psci" or any(g not in FEATURE_GROUPS for g in groups[1:]) \
            or len(set(groups)) != len(groups) or config_name(
                list(BASE_FEATURES) + [f for g in groups[1:] for f in FEATURE_GROUPS[g]]) != name:
        shown = name[:40] if isinstance(name, str) else repr(name)[:40]
        raise ValueError(f"unknown vCPU configuration {shown!r}: expected psci[+pmu][+sve][+ptrauth]")
    return list(BASE_FEATURES) + [f for g in groups[1:] for f in FEATURE_GROUPS[g]]


def config_width(name: str) -> tuple[int, str]:
    """Sort key for "the richest configuration": most features, then by name."""
    return (len(config_features(name)), name)


def vcpu_configs(offered: list[tuple[str, ...]]) -> dict[str, list[str]]:
    """Every combination of the offered optional groups, each a configuration to probe."""
    configs: dict[str, list[str]] = {}
    for mask in range(1 << len(offered)):
        features = list(BASE_FEATURES) + [f for i, group in enumerate(offered) if mask >> i & 1
                                          for f in group]
        configs[config_name(features)] = features
    return dict(sorted(configs.items(), key=lambda kv: (len(kv[1]), kv[0])))


#: ONE_REG groups QEMU does not put into its cpreg migration list
NOT_MIGRATED_COPROCS = frozenset({"core", "sve"})

#: registers whose value moves with time: compared by presence, never by value
VOLATILE_REGS: dict[int, str] = {
    kvm.arm64_sysreg_id(3, 3, 14, 3, 2): "KVM_REG_ARM_TIMER_CNT",  # uapi swaps CNT/CVAL encodings
    kvm.arm64_sysreg_id(3, 3, 14, 0, 1): "KVM_REG_ARM_PTIMER_CNT",
}

#: names KVM's uapi gives sysreg ids (arch/arm64/include/uapi/asm/kvm.h), which win over the
#: kernel's architectural names: KVM_REG_ARM_TIMER_CTL is CNTV_CTL_EL0's encoding, and
#: KVM_REG_ARM_TIMER_CVAL sits at CNTVCT_EL0's (the uapi swapped the CVAL and CNT encodings;
#: its TIMER_CNT, at CNTV_CVAL_EL0's, is in :data:`VOLATILE_REGS`)
_KVM_NAMES: dict[tuple[int, int, int, int, int], str] = {
    (3, 3, 14, 3, 1): "KVM_REG_ARM_TIMER_CTL", (3, 3, 14, 0, 2): "KVM_REG_ARM_TIMER_CVAL",
}
#: the kernel's system-register names by encoding, written by packaging/gen-sysreg-names from
#: arch/arm64/tools/sysreg and arch/arm64/include/asm/sysreg.h; None: the package's own
#: data/sysreg/arm64.json (tests point it elsewhere)
SYSREG_NAMES_FILE: str | None = None
_other_names: dict[int, str] = {}


def _sysreg_names_path() -> str:
    import os

    if SYSREG_NAMES_FILE is not None:
        return SYSREG_NAMES_FILE
    package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(package, "data", "sysreg", "arm64.json")


def _load_sysreg_names(path: str) -> dict[tuple[int, int, int, int, int], str]:
    """encoding -> name from the data file. Its ``names`` member must map
    ``"op0,op1,crn,crm,op2"`` (decimal, each within its field) to a register name; anything
    else is a packaging bug, refused with :class:`~abiguard.errors.AbiguardError`."""
    import json

    from ...errors import AbiguardError

    fix = "reinstall abiguard (a packaging bug: packaging/gen-sysreg-names writes this file)"
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise AbiguardError(f"cannot read the arm64 register names {path}: {e}; {fix}") from None
    names = doc.get("names") if isinstance(doc, dict) else None
    if not isinstance(names, dict) or not names:
        raise AbiguardError(f"the arm64 register names {path} have no 'names' object; {fix}")
    table: dict[tuple[int, int, int, int, int], str] = {}
    for key, name in names.items():
        fields = key.split(",")
        if len(fields) != 5 or not all(f.isascii() and f.isdigit() and f == str(int(f)) for f in fields) \
                or not isinstance(name, str) or not (name.isascii() and name.isidentifier()):
            raise AbiguardError(f"the arm64 register names {path} have {key[:40]!r}: {str(name)[:40]!r}, "
                                f"not \"op0,op1,crn,crm,op2\": NAME; {fix}")
        op0, op1, crn, crm, op2 = (int(f) for f in fields)
        if op0 > 3 or op1 > 7 or crn > 15 or crm > 15 or op2 > 7:
            raise AbiguardError(f"the arm64 register names {path} have {key!r}, not an encoding "
                                f"(op0 < 4, op1 < 8, CRn < 16, CRm < 16, op2 < 8); {fix}")
        table[(op0, op1, crn, crm, op2)] = name
    return table


def other_sysreg_names() -> dict[int, str]:
    """id -> name of the system registers the kernel names (built on first use: the hook
    names registers from the profile's own list and rarely needs it), with KVM's own
    names where the uapi has them. :func:`reg_name` asks the ID-register and firmware
    tables first."""
    if not _other_names:
        table = _load_sysreg_names(_sysreg_names_path())
        table.update(_KVM_NAMES)
        _other_names.update({kvm.arm64_sysreg_id(*enc): name for enc, name in table.items()})
    return _other_names


def reg_name(reg_id: int) -> str:
    """Canonical name of an arm64 ONE_REG id; an unnamed system register by its encoding."""
    from . import idregs

    fw = FW_BY_ID.get(reg_id)
    if fw:
        return fw.name
    idreg = idregs.REG_BY_ID.get(reg_id)
    if idreg:
        return idreg.name
    if reg_id in VOLATILE_REGS:
        return VOLATILE_REGS[reg_id]
    if reg_id in HOOK_REG_NAMES:
        return HOOK_REG_NAMES[reg_id]
    other = other_sysreg_names().get(reg_id)
    if other is not None:
        return other
    group = kvm.arm64_coproc(reg_id)
    if group == "sysreg":
        op0, op1, crn, crm, op2 = kvm.arm64_sysreg_encoding(reg_id)
        return f"S{op0}_{op1}_C{crn}_C{crm}_{op2}"
    if group == "demux":
        return f"DEMUX_CCSIDR[{reg_id & 0xFF}]"
    return f"{group.upper()}+{reg_id & 0xFFFF:#x}"


#: the rule kind for registers of a ONE_REG group that no row above names: CCSIDR values
#: (cache geometry) reach the guest through the demux group; a firmware register this
#: table lacks is judged "unknown_fw" (refused: upgrade abiguard)
_KIND_BY_COPROC: dict[str, str] = {"demux": "ccsidr", "fw": "unknown_fw", "fw_bmap": "unknown_fw"}
_KIND_BY_GROUP: dict[int, str] = {g: _KIND_BY_COPROC[n] for g, n in kvm.ARM_COPROC.items() if n in _KIND_BY_COPROC}
_SYSREG_GROUP = 0x13
#: reg id -> kind, for the ids already asked about (a hook run asks ~600 times about ~250 ids)
_KINDS: dict[int, str] = {}


def kind_of(reg_id: int) -> str:
    """The rule kind (:data:`.rules.RULES`) that judges this register's value;
    ``state`` for guest-run state, which is not guest ABI."""
    kind = _KINDS.get(reg_id)
    if kind is not None:
        return kind
    fw = FW_BY_ID.get(reg_id)
    if fw is not None:
        kind = fw.kind
    elif reg_id in VOLATILE_REGS:
        kind = "state"
    else:
        group = (reg_id >> 16) & 0xFFF
        if reg_id == CLIDR_EL1_ID:
            kind = "clidr"
        elif group == _SYSREG_GROUP:
            kind = "idreg" if _is_id_encoding(reg_id) else "state"
        else:
            kind = _KIND_BY_GROUP.get(group, "state")
    _KINDS[reg_id] = kind
    return kind


def carries_abi_value(reg_id: int) -> bool:
    """Whether the register's value is part of the guest ABI (not guest-run state)."""
    return kind_of(reg_id) != "state"


#: CCSIDR_EL1.LineSize: log2(words per line) - 2; KVM refuses a line smaller than the host's
CCSIDR_LINESIZE_MASK = 0x7
CLIDR_EL1_ID = kvm.arm64_sysreg_id(3, 1, 0, 0, 1)
CTR_EL0_ID = kvm.arm64_sysreg_id(3, 3, 0, 0, 1)
#: the registers a judged move names most often, named here so that naming them does not
#: load the generated table (json and re: ~6.6 ms of a ~30 ms hook run): the CTR_EL0 pin
#: note of every 6.1 -> 7.x arrival, and the physical-timer state its hidden-register note
#: names (tests/bench/bench_hook.py: that arrival went from 2.32x to 1.84x a bare
#: interpreter); the table's own names, checked in tests/test_sysreg_names.py
HOOK_REG_NAMES: dict[int, str] = {
    CLIDR_EL1_ID: "CLIDR_EL1", CTR_EL0_ID: "CTR_EL0",
    kvm.arm64_sysreg_id(3, 3, 14, 2, 1): "CNTP_CTL_EL0", kvm.arm64_sysreg_id(3, 3, 14, 2, 2): "CNTP_CVAL_EL0",
}
#: CTR_EL0.IDC: no data cache clean to the PoU is needed for instruction coherence
CTR_EL0_IDC = 1 << 28
#: KVM_REG_ARM_DEMUX_ID_CCSIDR ids: one per CSSELR value, CSSELR_MAX (14) of them
CCSIDR_DEMUX_BASE = 0x6020000000110000
CSSELR_MAX = 14
#: the kernel that takes the cache description from userspace: "KVM: arm64: Normalize
#: cache configuration" (v6.3) fabricates CLIDR/CCSIDR per vCPU, lets KVM_SET_ONE_REG
#: change them (set_clidr, set_ccsidr in arch/arm64/kvm/sys_regs.c) and traps the guest's
#: reads (HCR_EL2.TID2); before it CLIDR was an invariant register (only the host's value)
#: and CCSIDR the hardware's, read by the guest directly
CACHE_WRITABLE_SINCE = (6, 3)


def clidr_implies_idc(clidr: int) -> bool:
    """set_clidr: a CLIDR whose LoC is 0, or whose LoUIS and LoUU are both 0, says no data
    cache clean to the PoU is needed, i.e. CTR_EL0.IDC; KVM refuses it (EINVAL) unless the
    host's sanitised CTR_EL0 has IDC."""
    loc, louis, louu = (clidr >> 24) & 7, (clidr >> 21) & 7, (clidr >> 27) & 7
    return not loc or (not louis and not louu)


def kernel_version(release: str) -> tuple[int, ...]:
    """'6.1.0-50-arm64' -> (6, 1, 0): the numbers before the first non-numeric part."""
    out = []
    for part in release.split("-", 1)[0].split("+", 1)[0].split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def ccsidr_visible(reg_id: int, clidr: int) -> bool:
    """Whether the guest can see this CCSIDR: CSSELR index = (level - 1) << 1 | InD, and
    CLIDR_EL1.Ctype<level> (3 bits each) says whether that level has that kind of cache
    (1 instruction, 2 data, 3 separate, 4 unified)."""
    index = reg_id & 0xFF
    level, instruction = (index >> 1) + 1, index & 1
    if level > 7:
        return False
    ctype = (clidr >> (3 * (level - 1))) & 7
    return ctype in ((1, 3) if instruction else (2, 3, 4))


def _is_id_encoding(reg_id: int) -> bool:
    """op0=3, op1 in {0,1,3}, CRn=0 (the sysreg id layout: op0 << 14 | op1 << 11 | CRn << 7 ...)."""
    return (reg_id >> 14) & 3 == 3 and (reg_id >> 11) & 7 in (0, 1, 3) and not (reg_id >> 7) & 15


def is_id_register(reg_id: int) -> bool:
    """Feature ID range as KVM defines it: op0=3, op1 in {0,1,3}, CRn=0."""
    return (reg_id >> 16) & 0xFFF == _SYSREG_GROUP and _is_id_encoding(reg_id)


#: MIDR/REVIDR/AIDR become writable only after KVM_CAP_ARM_WRITABLE_IMP_ID_REGS is
#: enabled on the VM before its first vCPU (Linux 6.15); QEMU never enables it, so for a
#: plain QEMU VM they are the host CPU's. abiguard_pin.so enables it where one is pinned.
IMPLEMENTATION_ID_REGS = frozenset({"MIDR_EL1", "REVIDR_EL1", "AIDR_EL1"})
MIDR_EL1_ID = 0x603000000013C000
REVIDR_EL1_ID = 0x603000000013C006
AIDR_EL1_ID = 0x603000000013C807
#: (MIDR, REVIDR, AIDR): what identifies a CPU implementation to a guest's errata code
IMPLEMENTATION_IDS = (MIDR_EL1_ID, REVIDR_EL1_ID, AIDR_EL1_ID)
#: what set_imp_id_reg takes once the capability is on (arch/arm64/kvm/sys_regs.c:
#: IMPLEMENTATION_ID(MIDR_EL1, GENMASK_ULL(31, 0)), REVIDR and AIDR all 64 bits)
IMPLEMENTATION_MASKS = {MIDR_EL1_ID: 0xFFFFFFFF, REVIDR_EL1_ID: (1 << 64) - 1, AIDR_EL1_ID: (1 << 64) - 1}
IMP_CAP = "KVM_CAP_ARM_WRITABLE_IMP_ID_REGS"


def cpu_of(registers: dict[int, int] | dict[int, int | None]) -> tuple[int | None, ...]:
    """(MIDR, REVIDR, AIDR) as a register map holds them (a host's defaults, a contract's
    values); None where it has no such register."""
    return tuple(registers.get(rid) for rid in IMPLEMENTATION_IDS)


#: the hypercall bitmap of vendor calls 64-127 and its errata-discovery bits
#: (KVM_REG_ARM_VENDOR_HYP_BIT_DISCOVER_IMPL_VER | _CPUS, Linux 6.16's guest side)
VENDOR_HYP_BMAP_2_ID = 0x6030000000160003
DISCOVER_IMPL_BITS = 0x3
#: the library's limit on implementation CPUs (MAX_CPUS in abiguard_pin.c)
MAX_IMPL_CPUS = 16

#: the value of a register that gives the guest nothing (an empty bitmap, a RAZ ID register)
NEUTRAL_VALUE = 0

#: the SVE vector-length pseudo-register (KVM_REG_ARM64_SVE_VLS)
SVE_VLS_ID = kvm.ARM_SVE_VLS

_FW_PREFIX = 0x6030000000140000
_BMAP_PREFIX = 0x6030000000160000
_SYSREG_PREFIX = 0x6030000000130000


def preload_allows(reg_id: int) -> bool:
    """The preload library's compiled-in allow-list (``allowed()`` in abiguard_pin.c):
    firmware pseudo-registers, hypercall bitmaps, the ID registers op0=3, op1=0,
    CRn=0, CRm=1..7, MIDR/REVIDR/AIDR, and the cache description: CLIDR_EL1, CTR_EL0 and
    the CCSIDR demux ids (not MPIDR)."""
    if reg_id & ~0xF in (_FW_PREFIX, _BMAP_PREFIX) or reg_id in IMPLEMENTATION_IDS:
        return True
    if reg_id in (CLIDR_EL1_ID, CTR_EL0_ID) or CCSIDR_DEMUX_BASE <= reg_id < CCSIDR_DEMUX_BASE + CSSELR_MAX:
        return True
    if reg_id & ~0xFFFF == _SYSREG_PREFIX:
        op0, op1, crn, crm, _op2 = kvm.arm64_sysreg_encoding(reg_id)
        return op0 == 3 and op1 == 0 and crn == 0 and 1 <= crm <= 7
    return False
