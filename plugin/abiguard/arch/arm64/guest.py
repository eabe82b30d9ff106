"""The guest's view: what a VM reads on this host, found by running one.

KVM_GET_ONE_REG says what KVM holds for a register; a guest may read something else (Linux
before 6.7 does not trap CTR_EL0, so the guest reads the CPU's own value while ONE_REG
gives the sanitised one; DCZID_EL0 is not in ONE_REG at all; CLIDR/CCSIDR are the
hardware's where KVM does not set TID2). So for each vCPU configuration the probe runs a
tiny guest on the same kind of VM QEMU makes (the configuration's KVM_ARM_VCPU_INIT
features, an in-kernel GICv3 and, with PMU_V3, its PMU on PPI 23 as QEMU's virt machine
wires it): one page of A64 code at EL1h, MMU off, interrupts masked, that

- reads with MRS every register of the ID space a guest can read (:data:`REGISTERS`) and
  every CCSIDR through CSSELR_EL1 (:data:`CSSELR`),
- asks the firmware through HVC what a guest asks (:data:`CALLS`: arch/arm64/kvm/psci.c,
  hypercalls.c, trng.c, pvtime.c),

and stores each answer to an unmapped IPA, one 8-byte slot per answer: every store is an
MMIO exit whose address names the slot. A read that traps is reported by the exception
vector (ESR_EL1 to the fault slot; the vector steps over the MRS), so the next slot written
is marked with it: EC 0x0 (UNDEFINED) or 0x18 (a trapped MSR/MRS, FEAT_IDST).

The view (a configuration's ``guest_view`` in the profile)::

    registers   ONE_REG id (hex) -> the value the guest read; CCSIDRs under their
                DEMUX_CCSIDR ids, only for caches CLIDR_EL1 describes
    firmware    call name (:data:`CALLS`) -> what the guest got in x0 (64 bits)
    faults      register id or call name -> ESR_EL1 (hex) of the read that trapped
    exits       how many exits the run took
"""
from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

    from ...uapi.kvm import KvmSystem, KvmVcpu, KvmVm

Enc = tuple[int, int, int, int, int]


def _sysreg_id(enc: Enc) -> int:
    op0, op1, crn, crm, op2 = enc
    return 0x6030000000130000 | op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2


#: what the guest reads with MRS: the feature ID range (op0=3, op1=0, CRn=0, CRm=1..7:
#: unallocated encodings there are RAZ or, with FEAT_IDST, trap), the CPU's identity, the
#: cache description and DC ZVA's block size
REGISTERS: tuple[Enc, ...] = (
    (3, 0, 0, 0, 0),     # MIDR_EL1
    (3, 0, 0, 0, 5),     # MPIDR_EL1
    (3, 0, 0, 0, 6),     # REVIDR_EL1
    (3, 1, 0, 0, 7),     # AIDR_EL1
    (3, 1, 0, 0, 1),     # CLIDR_EL1
    (3, 3, 0, 0, 1),     # CTR_EL0
    (3, 3, 0, 0, 7),     # DCZID_EL0
) + tuple((3, 0, 0, crm, op2) for crm in range(1, 8) for op2 in range(8))
#: the register ids the guest reads with MRS (CCSIDRs aside)
READ_IDS = frozenset(_sysreg_id(enc) for enc in REGISTERS)
CSSELR_EL1: Enc = (3, 2, 0, 0, 0)
CCSIDR_EL1: Enc = (3, 1, 0, 0, 0)
#: CSSELR_EL1 values read: (level - 1) << 1 | InD, levels 1..7 (only those CLIDR_EL1
#: describes are kept: any other reads UNKNOWN)
CSSELR: tuple[int, ...] = tuple(range(14))
#: the DEMUX_CCSIDR ONE_REG id of a CSSELR value (KVM_REG_ARM_DEMUX_ID_CCSIDR, u32)
DEMUX_CCSIDR = 0x6020000000110000

NOT_SUPPORTED = 0xFFFFFFFFFFFFFFFF   # SMCCC_RET_NOT_SUPPORTED (-1) in x0

#: (name, function id, x1, how many of x0.. the answer is): every query a guest can make of
#: KVM's firmware without changing anything -- PSCI_FEATURES of each PSCI function
#: (include/uapi/linux/psci.h), SMCCC_ARCH_FEATURES of each feature KVM answers, and the
#: services of the hypercall bitmaps (STD: TRNG; STD_HYP: PV time; VENDOR_HYP: KVM's
#: features, PTP, errata discovery)
_PSCI_FNS: tuple[tuple[str, int], ...] = (
    ("CPU_SUSPEND", 0x84000001), ("CPU_SUSPEND_64", 0xC4000001), ("CPU_OFF", 0x84000002),
    ("CPU_ON", 0x84000003), ("CPU_ON_64", 0xC4000003), ("AFFINITY_INFO", 0x84000004),
    ("AFFINITY_INFO_64", 0xC4000004), ("MIGRATE", 0x84000005), ("MIGRATE_64", 0xC4000005),
    ("MIGRATE_INFO_TYPE", 0x84000006), ("MIGRATE_INFO_UP_CPU_64", 0xC4000007),
    ("SYSTEM_OFF", 0x84000008), ("SYSTEM_RESET", 0x84000009), ("PSCI_FEATURES", 0x8400000A),
    ("CPU_FREEZE", 0x8400000B), ("CPU_DEFAULT_SUSPEND_64", 0xC400000C), ("NODE_HW_STATE_64", 0xC400000D),
    ("SYSTEM_SUSPEND", 0x8400000E), ("SYSTEM_SUSPEND_64", 0xC400000E), ("SET_SUSPEND_MODE", 0x8400000F),
    ("STAT_RESIDENCY_64", 0xC4000010), ("STAT_COUNT_64", 0xC4000011), ("SYSTEM_RESET2", 0x84000012),
    ("SYSTEM_RESET2_64", 0xC4000012), ("MEM_PROTECT", 0x84000013), ("MEM_PROTECT_CHECK_RANGE_64", 0xC4000014),
    ("SYSTEM_OFF2", 0x84000015), ("SYSTEM_OFF2_64", 0xC4000015), ("SMCCC_VERSION", 0x80000000),
)
_ARCH_FEATURES: tuple[tuple[str, int], ...] = (
    ("SMCCC_ARCH_FEATURES", 0x80000001), ("SMCCC_ARCH_SOC_ID", 0x80000002),
    ("ARCH_WORKAROUND_1", 0x80008000), ("ARCH_WORKAROUND_2", 0x80007FFF), ("ARCH_WORKAROUND_3", 0x80003FFF),
    ("HV_PV_TIME_FEATURES", 0xC5000020), ("TRNG_VERSION", 0x84000050),
)
CALLS: tuple[tuple[str, int, int, int], ...] = (
    ("PSCI_VERSION", 0x84000000, 0, 1),
    *((f"PSCI_FEATURES({n})", 0x8400000A, fid, 1) for n, fid in _PSCI_FNS),
    ("SMCCC_VERSION", 0x80000000, 0, 1),
    *((f"SMCCC_ARCH_FEATURES({n})", 0x80000001, fid, 1) for n, fid in _ARCH_FEATURES),
    ("HV_PV_TIME_FEATURES(HV_PV_TIME_FEATURES)", 0xC5000020, 0xC5000020, 1),
    ("HV_PV_TIME_FEATURES(HV_PV_TIME_ST)", 0xC5000020, 0xC5000021, 1),
    ("TRNG_VERSION", 0x84000050, 0, 1),
    ("TRNG_FEATURES(TRNG_VERSION)", 0x84000051, 0x84000050, 1),
    ("TRNG_FEATURES(TRNG_FEATURES)", 0x84000051, 0x84000051, 1),
    ("TRNG_FEATURES(TRNG_GET_UUID)", 0x84000051, 0x84000052, 1),
    ("TRNG_FEATURES(TRNG_RND32)", 0x84000051, 0x84000053, 1),
    ("TRNG_FEATURES(TRNG_RND64)", 0x84000051, 0xC4000053, 1),
    ("TRNG_GET_UUID", 0x84000052, 0, 4),
    ("VENDOR_HYP_CALL_UID", 0x8600FF01, 0, 4),
    ("VENDOR_HYP_KVM_FEATURES", 0x86000000, 0, 4),
    ("VENDOR_HYP_KVM_PTP", 0x86000001, 0, 1),
    ("VENDOR_HYP_KVM_DISCOVER_IMPL_VER", 0xC6000040, 0, 3),
    ("VENDOR_HYP_KVM_DISCOVER_IMPL_CPUS(0)", 0xC6000041, 0, 4),
)
#: calls whose answer is a time stamp or a random number: the view keeps only whether
#: they answered (0) or not (NOT_SUPPORTED)
ANSWERED_ONLY = frozenset({"VENDOR_HYP_KVM_PTP"})


def call_keys() -> list[str]:
    """Every key of a view's ``firmware``: a call's name, and ``name.xN`` for x1.. of a
    call answered in several registers."""
    return [name if i == 0 else f"{name}.x{i}" for name, _fid, _arg, n in CALLS for i in range(n)]


CALL_KEYS = frozenset(call_keys())

# where things are in the guest's physical address space (QEMU virt's: RAM at 1 GiB; the
# GICv3 distributor and redistributors where QEMU puts them; the answer slots in a hole)
CODE_IPA = 0x40000000
CODE_SIZE = 0x10000            # 64 KiB: a whole page on every arm64 page size
GICD_IPA = 0x08000000
GICR_IPA = 0x080A0000
PMU_PPI = 23                   # QEMU virt: VIRTUAL_PMU_IRQ 7 + 16
PVTIME_IPA = CODE_IPA + 0xF000  # the stolen-time record (64 bytes), in the guest's page
SLOTS_IPA = 0x10000000
FAULT_SLOT = 0x7FF0            # the vector: ESR of a read that trapped, then it resumes
ABORT_SLOT = 0x7FF8            # any other exception: ESR, then the guest stops
DONE_SLOT = 0x7FE8
ENTRY = 0x800                  # the code after the 2 KiB vector table (VBAR_EL1 = CODE_IPA)
PSTATE_EL1H_MASKED = 0x3C5     # D, A, I, F masked; EL1 with SP_EL1
VBAR_EL1 = _sysreg_id((3, 0, 12, 0, 0))
MAX_EXITS = 1024
SECONDS = 10.0                 # ~1 s under TCG, milliseconds natively
BASE = 20                      # x20: SLOTS_IPA


class Item:
    """One answer slot run: what it is (a register id or a call key) and its slot."""

    __slots__ = ("key", "slot")

    def __init__(self, key: int | str, slot: int) -> None:
        self.key, self.slot = key, slot


def program() -> tuple[bytes, list[Item]]:
    """The guest's page (vector table, then the code at :data:`ENTRY`) and what each slot
    it writes holds."""
    from . import a64  # not on the hook's path, which reads only this module's tables

    items: list[Item] = []
    code: list[int] = a64.mov_imm(BASE, SLOTS_IPA)

    def store(rt: int, key: int | str) -> None:
        items.append(Item(key, len(items)))
        code.append(a64.str_x(rt, BASE, 8 * (len(items) - 1)))

    for enc in REGISTERS:
        code.append(a64.mrs(0, enc))
        store(0, _sysreg_id(enc))
    for sel in CSSELR:
        code += [*a64.mov_imm(0, sel), a64.msr(CSSELR_EL1, 0), a64.ISB, a64.mrs(0, CCSIDR_EL1)]
        store(0, DEMUX_CCSIDR | sel)
    for name, fid, arg, n in CALLS:
        code += [*a64.mov_imm(0, fid), *a64.mov_imm(1, arg), a64.movz(2, 0), a64.movz(3, 0), a64.HVC0]
        for i in range(n):
            store(i, name if i == 0 else f"{name}.x{i}")
    code += [a64.str_x(31, BASE, DONE_SLOT), a64.branch(0)]         # xzr, then stay
    # vectors: the synchronous one of the current EL with SP_ELx (+0x200) reports and steps
    # over the instruction; every other one reports and stops
    report_skip = [a64.mrs(9, (3, 0, 5, 2, 0)), a64.str_x(9, BASE, FAULT_SLOT),       # ESR_EL1
                   a64.mrs(10, (3, 0, 4, 0, 1)), a64.add_imm(10, 10, 4),               # ELR_EL1 += 4
                   a64.msr((3, 0, 4, 0, 1), 10), a64.ERET]
    report_stop = [a64.mrs(9, (3, 0, 5, 2, 0)), a64.str_x(9, BASE, ABORT_SLOT), a64.branch(0)]
    page = bytearray(ENTRY + 4 * len(code))
    for vector in range(16):
        words = report_skip if vector == 4 else report_stop
        page[vector * 0x80:vector * 0x80 + 4 * len(words)] = b"".join(w.to_bytes(4, "little") for w in words)
    page[ENTRY:] = b"".join(w.to_bytes(4, "little") for w in code)
    if len(page) > PVTIME_IPA - CODE_IPA or len(items) * 8 >= DONE_SLOT:
        raise ValueError("the guest program outgrew its page")
    return bytes(page), items


def _vm_like_qemus(vm: KvmVm, vcpu: KvmVcpu, features: list[str]) -> None:
    """The in-kernel GICv3 QEMU's virt machine gives a KVM guest (ID_AA64PFR0.GIC depends on
    it), the PMU on its PPI, set up as QEMU does after the vCPUs exist, and the stolen-time
    record QEMU gives every vCPU where KVM has KVM_CAP_STEAL_TIME (kvm-steal-time=auto):
    HV_PV_TIME_FEATURES answers SUCCESS only once it is set."""
    from ...uapi import kvm

    gic = vm.create_device(kvm.KVM_DEV_TYPE_ARM_VGIC_V3)
    try:
        kvm.set_device_attr(gic, kvm.KVM_DEV_ARM_VGIC_GRP_ADDR, kvm.KVM_VGIC_V3_ADDR_TYPE_DIST, GICD_IPA)
        kvm.set_device_attr(gic, kvm.KVM_DEV_ARM_VGIC_GRP_ADDR, kvm.KVM_VGIC_V3_ADDR_TYPE_REDIST, GICR_IPA)
        kvm.set_device_attr(gic, kvm.KVM_DEV_ARM_VGIC_GRP_CTRL, kvm.KVM_DEV_ARM_VGIC_CTRL_INIT)
    finally:
        gic.close()           # the VM keeps its vGIC
    if "PMU_V3" in features:
        kvm.set_device_attr(vcpu, kvm.KVM_ARM_VCPU_PMU_V3_CTRL, kvm.KVM_ARM_VCPU_PMU_V3_IRQ, PMU_PPI, "<i")
        kvm.set_device_attr(vcpu, kvm.KVM_ARM_VCPU_PMU_V3_CTRL, kvm.KVM_ARM_VCPU_PMU_V3_INIT)
    if vm.check_extension(kvm.CAPS["KVM_CAP_STEAL_TIME"]) > 0:
        kvm.set_device_attr(vcpu, kvm.KVM_ARM_VCPU_PVTIME_CTRL, kvm.KVM_ARM_VCPU_PVTIME_IPA, PVTIME_IPA)


def run(system: KvmSystem, vm: KvmVm, vcpu: KvmVcpu, features: list[str]) -> dict[str, Any]:
    """Run the guest on this initialised vCPU (its registers already read: a run freezes
    the ID registers) and return its view; OSError (an ioctl's errno) or
    :class:`~abiguard.uapi.kvm.GuestStop` (why it stopped) when it could not finish."""
    from ...uapi import kvm

    page, items = program()
    by_slot = {it.slot * 8: it for it in items}
    mem = kvm.GuestMemory(CODE_SIZE)
    try:
        mem.map[:len(page)] = page
        vm.set_user_memory(0, CODE_IPA, CODE_SIZE, mem.address)
        _vm_like_qemus(vm, vcpu, features)      # the stolen-time record must lie in a memslot
        vcpu.set_one_reg(kvm.ARM_CORE_PC, CODE_IPA + ENTRY)
        vcpu.set_one_reg(kvm.ARM_CORE_PSTATE, PSTATE_EL1H_MASKED)
        vcpu.set_one_reg(VBAR_EL1, CODE_IPA)
        answers: dict[int | str, int] = {}
        faults: dict[int | str, int] = {}
        pending: list[int] = []

        def on_store(phys: int, value: int) -> bool:
            off = phys - SLOTS_IPA
            if off == DONE_SLOT:
                return True
            if off == FAULT_SLOT:
                pending.append(value)
                return False
            if off == ABORT_SLOT:
                raise kvm.GuestStop(f"unexpected exception, ESR_EL1 {value:#x}")
            item = by_slot.get(off)
            if item is None:
                raise kvm.GuestStop(f"a store to {phys:#x}, which is no answer slot")
            if pending:
                faults[item.key] = pending.pop()
            else:
                answers[item.key] = value
            return False

        exits = kvm.run_guest(vcpu, system, on_store, MAX_EXITS, SECONDS)
    finally:
        mem.close()
    return view_of(answers, faults, exits)


def view_of(answers: dict[int | str, int], faults: dict[int | str, int], exits: int) -> dict[str, Any]:
    """The profile's form of a run's answers: registers (CCSIDRs only for caches CLIDR_EL1
    describes), firmware answers, the reads that trapped."""
    from . import regs

    clidr = answers.get(regs.CLIDR_EL1_ID)
    registers: dict[str, str] = {}
    for key, value in answers.items():
        if isinstance(key, int):
            if key & ~0xFF == DEMUX_CCSIDR and (clidr is None or not regs.ccsidr_visible(key, clidr)):
                continue
            registers[hex(key)] = hex(value)
    firmware = {k: hex(0 if k in ANSWERED_ONLY and v & 0xFFFFFFFF != 0xFFFFFFFF else v)
                for k, v in answers.items() if isinstance(k, str)}
    return {"registers": dict(sorted(registers.items())), "firmware": firmware,
            "faults": {(hex(k) if isinstance(k, int) else k): hex(v) for k, v in faults.items()
                       if not (isinstance(k, int) and k & ~0xFF == DEMUX_CCSIDR
                               and (clidr is None or not regs.ccsidr_visible(k, clidr)))},
            "exits": exits}


def esr_class(esr: int) -> str:
    """ESR_ELx.EC of a trapped read, as a reader says it."""
    ec = esr >> 26 & 0x3F
    return {0x0: "UNDEFINED (EC 0x0)", 0x18: "trapped MSR/MRS (EC 0x18, FEAT_IDST)"}.get(ec, f"EC {ec:#x}")
