"""arm64 feature ID registers as KVM exposes them, and the kernel's "safe value" rules.

Pure data plus two helpers; standard library only (runs inside the lab initramfs).

Where each table comes from (read through the public-source index; ``torvalds/linux``
itself is stored there only at v5.15, so a mirror that follows mainline was read):

* Field types, signedness and safe values: ``arch/arm64/kernel/cpufeature.c``, the
  ``ftr_*[]`` tables and ``arm64_ftr_regs[]``, repository ``kernel-patches/bpf`` @
  ``24657f2ce53695e7f750c776cb007812a4d6dea3``. Cross-checked against the older
  ``kernelorg-mirror/linux_kernel_git_oupton_linux`` @ ``29d0652637fa54272b7a6941f029416548d39c01``;
  the newer copy adds ID_AA64ISAR2.ATS1A, ID_AA64ISAR3.LSUI, ID_AA64PFR0.RME,
  ID_AA64PFR2.GCIE, ID_AA64SMFR0.LUT6, ID_AA64FPFR0.F16MM2 and makes PMUVer/PerfMon
  unsigned.
* Field names, positions and widths: ``arch/arm64/tools/sysreg``, ``kernel-patches/bpf`` @
  ``bf97b5c9fcb16131cf9366311e8cf8d63fc353ec``. Register encodings as well, except
  MIDR/MPIDR/REVIDR/AIDR, which ``arch/arm64/include/asm/sysreg.h`` defines by hand.
* KVM's type overrides: ``arch/arm64/kvm/sys_regs.c`` ``kvm_arm64_ftr_safe_value()``,
  ``kernel-patches/bpf`` @ ``9aa9d5eaf78bc9e8cc0a017030ccf58329392368``: only
  ID_AA64DFR0_EL1.{PMUVer,DebugVer} and ID_DFR0_EL1.PerfMon (all become LOWER_SAFE).
* ``enum ftr_type`` and ``arm64_ftr_value()`` (sign extension from the field width):
  ``arch/arm64/include/asm/cpufeature.h`` (found by text search; commit not recorded).

ID_FIELDS lists exactly the fields of the host ``arm64_ftr_regs[]`` tables, which are the
fields ``arm64_check_features()`` walks. A bit outside every listed field is, for the host,
"STRICT RES0": the sanitised value reads 0 there and KVM requires the written value to
equal its limit bit for bit. Registers whose host table is missing or empty (MIDR,
MPIDR, REVIDR, AIDR, CLIDR, the AFRs, ID_AA64DFR1, ID_AA64DFR2) therefore have no rows.
"""
from __future__ import annotations

from ...uapi import arm64 as kvm  # the uapi id layout, without the ioctls

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)

# Linux ``enum ftr_type``: which of two differing field values is the safe one. Plain
# ints, not an Enum: this module is on the hook's path, and enum costs milliseconds.
EXACT = 0                  #: must match; otherwise the table's safe_val
LOWER_SAFE = 1             #: the smaller value
HIGHER_SAFE = 2            #: the bigger value
HIGHER_OR_ZERO_SAFE = 3    #: the bigger value, but 0 beats everything
SAFETY_NAMES: dict[int, str] = {EXACT: "exact", LOWER_SAFE: "lower safe", HIGHER_SAFE: "higher safe",
                                HIGHER_OR_ZERO_SAFE: "higher or zero safe"}


def one_reg_id(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """KVM ONE_REG id of a system register (uapi ``ARM64_SYS_REG``)."""
    return kvm.arm64_sysreg_id(op0, op1, crn, crm, op2)


class IdReg:
    """A feature ID register: name and (op0, op1, CRn, CRm, op2) encoding."""

    __slots__ = ("name", "op0", "op1", "crn", "crm", "op2", "id")

    def __init__(self, name: str, op0: int, op1: int, crn: int, crm: int, op2: int) -> None:
        self.name = name
        self.op0, self.op1, self.crn, self.crm, self.op2 = op0, op1, crn, crm, op2
        self.id = one_reg_id(op0, op1, crn, crm, op2)   #: the KVM ONE_REG id

    def __repr__(self) -> str:
        return f"IdReg({self.name!r}, {self.id:#x})"


class IdField:
    """One field of an ID register, as the kernel's ``arm64_ftr_bits`` describes it.

    :param safety: :data:`EXACT`, :data:`LOWER_SAFE`, :data:`HIGHER_SAFE` or
        :data:`HIGHER_OR_ZERO_SAFE`
    :param safe_val: raw encoding; used for EXACT, documentation otherwise
    """

    __slots__ = ("reg", "name", "shift", "width", "signed", "safety", "safe_val", "mask")

    def __init__(self, reg: str, name: str, shift: int, width: int, signed: bool, safety: int,
                 safe_val: int) -> None:
        self.reg, self.name, self.shift, self.width = reg, name, shift, width
        self.signed, self.safety, self.safe_val = signed, safety, safe_val
        self.mask = ((1 << width) - 1) << shift

    @property
    def safety_name(self) -> str:
        return SAFETY_NAMES[self.safety]

    def raw(self, reg_value: int) -> int:
        """The field's raw encoding inside a register value."""
        return (reg_value >> self.shift) & ((1 << self.width) - 1)

    def key(self) -> tuple[str, str, int, int, bool, int, int]:
        return (self.reg, self.name, self.shift, self.width, self.signed, self.safety, self.safe_val)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdField) and self.key() == other.key()

    def __lt__(self, other: IdField) -> bool:
        return self.key() < other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __repr__(self) -> str:
        return f"IdField({self.reg}.{self.name}, shift={self.shift}, width={self.width})"


#: name, op0, op1, CRn, CRm, op2 (IdReg objects are made on first use: :data:`ID_REGS`)
_ID_REG_ROWS: tuple[tuple[str, int, int, int, int, int], ...] = (
    # op1=0, CRm=0: implementation registers
    ("MIDR_EL1", 3, 0, 0, 0, 0),
    ("MPIDR_EL1", 3, 0, 0, 0, 5),      # per-vCPU affinity, not a feature register
    ("REVIDR_EL1", 3, 0, 0, 0, 6),
    # CRm=1..3: AArch32 views
    ("ID_PFR0_EL1", 3, 0, 0, 1, 0),
    ("ID_PFR1_EL1", 3, 0, 0, 1, 1),
    ("ID_DFR0_EL1", 3, 0, 0, 1, 2),
    ("ID_AFR0_EL1", 3, 0, 0, 1, 3),
    ("ID_MMFR0_EL1", 3, 0, 0, 1, 4),
    ("ID_MMFR1_EL1", 3, 0, 0, 1, 5),
    ("ID_MMFR2_EL1", 3, 0, 0, 1, 6),
    ("ID_MMFR3_EL1", 3, 0, 0, 1, 7),
    ("ID_ISAR0_EL1", 3, 0, 0, 2, 0),
    ("ID_ISAR1_EL1", 3, 0, 0, 2, 1),
    ("ID_ISAR2_EL1", 3, 0, 0, 2, 2),
    ("ID_ISAR3_EL1", 3, 0, 0, 2, 3),
    ("ID_ISAR4_EL1", 3, 0, 0, 2, 4),
    ("ID_ISAR5_EL1", 3, 0, 0, 2, 5),
    ("ID_MMFR4_EL1", 3, 0, 0, 2, 6),   # sits between ISAR5 and ISAR6
    ("ID_ISAR6_EL1", 3, 0, 0, 2, 7),
    ("MVFR0_EL1", 3, 0, 0, 3, 0),
    ("MVFR1_EL1", 3, 0, 0, 3, 1),
    ("MVFR2_EL1", 3, 0, 0, 3, 2),
    ("ID_PFR2_EL1", 3, 0, 0, 3, 4),
    ("ID_DFR1_EL1", 3, 0, 0, 3, 5),
    ("ID_MMFR5_EL1", 3, 0, 0, 3, 6),
    # CRm=4..7: AArch64
    ("ID_AA64PFR0_EL1", 3, 0, 0, 4, 0),
    ("ID_AA64PFR1_EL1", 3, 0, 0, 4, 1),
    ("ID_AA64PFR2_EL1", 3, 0, 0, 4, 2),
    ("ID_AA64ZFR0_EL1", 3, 0, 0, 4, 4),
    ("ID_AA64SMFR0_EL1", 3, 0, 0, 4, 5),
    ("ID_AA64FPFR0_EL1", 3, 0, 0, 4, 7),
    ("ID_AA64DFR0_EL1", 3, 0, 0, 5, 0),
    ("ID_AA64DFR1_EL1", 3, 0, 0, 5, 1),
    # named in sysreg; an older sys_regs.c read (oupton tree @ 01308319) still declares
    # (5,2) ID_UNALLOCATED, i.e. RAZ
    ("ID_AA64DFR2_EL1", 3, 0, 0, 5, 2),
    ("ID_AA64AFR0_EL1", 3, 0, 0, 5, 4),
    ("ID_AA64AFR1_EL1", 3, 0, 0, 5, 5),
    ("ID_AA64ISAR0_EL1", 3, 0, 0, 6, 0),
    ("ID_AA64ISAR1_EL1", 3, 0, 0, 6, 1),
    ("ID_AA64ISAR2_EL1", 3, 0, 0, 6, 2),
    ("ID_AA64ISAR3_EL1", 3, 0, 0, 6, 3),
    ("ID_AA64MMFR0_EL1", 3, 0, 0, 7, 0),
    ("ID_AA64MMFR1_EL1", 3, 0, 0, 7, 1),
    ("ID_AA64MMFR2_EL1", 3, 0, 0, 7, 2),
    ("ID_AA64MMFR3_EL1", 3, 0, 0, 7, 3),
    ("ID_AA64MMFR4_EL1", 3, 0, 0, 7, 4),
    # outside op1=0 but inside KVM's feature-ID range (op1 in {0,1,3}, CRn=0)
    ("CLIDR_EL1", 3, 1, 0, 0, 1),
    ("AIDR_EL1", 3, 1, 0, 0, 7),
    ("CTR_EL0", 3, 3, 0, 0, 1),
    ("DCZID_EL0", 3, 3, 0, 0, 7),
)

_U, _S = False, True
_X, _L, _H, _HZ = EXACT, LOWER_SAFE, HIGHER_SAFE, HIGHER_OR_ZERO_SAFE

#: name, shift, width, signed, safety, safe_val
_Row = tuple[str, int, int, bool, int, int]


def _generic32(*names: str) -> tuple[_Row, ...]:
    """cpufeature.c ``ftr_generic_32bits``: eight unsigned 4-bit LOWER_SAFE fields, 31..0."""
    return tuple((name, 28 - 4 * i, 4, _U, _L, 0) for i, name in enumerate(names))


# Per register, in the order of the ftr table (descending shift).
_TABLE: tuple[tuple[str, tuple[_Row, ...]], ...] = (
    ("ID_PFR0_EL1", (   # RAS[31:28] and AMU[23:20] are absent from the host table
        ("DIT", 24, 4, _U, _L, 0),
        ("CSV2", 16, 4, _U, _L, 0),
        ("State3", 12, 4, _U, _L, 0),
        ("State2", 8, 4, _U, _L, 0),
        ("State1", 4, 4, _U, _L, 0),
        ("State0", 0, 4, _U, _L, 0),
    )),
    ("ID_PFR1_EL1", (
        ("GIC", 28, 4, _U, _L, 0),
        ("Virt_frac", 24, 4, _U, _L, 0),
        ("Sec_frac", 20, 4, _U, _L, 0),
        ("GenTimer", 16, 4, _U, _L, 0),
        ("Virtualization", 12, 4, _U, _L, 0),
        ("MProgMod", 8, 4, _U, _L, 0),
        ("Security", 4, 4, _U, _L, 0),
        ("ProgMod", 0, 4, _U, _L, 0),
    )),
    ("ID_DFR0_EL1", (   # TraceFilt[31:28] is absent from the host table
        # host FTR_EXACT; kvm_arm64_ftr_safe_value() overrides it to LOWER_SAFE. Signed
        # before James Clark's fix (Fixes: c118cead07a7), so older kernels rank 0xF lowest
        ("PerfMon", 24, 4, _U, _L, 0),
        ("MProfDbg", 20, 4, _U, _L, 0),
        ("MMapTrc", 16, 4, _U, _L, 0),
        ("CopTrc", 12, 4, _U, _L, 0),
        ("MMapDbg", 8, 4, _U, _L, 0),
        ("CopSDbg", 4, 4, _U, _L, 0),
        ("CopDbg", 0, 4, _U, _L, 0),
    )),
    ("ID_MMFR0_EL1", (
        ("InnerShr", 28, 4, _S, _L, 0xF),   # signed although sysreg calls it a plain Enum
        ("FCSE", 24, 4, _U, _L, 0),
        ("AuxReg", 20, 4, _U, _L, 0),
        ("TCM", 16, 4, _U, _L, 0),
        ("ShareLvl", 12, 4, _U, _L, 0),
        ("OuterShr", 8, 4, _S, _L, 0xF),    # as InnerShr
        ("PMSA", 4, 4, _U, _L, 0),
        ("VMSA", 0, 4, _U, _L, 0),
    )),
    ("ID_MMFR1_EL1", _generic32("BPred", "L1TstCln", "L1Uni", "L1Hvd",
                                "L1UniSW", "L1HvdSW", "L1UniVA", "L1HvdVA")),
    ("ID_MMFR2_EL1", _generic32("HWAccFlg", "WFIStall", "MemBarr", "UniTLB",
                                "HvdTLB", "L1HvdRng", "L1HvdBG", "L1HvdFG")),
    # Supersec encodes 0 = IMP, 0xF = NI, yet the generic table compares it unsigned
    ("ID_MMFR3_EL1", _generic32("Supersec", "CMemSz", "CohWalk", "PAN",
                                "MaintBcst", "BPMaint", "CMaintSW", "CMaintVA")),
    ("ID_ISAR0_EL1", (
        ("Divide", 24, 4, _U, _L, 0),
        ("Debug", 20, 4, _U, _L, 0),
        ("Coproc", 16, 4, _U, _L, 0),
        ("CmpBranch", 12, 4, _U, _L, 0),
        ("BitField", 8, 4, _U, _L, 0),
        ("BitCount", 4, 4, _U, _L, 0),
        ("Swap", 0, 4, _U, _L, 0),
    )),
    ("ID_ISAR1_EL1", _generic32("Jazelle", "Interwork", "Immediate", "IfThen",
                                "Extend", "Except_AR", "Except", "Endian")),
    ("ID_ISAR2_EL1", _generic32("Reversal", "PSR_AR", "MultU", "MultS",
                                "Mult", "MultiAccessInt", "MemHint", "LoadStore")),
    ("ID_ISAR3_EL1", _generic32("T32EE", "TrueNOP", "T32Copy", "TabBranch",
                                "SynchPrim", "SVC", "SIMD", "Saturate")),
    ("ID_ISAR4_EL1", (
        ("SWP_frac", 28, 4, _U, _L, 0),
        ("PSR_M", 24, 4, _U, _L, 0),
        ("SynchPrim_frac", 20, 4, _U, _L, 0),
        ("Barrier", 16, 4, _U, _L, 0),
        ("SMC", 12, 4, _U, _L, 0),
        ("Writeback", 8, 4, _U, _L, 0),
        ("WithShifts", 4, 4, _U, _L, 0),
        ("Unpriv", 0, 4, _U, _L, 0),
    )),
    ("ID_ISAR5_EL1", (  # VCMA[31:28] is absent from the host table
        ("RDM", 24, 4, _U, _L, 0),
        ("CRC32", 16, 4, _U, _L, 0),
        ("SHA2", 12, 4, _U, _L, 0),
        ("SHA1", 8, 4, _U, _L, 0),
        ("AES", 4, 4, _U, _L, 0),
        ("SEVL", 0, 4, _U, _L, 0),
    )),
    ("ID_MMFR4_EL1", (
        ("EVT", 28, 4, _U, _L, 0),
        ("CCIDX", 24, 4, _U, _L, 0),
        ("LSM", 20, 4, _U, _L, 0),
        ("HPDS", 16, 4, _U, _L, 0),
        ("CnP", 12, 4, _U, _L, 0),
        ("XNX", 8, 4, _U, _L, 0),
        ("AC2", 4, 4, _U, _L, 0),
        ("SpecSEI", 0, 4, _U, _H, 0),  # 1 = "may SError on speculative reads": assume the worse
    )),
    ("ID_ISAR6_EL1", (
        ("I8MM", 24, 4, _U, _L, 0),
        ("BF16", 20, 4, _U, _L, 0),
        ("SPECRES", 16, 4, _U, _L, 0),
        ("SB", 12, 4, _U, _L, 0),
        ("FHM", 8, 4, _U, _L, 0),
        ("DP", 4, 4, _U, _L, 0),
        ("JSCVT", 0, 4, _U, _L, 0),
    )),
    ("MVFR0_EL1", (
        ("FPRound", 28, 4, _U, _L, 0),
        ("FPShVec", 24, 4, _U, _L, 0),
        ("FPSqrt", 20, 4, _U, _L, 0),
        ("FPDivide", 16, 4, _U, _L, 0),
        ("FPTrap", 12, 4, _U, _L, 0),
        ("FPDP", 8, 4, _U, _L, 0),
        ("FPSP", 4, 4, _U, _L, 0),
        ("SIMDReg", 0, 4, _U, _L, 0),
    )),
    ("MVFR1_EL1", (
        ("SIMDFMAC", 28, 4, _U, _L, 0),
        ("FPHP", 24, 4, _U, _L, 0),
        ("SIMDHP", 20, 4, _U, _L, 0),
        ("SIMDSP", 16, 4, _U, _L, 0),
        ("SIMDInt", 12, 4, _U, _L, 0),
        ("SIMDLS", 8, 4, _U, _L, 0),
        ("FPDNaN", 4, 4, _U, _L, 0),
        ("FPFtZ", 0, 4, _U, _L, 0),
    )),
    ("MVFR2_EL1", (
        ("FPMisc", 4, 4, _U, _L, 0),
        ("SIMDMisc", 0, 4, _U, _L, 0),
    )),
    ("ID_PFR2_EL1", (   # RAS_frac[11:8] is absent from the host table
        ("SSBS", 4, 4, _U, _L, 0),
        ("CSV3", 0, 4, _U, _L, 0),
    )),
    ("ID_DFR1_EL1", (   # HPMN0[7:4] is absent from the host table
        ("MTPMU", 0, 4, _S, _L, 0),     # 0xF = NI ranks below 0 = IMPDEF
    )),
    ("ID_MMFR5_EL1", (  # nTLBPA[7:4] is absent from the host table
        ("ETS", 0, 4, _U, _L, 0),
    )),
    # Fields missing from a host table are compared bit for bit against KVM's limit
    # (arm64_check_features()): here ID_AA64PFR1 PFAR, MTEX, THE, NMI, CSV2_frac and
    # RNDR_trap, ID_AA64PFR2 UINJ and MTEPERM.
    ("ID_AA64PFR0_EL1", (
        ("CSV3", 60, 4, _U, _L, 0),
        ("CSV2", 56, 4, _U, _L, 0),
        ("RME", 52, 4, _U, _L, 0),
        ("DIT", 48, 4, _U, _L, 0),
        ("AMU", 44, 4, _U, _L, 0),
        ("MPAM", 40, 4, _U, _L, 0),
        ("SEL2", 36, 4, _U, _L, 0),
        ("SVE", 32, 4, _U, _L, 0),
        ("RAS", 28, 4, _U, _L, 0),
        ("GIC", 24, 4, _U, _L, 0),
        ("AdvSIMD", 20, 4, _S, _L, 0xF),   # 0 = IMP, 1 = FP16, 0xF = NI (the lowest)
        ("FP", 16, 4, _S, _L, 0xF),        # as AdvSIMD
        ("EL3", 12, 4, _U, _L, 0),
        ("EL2", 8, 4, _U, _L, 0),
        ("EL1", 4, 4, _U, _L, 1),
        ("EL0", 0, 4, _U, _L, 1),
    )),
    ("ID_AA64PFR1_EL1", (
        ("DF2", 56, 4, _U, _L, 0),
        ("GCS", 44, 4, _U, _L, 0),
        ("MTE_frac", 40, 4, _S, _L, 0),    # 0 = ASYNC, 0xF = NI: signed so NI ranks lowest
        ("SME", 24, 4, _U, _L, 0),
        ("MPAM_frac", 16, 4, _U, _L, 0),
        ("RAS_frac", 12, 4, _U, _L, 0),
        ("MTE", 8, 4, _U, _L, 0),
        ("SSBS", 4, 4, _U, _L, 0),
        ("BT", 0, 4, _U, _L, 0),
    )),
    ("ID_AA64PFR2_EL1", (
        ("FPMR", 32, 4, _U, _L, 0),
        ("GCIE", 12, 4, _U, _L, 0),
        ("MTEFAR", 8, 4, _U, _L, 0),
        ("MTESTOREONLY", 4, 4, _U, _L, 0),
    )),
    ("ID_AA64ZFR0_EL1", (
        ("F64MM", 56, 4, _U, _L, 0),
        ("F32MM", 52, 4, _U, _L, 0),
        ("F16MM", 48, 4, _U, _L, 0),
        ("I8MM", 44, 4, _U, _L, 0),
        ("SM4", 40, 4, _U, _L, 0),
        ("SHA3", 32, 4, _U, _L, 0),
        ("B16B16", 24, 4, _U, _L, 0),
        ("BF16", 20, 4, _U, _L, 0),
        ("BitPerm", 16, 4, _U, _L, 0),
        ("EltPerm", 12, 4, _U, _L, 0),
        ("AES", 4, 4, _U, _L, 0),
        ("SVEver", 0, 4, _U, _L, 0),
    )),
    # Every SME field is EXACT (safe 0): a mismatch drops the feature instead of
    # picking the lower one. I16I64 and I8I32 are 4 bits wide but only 0 or 0xF.
    ("ID_AA64SMFR0_EL1", (
        ("FA64", 63, 1, _U, _X, 0),
        ("LUT6", 61, 1, _U, _X, 0),
        ("LUTv2", 60, 1, _U, _X, 0),
        ("SMEver", 56, 4, _U, _X, 0),
        ("I16I64", 52, 4, _U, _X, 0),
        ("F64F64", 48, 1, _U, _X, 0),
        ("I16I32", 44, 4, _U, _X, 0),
        ("B16B16", 43, 1, _U, _X, 0),
        ("F16F16", 42, 1, _U, _X, 0),
        ("F8F16", 41, 1, _U, _X, 0),
        ("F8F32", 40, 1, _U, _X, 0),
        ("I8I32", 36, 4, _U, _X, 0),
        ("F16F32", 35, 1, _U, _X, 0),
        ("B16F32", 34, 1, _U, _X, 0),
        ("BI32I32", 33, 1, _U, _X, 0),
        ("F32F32", 32, 1, _U, _X, 0),
        ("SF8FMA", 30, 1, _U, _X, 0),
        ("SF8DP4", 29, 1, _U, _X, 0),
        ("SF8DP2", 28, 1, _U, _X, 0),
        ("SBitPerm", 25, 1, _U, _X, 0),
        ("AES", 24, 1, _U, _X, 0),
        ("SFEXPA", 23, 1, _U, _X, 0),
        ("STMOP", 16, 1, _U, _X, 0),
        ("SMOP4", 0, 1, _U, _X, 0),
    )),
    ("ID_AA64FPFR0_EL1", (  # one-bit EXACT fields, like SMFR0
        ("F8CVT", 31, 1, _U, _X, 0),
        ("F8FMA", 30, 1, _U, _X, 0),
        ("F8DP4", 29, 1, _U, _X, 0),
        ("F8DP2", 28, 1, _U, _X, 0),
        ("F8MM8", 27, 1, _U, _X, 0),
        ("F8MM4", 26, 1, _U, _X, 0),
        ("F16MM2", 15, 1, _U, _X, 0),
        ("F8E4M3", 1, 1, _U, _X, 0),
        ("F8E5M2", 0, 1, _U, _X, 0),
    )),
    # HPMN0, ExtTrcBuff, BRBE, MTPMU, TraceBuffer, TraceFilt, SEBEP, PMSS and TraceVer are
    # absent from the host table. ID_AA64DFR1_EL1 uses ftr_raz: no fields at all.
    ("ID_AA64DFR0_EL1", (
        ("DoubleLock", 36, 4, _S, _L, 0),  # 0 = IMP, 0xF = NI
        ("PMSVer", 32, 4, _U, _L, 0),
        ("CTX_CMPs", 28, 4, _U, _L, 0),
        ("WRPs", 20, 4, _U, _L, 0),
        ("BRPs", 12, 4, _U, _L, 0),
        # host FTR_EXACT; kvm_arm64_ftr_safe_value() overrides it to LOWER_SAFE. Signed
        # before James Clark's fix (Fixes: c118cead07a7); 0xF (IMP_DEF) is now the highest
        ("PMUVer", 8, 4, _U, _L, 0),
        # host FTR_EXACT safe 6; kvm_arm64_ftr_safe_value() overrides it to LOWER_SAFE
        ("DebugVer", 0, 4, _U, _L, 6),
    )),
    ("ID_AA64ISAR0_EL1", (
        ("RNDR", 60, 4, _U, _L, 0),
        ("TLB", 56, 4, _U, _L, 0),
        ("TS", 52, 4, _U, _L, 0),
        ("FHM", 48, 4, _U, _L, 0),
        ("DP", 44, 4, _U, _L, 0),
        ("SM4", 40, 4, _U, _L, 0),
        ("SM3", 36, 4, _U, _L, 0),
        ("SHA3", 32, 4, _U, _L, 0),
        ("RDM", 28, 4, _U, _L, 0),
        ("ATOMIC", 20, 4, _U, _L, 0),
        ("CRC32", 16, 4, _U, _L, 0),
        ("SHA2", 12, 4, _U, _L, 0),
        ("SHA1", 8, 4, _U, _L, 0),
        ("AES", 4, 4, _U, _L, 0),
    )),
    ("ID_AA64ISAR1_EL1", (
        ("LS64", 60, 4, _U, _L, 0),
        ("XS", 56, 4, _U, _L, 0),
        ("I8MM", 52, 4, _U, _L, 0),
        ("DGH", 48, 4, _U, _L, 0),
        ("BF16", 44, 4, _U, _L, 0),
        ("SPECRES", 40, 4, _U, _L, 0),
        ("SB", 36, 4, _U, _L, 0),
        ("FRINTTS", 32, 4, _U, _L, 0),
        ("GPI", 28, 4, _U, _L, 0),
        ("GPA", 24, 4, _U, _L, 0),
        ("LRCPC", 20, 4, _U, _L, 0),
        ("FCMA", 16, 4, _U, _L, 0),
        ("JSCVT", 12, 4, _U, _L, 0),
        ("API", 8, 4, _U, _X, 0),   # levels change the PAC computed: mismatch means no PAuth
        ("APA", 4, 4, _U, _X, 0),   # as API
        ("DPB", 0, 4, _U, _L, 0),
    )),
    ("ID_AA64ISAR2_EL1", (
        ("ATS1A", 60, 4, _U, _L, 0),
        ("LUT", 56, 4, _U, _L, 0),
        ("CSSC", 52, 4, _U, _L, 0),
        ("RPRFM", 48, 4, _U, _L, 0),
        ("CLRBHB", 28, 4, _U, _L, 0),
        ("BC", 20, 4, _U, _L, 0),
        ("MOPS", 16, 4, _U, _L, 0),
        ("APA3", 12, 4, _U, _X, 0),  # as ISAR1.APA
        ("GPA3", 8, 4, _U, _L, 0),   # unlike APA3, LOWER_SAFE
        ("RPRES", 4, 4, _U, _L, 0),
        ("WFxT", 0, 4, _U, _L, 0),
    )),
    ("ID_AA64ISAR3_EL1", (
        ("FPRCVT", 28, 4, _U, _L, 0),
        ("LSUI", 24, 4, _U, _L, 0),
        ("LSFE", 16, 4, _U, _L, 0),
        ("FAMINMAX", 4, 4, _U, _L, 0),
    )),
    ("ID_AA64MMFR0_EL1", (
        ("ECV", 60, 4, _U, _L, 0),
        ("FGT", 56, 4, _U, _L, 0),
        ("EXS", 44, 4, _U, _L, 0),
        # stage-2 granule support: 0 = "as stage 1", 1 = NI, 2 = IMP, so not ordered;
        # a mismatch falls back to 1 (NI)
        ("TGRAN4_2", 40, 4, _U, _X, 1),
        ("TGRAN64_2", 36, 4, _U, _X, 1),
        ("TGRAN16_2", 32, 4, _U, _X, 1),
        ("TGRAN4", 28, 4, _S, _L, 0xF),    # 0 = IMP, 0xF = NI
        ("TGRAN64", 24, 4, _S, _L, 0xF),   # 0 = IMP, 0xF = NI
        ("TGRAN16", 20, 4, _U, _L, 0),     # unlike its siblings, unsigned: 0 = NI
        ("BIGENDEL0", 16, 4, _U, _L, 0),
        ("SNSMEM", 12, 4, _U, _L, 0),
        ("BIGEND", 8, 4, _U, _L, 0),
        ("ASIDBITS", 4, 4, _U, _L, 0),
        ("PARANGE", 0, 4, _U, _L, 0),
    )),
    ("ID_AA64MMFR1_EL1", (  # CMOW[59:56] and nTLBPA[51:48] are absent from the host table
        ("ECBHB", 60, 4, _U, _L, 0),
        ("TIDCP1", 52, 4, _U, _L, 0),
        ("AFP", 44, 4, _U, _L, 0),
        ("HCX", 40, 4, _U, _L, 0),
        ("ETS", 36, 4, _U, _L, 0),
        ("TWED", 32, 4, _U, _L, 0),
        ("XNX", 28, 4, _U, _L, 0),
        ("SpecSEI", 24, 4, _U, _H, 0),  # as ID_MMFR4_EL1.SpecSEI
        ("PAN", 20, 4, _U, _L, 0),
        ("LO", 16, 4, _U, _L, 0),
        ("HPDS", 12, 4, _U, _L, 0),
        ("VH", 8, 4, _U, _L, 0),
        ("VMIDBits", 4, 4, _U, _L, 0),
        ("HAFDBS", 0, 4, _U, _L, 0),
    )),
    ("ID_AA64MMFR2_EL1", (
        ("E0PD", 60, 4, _U, _L, 0),
        ("EVT", 56, 4, _U, _L, 0),
        ("BBM", 52, 4, _U, _L, 0),
        ("TTL", 48, 4, _U, _L, 0),
        ("FWB", 40, 4, _U, _L, 0),
        ("IDS", 36, 4, _U, _L, 0),
        ("AT", 32, 4, _U, _L, 0),
        ("ST", 28, 4, _U, _L, 0),
        ("NV", 24, 4, _U, _L, 0),
        ("CCIDX", 20, 4, _U, _L, 0),
        ("VARange", 16, 4, _U, _L, 0),
        ("IESB", 12, 4, _U, _L, 0),
        ("LSM", 8, 4, _U, _L, 0),
        ("UAO", 4, 4, _U, _L, 0),
        ("CnP", 0, 4, _U, _L, 0),
    )),
    ("ID_AA64MMFR3_EL1", (  # only four of the architected fields are in the host table
        ("S1POE", 16, 4, _U, _L, 0),
        ("S1PIE", 8, 4, _U, _L, 0),
        ("SCTLRX", 4, 4, _U, _L, 0),
        ("TCRX", 0, 4, _U, _L, 0),
    )),
    ("ID_AA64MMFR4_EL1", (
        ("E2H0", 24, 4, _S, _L, 0),     # 0 = IMP, 0xE = NI_NV1, 0xF = NI: negatives are "less"
        ("NV_frac", 20, 4, _U, _L, 0),
    )),
    ("CTR_EL0", (   # TminLine[37:32] is absent from the host table
        ("RES1", 31, 1, _U, _X, 1),     # unnamed RES1 bit; cpufeature.c tracks it as a field
        ("DIC", 29, 1, _U, _L, 1),
        ("IDC", 28, 1, _U, _L, 1),
        ("CWG", 24, 4, _U, _HZ, 0),     # 0 = "not reported", which is the most cautious value
        ("ERG", 20, 4, _U, _HZ, 0),     # as CWG
        ("DminLine", 16, 4, _U, _L, 1),
        ("L1Ip", 14, 2, _U, _X, 2),     # differing policies degrade to VIPT (0b10)
        ("IminLine", 0, 4, _U, _L, 0),
    )),
    ("DCZID_EL0", (
        ("DZP", 4, 1, _U, _X, 1),       # 1 = DC ZVA prohibited
        ("BS", 0, 4, _U, _L, 0),
    )),
)

#: register name -> its rows; the IdField objects are made per register when first asked
#: for (:func:`fields_of`): a hook run looks at a few registers, not all ~400 fields
_ROWS: dict[str, tuple[_Row, ...]] = dict(_TABLE)
_FIELDS: dict[str, tuple[IdField, ...]] = {}


def fields_of(name: str) -> tuple[IdField, ...]:
    """The known fields of register ``name`` in table order (none for a register whose
    host table is missing or empty)."""
    got = _FIELDS.get(name)
    if got is None:
        got = _FIELDS[name] = tuple(IdField(name, *row) for row in _ROWS.get(name, ()))
    return got


def has_fields(name: str) -> bool:
    return name in _ROWS


def __getattr__(attr: str) -> object:
    """The whole tables, made on first use (the CLI, the tests, a hook run that names an
    ID register) and kept: ID_REGS, REG_BY_ID, REG_BY_NAME, ID_FIELDS (every field, table
    order) and FIELDS_BY_REG (name -> fields)."""
    if attr == "ID_REGS":
        value: object = tuple(IdReg(*row) for row in _ID_REG_ROWS)
    elif attr == "REG_BY_ID":
        value = {r.id: r for r in __getattr__("ID_REGS")}  # type: ignore[attr-defined]
    elif attr == "REG_BY_NAME":
        value = {r.name: r for r in __getattr__("ID_REGS")}  # type: ignore[attr-defined]
    elif attr == "ID_FIELDS":
        value = tuple(f for name in _ROWS for f in fields_of(name))
    elif attr == "FIELDS_BY_REG":
        value = {name: fields_of(name) for name in _ROWS}
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
    globals()[attr] = value
    return value


if TYPE_CHECKING:
    ID_REGS: tuple[IdReg, ...]
    REG_BY_ID: dict[int, IdReg]
    REG_BY_NAME: dict[str, IdReg]
    ID_FIELDS: tuple[IdField, ...]
    FIELDS_BY_REG: dict[str, tuple[IdField, ...]]


def _to_signed(field: IdField, value: int) -> int:
    """A field value (raw encoding, or already sign-extended) as Linux compares it."""
    limit = 1 << field.width
    low = -(limit >> 1) if field.signed else 0
    if not low <= value < limit:
        raise ValueError(f"{field.reg}.{field.name}: {value} does not fit {field.width} bits")
    value &= limit - 1
    if field.signed and value & (limit >> 1):
        value -= limit
    return value


def field_value(field: IdField, reg_value: int) -> int:
    """The field of a register value; sign-extended from its width when ``field.signed``."""
    return _to_signed(field, field.raw(reg_value))


def safe_value(field: IdField, a: int, b: int) -> int:
    """Linux ``arm64_ftr_safe_value()`` for two values of one field.

    ``a`` and ``b`` are raw encodings (or, for signed fields, sign-extended values as
    :func:`field_value` returns them). The result is the raw encoding of the value both
    sides can honour: EXACT gives ``safe_val`` unless the two are equal.
    """
    x, y = _to_signed(field, a), _to_signed(field, b)
    if x == y:
        result = x
    elif field.safety == EXACT:
        result = field.safe_val
    elif field.safety == LOWER_SAFE:
        result = min(x, y)
    elif field.safety == HIGHER_SAFE:
        result = max(x, y)
    else:  # HIGHER_OR_ZERO_SAFE
        result = 0 if x == 0 or y == 0 else max(x, y)
    return result & ((1 << field.width) - 1)


def is_safe(field: IdField, value: int, limit: int) -> bool:
    """Whether KVM takes ``value`` for a field whose host limit is ``limit`` (both raw):
    the kernel's ``arm64_check_features`` accepts a value only if it is the safe one."""
    return safe_value(field, value, limit) == value


class FieldDiff:
    """How one field of a VM's value differs from a host's (both raw encodings).

    :param writable: the field lies wholly inside the host's writable mask
    :param safe: KVM takes the VM's value against the host's (:func:`is_safe`)
    """

    __slots__ = ("field", "vm", "host", "writable", "safe")

    def __init__(self, field: IdField, vm: int, host: int, writable: bool, safe: bool) -> None:
        self.field, self.vm, self.host, self.writable, self.safe = field, vm, host, writable, safe


def field_diffs(name: str, vm_value: int, host_value: int, mask: int) -> tuple[list[FieldDiff], int]:
    """Every known field of register ``name`` where the VM's value differs from the
    host's, and the differing bits outside every known field. This is the one place an
    ID register value is taken apart into fields (verdict, pin checks, baseline, plans)."""
    diffs = []
    covered = 0
    for f in fields_of(name):
        covered |= f.mask
        s, d = f.raw(vm_value), f.raw(host_value)
        if s == d:
            continue
        diffs.append(FieldDiff(f, s, d, f.mask & mask == f.mask, is_safe(f, s, d)))
    return diffs, (vm_value ^ host_value) & ~covered


def fold(name: str, values: list[int]) -> tuple[int, bool]:
    """Per field the kernel's safe value over all ``values``; bits outside known fields
    are kept from the first. Returns (value, whether those other bits agree)."""
    fields = fields_of(name)
    covered = 0
    out = 0
    for f in fields:
        covered |= f.mask
        acc = f.raw(values[0])
        for v in values[1:]:
            acc = safe_value(f, acc, f.raw(v))
        out |= acc << f.shift
    rest = {v & ~covered for v in values}
    return out | (values[0] & ~covered), len(rest) <= 1


def fold_fixed(name: str, values: list[int], masks: list[int | None], hosts: list[str]) -> tuple[int, list[str]]:
    """:func:`fold` where some hosts cannot change some fields: a field outside a host's
    writable mask (every field before Linux 6.7: ``masks`` None) can only be that host's
    own value, so the contract takes it, and the hosts that fix one field must agree. The
    safe value is taken only for fields every host can change. Returns the value and the
    conflicts: fixed values that differ, and hosts that cannot take the fixed value.
    ``hosts``: each host's name in messages, in the order of ``values``."""
    value, agree = fold(name, values)
    conflicts = [] if agree else [f"{name}: bits outside known fields differ between hosts"]
    for f in fields_of(name):
        fixed = [i for i, m in enumerate(masks) if m is None or f.mask & m != f.mask]
        if not fixed:
            continue
        own = sorted({f.raw(values[i]) for i in fixed})
        if len(own) > 1:
            conflicts.append(f"{name}.{f.name}: " + "; ".join(
                f"{hosts[i]} " + ("has no writable ID registers (before Linux 6.7)" if masks[i] is None
                                  else "has the field outside its writable mask")
                + f", so it gives only its own {f.raw(values[i]):#x}" for i in fixed) + ": no value every host takes")
            continue
        want = own[0]
        value = (value & ~f.mask) | (want << f.shift)
        for i, v in enumerate(values):
            if i in fixed or f.raw(v) == want or is_safe(f, want, f.raw(v)):
                continue
            conflicts.append(f"{name}.{f.name}: {', '.join(hosts[j] for j in fixed)} can give only {want:#x}; "
                             f"{hosts[i]} has {f.raw(v):#x} and its KVM accepts only a {f.safety_name} value")
    return value, conflicts
