"""The KVM ioctls abiguard uses, written against the Linux uapi headers.

No maintained Python binding exists for KVM, so every request number, struct layout
and constant lives here, once. Sources: ``include/uapi/linux/kvm.h``,
``arch/arm64/include/uapi/asm/kvm.h``, ``arch/x86/include/uapi/asm/kvm.h`` and
``include/uapi/asm-generic/ioctl.h`` (request encoding). Cap numbers 0-223 were checked
against Debian 12's linux-libc-dev (6.1) header, 224-235 against the upstream header,
239-245 against the 7.2 uapi header.

Standard library only: this module runs inside the arm64 lab's initramfs.
Every failing ioctl surfaces as :class:`OSError` with the kernel's errno; callers
record it (:class:`Missing`, the profile's ``unavailable``), they never guess a value.
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Callable
from typing import Any, TypeVar

# the arm64 ONE_REG id layout and vCPU feature bits: pure uapi arithmetic, kept where the
# hook can read it without this module's fcntl/struct
from .arm64 import (
    ARM_COPROC as ARM_COPROC,
    ARM_COPROC_MASK as ARM_COPROC_MASK,
    ARM_COPROC_SHIFT as ARM_COPROC_SHIFT,
    ARM_FEATURE_CAP as ARM_FEATURE_CAP,
    ARM_FEATURE_ID_RANGE_SIZE as ARM_FEATURE_ID_RANGE_SIZE,
    ARM_FINALIZE_SVE as ARM_FINALIZE_SVE,
    ARM_SVE_VLS as ARM_SVE_VLS,
    ARM_VCPU_FEATURES as ARM_VCPU_FEATURES,
    REG_ARCH_MASK as REG_ARCH_MASK,
    REG_ARM64 as REG_ARM64,
    REG_SIZE_MASK as REG_SIZE_MASK,
    REG_SIZE_SHIFT as REG_SIZE_SHIFT,
    REG_SIZE_U64 as REG_SIZE_U64,
    arm64_coproc as arm64_coproc,
    arm64_feature_id_range_index as arm64_feature_id_range_index,
    arm64_sysreg_encoding as arm64_sysreg_encoding,
    arm64_sysreg_id as arm64_sysreg_id,
    reg_size as reg_size,
)

T = TypeVar("T")

KVMIO = 0xAE
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return direction << 30 | size << 16 | KVMIO << 8 | nr


def _io(nr: int) -> int:
    return _ioc(0, nr, 0)


def _iow(nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, nr, size)


def _ior(nr: int, size: int) -> int:
    return _ioc(_IOC_READ, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


# ioctl requests (name -> number); sizes are the uapi struct sizes
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, 4)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, 8)
KVM_GET_MSR_FEATURE_INDEX_LIST = _iowr(0x0A, 4)
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, 32)   # struct kvm_userspace_memory_region
KVM_RUN = _io(0x80)
KVM_GET_MSRS = _iowr(0x88, 8)
KVM_SET_MSRS = _iow(0x89, 8)
KVM_SET_CPUID2 = _iow(0x90, 8)
KVM_ENABLE_CAP = _iow(0xA3, 104)
KVM_GET_ONE_REG = _iow(0xAB, 16)
KVM_SET_ONE_REG = _iow(0xAC, 16)
KVM_ARM_VCPU_INIT = _iow(0xAE, 32)
KVM_ARM_PREFERRED_TARGET = _ior(0xAF, 32)
KVM_GET_REG_LIST = _iowr(0xB0, 8)
KVM_ARM_GET_REG_WRITABLE_MASKS = _ior(0xB6, 64)
KVM_ARM_VCPU_FINALIZE = _iow(0xC2, 4)
KVM_CREATE_DEVICE = _iowr(0xE0, 12)           # struct kvm_create_device {type, fd, flags}
KVM_SET_DEVICE_ATTR = _iow(0xE1, 24)          # struct kvm_device_attr {flags, group, attr, addr}

#: struct kvm_run: exit_reason at offset 8, the exit's union at 32
#: (include/uapi/linux/kvm.h); the reasons a guest run can end with
KVM_EXIT_NAMES: dict[int, str] = {
    0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 3: "HYPERCALL", 4: "DEBUG", 5: "HLT", 6: "MMIO",
    8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR", 17: "INTERNAL_ERROR", 24: "SYSTEM_EVENT",
    28: "ARM_NISV", 29: "X86_RDMSR", 36: "MEMORY_FAULT", 40: "ARM_SEA",
}
KVM_EXIT_MMIO = 6
#: arm64 device and attribute numbers (include/uapi/linux/kvm.h enum kvm_device_type,
#: arch/arm64/include/uapi/asm/kvm.h)
KVM_DEV_TYPE_ARM_VGIC_V3 = 7
KVM_DEV_ARM_VGIC_GRP_ADDR = 0
KVM_VGIC_V3_ADDR_TYPE_DIST = 2
KVM_VGIC_V3_ADDR_TYPE_REDIST = 3
KVM_DEV_ARM_VGIC_GRP_CTRL = 4
KVM_DEV_ARM_VGIC_CTRL_INIT = 0
KVM_ARM_VCPU_PMU_V3_CTRL = 0
KVM_ARM_VCPU_PMU_V3_IRQ = 0
KVM_ARM_VCPU_PMU_V3_INIT = 1
KVM_ARM_VCPU_PVTIME_CTRL = 2
KVM_ARM_VCPU_PVTIME_IPA = 0
#: core register ids: KVM_REG_ARM_CORE_REG(regs.pc / regs.pstate), the offset in u32 words
#: of struct user_pt_regs {u64 regs[31], sp, pc, pstate}
ARM_CORE_PC = REG_ARM64 | REG_SIZE_U64 | 0x0010 << ARM_COPROC_SHIFT | (32 * 8) // 4
ARM_CORE_PSTATE = REG_ARM64 | REG_SIZE_U64 | 0x0010 << ARM_COPROC_SHIFT | (33 * 8) // 4

KVM_API_VERSION = 12

#: KVM_CHECK_EXTENSION numbers (include/uapi/linux/kvm.h). Only capabilities that say
#: something about the guest ABI, migration or what the probe can do are listed.
CAPS: dict[str, int] = {
    "KVM_CAP_IRQCHIP": 0, "KVM_CAP_USER_MEMORY": 3, "KVM_CAP_EXT_CPUID": 7,
    "KVM_CAP_NR_VCPUS": 9, "KVM_CAP_NR_MEMSLOTS": 10, "KVM_CAP_MP_STATE": 14,
    "KVM_CAP_SYNC_MMU": 16, "KVM_CAP_SET_GUEST_DEBUG": 23, "KVM_CAP_IRQ_ROUTING": 25,
    "KVM_CAP_IRQFD": 32, "KVM_CAP_IOEVENTFD": 36, "KVM_CAP_ADJUST_CLOCK": 39,
    "KVM_CAP_VCPU_EVENTS": 41, "KVM_CAP_HYPERV": 44, "KVM_CAP_DEBUGREGS": 50,
    "KVM_CAP_ENABLE_CAP": 54, "KVM_CAP_XSAVE": 55, "KVM_CAP_XCRS": 56, "KVM_CAP_ASYNC_PF": 59,
    "KVM_CAP_TSC_CONTROL": 60, "KVM_CAP_GET_TSC_KHZ": 61, "KVM_CAP_MAX_VCPUS": 66,
    "KVM_CAP_ONE_REG": 70, "KVM_CAP_TSC_DEADLINE_TIMER": 72, "KVM_CAP_KVMCLOCK_CTRL": 76,
    "KVM_CAP_READONLY_MEM": 81, "KVM_CAP_ARM_PSCI": 87, "KVM_CAP_DEVICE_CTRL": 89,
    "KVM_CAP_ARM_EL1_32BIT": 93, "KVM_CAP_EXT_EMUL_CPUID": 95, "KVM_CAP_HYPERV_TIME": 96,
    "KVM_CAP_ENABLE_CAP_VM": 98, "KVM_CAP_VM_ATTRIBUTES": 101, "KVM_CAP_ARM_PSCI_0_2": 102,
    "KVM_CAP_CHECK_EXTENSION_VM": 105, "KVM_CAP_DISABLE_QUIRKS": 116, "KVM_CAP_X86_SMM": 117,
    "KVM_CAP_SPLIT_IRQCHIP": 121, "KVM_CAP_ARM_PMU_V3": 126, "KVM_CAP_VCPU_ATTRIBUTES": 127,
    "KVM_CAP_MAX_VCPU_ID": 128, "KVM_CAP_X2APIC_API": 129, "KVM_CAP_IMMEDIATE_EXIT": 136,
    "KVM_CAP_X86_DISABLE_EXITS": 143, "KVM_CAP_ARM_USER_IRQ": 144,
    "KVM_CAP_GET_MSR_FEATURES": 153, "KVM_CAP_NESTED_STATE": 157,
    "KVM_CAP_ARM_INJECT_SERROR_ESR": 158, "KVM_CAP_MSR_PLATFORM_INFO": 159,
    "KVM_CAP_EXCEPTION_PAYLOAD": 164, "KVM_CAP_ARM_VM_IPA_SIZE": 165,
    "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2": 168, "KVM_CAP_ARM_SVE": 170,
    "KVM_CAP_ARM_PTRAUTH_ADDRESS": 171, "KVM_CAP_ARM_PTRAUTH_GENERIC": 172,
    "KVM_CAP_PMU_EVENT_FILTER": 173, "KVM_CAP_ARM_IRQ_LINE_LAYOUT_2": 174,
    "KVM_CAP_ARM_NISV_TO_USER": 177, "KVM_CAP_ARM_INJECT_EXT_DABT": 178,
    "KVM_CAP_HALT_POLL": 182, "KVM_CAP_ASYNC_PF_INT": 183, "KVM_CAP_SMALLER_MAXPHYADDR": 185,
    "KVM_CAP_STEAL_TIME": 187, "KVM_CAP_X86_USER_SPACE_MSR": 188, "KVM_CAP_X86_MSR_FILTER": 189,
    "KVM_CAP_ENFORCE_PV_FEATURE_CPUID": 190, "KVM_CAP_SYS_HYPERV_CPUID": 191,
    "KVM_CAP_DIRTY_LOG_RING": 192, "KVM_CAP_X86_BUS_LOCK_EXIT": 193,
    "KVM_CAP_SET_GUEST_DEBUG2": 195, "KVM_CAP_PTP_KVM": 198, "KVM_CAP_SREGS2": 200,
    "KVM_CAP_EXIT_HYPERCALL": 201, "KVM_CAP_BINARY_STATS_FD": 203,
    "KVM_CAP_EXIT_ON_EMULATION_FAILURE": 204, "KVM_CAP_ARM_MTE": 205, "KVM_CAP_VM_GPA_BITS": 207,
    "KVM_CAP_XSAVE2": 208, "KVM_CAP_SYS_ATTRIBUTES": 209, "KVM_CAP_PMU_CAPABILITY": 212,
    "KVM_CAP_DISABLE_QUIRKS2": 213, "KVM_CAP_VM_TSC_CONTROL": 214,
    "KVM_CAP_SYSTEM_EVENT_DATA": 215, "KVM_CAP_ARM_SYSTEM_SUSPEND": 216,
    "KVM_CAP_X86_TRIPLE_FAULT_EVENT": 218, "KVM_CAP_X86_NOTIFY_VMEXIT": 219,
    "KVM_CAP_VM_DISABLE_NX_HUGE_PAGES": 220, "KVM_CAP_DIRTY_LOG_RING_ACQ_REL": 223,
    "KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP": 225, "KVM_CAP_PMU_EVENT_MASKED_EVENTS": 226,
    "KVM_CAP_COUNTER_OFFSET": 227, "KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE": 228,
    "KVM_CAP_ARM_SUPPORTED_BLOCK_SIZES": 229, "KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES": 230,
    "KVM_CAP_USER_MEMORY2": 231, "KVM_CAP_MEMORY_FAULT_INFO": 232,
    "KVM_CAP_MEMORY_ATTRIBUTES": 233, "KVM_CAP_GUEST_MEMFD": 234, "KVM_CAP_VM_TYPES": 235,
    "KVM_CAP_ARM_WRITABLE_IMP_ID_REGS": 239, "KVM_CAP_ARM_EL2": 240,
    "KVM_CAP_ARM_EL2_E2H0": 241, "KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED": 243,
    "KVM_CAP_ARM_SEA_TO_USER": 245,
}

class GuestStop(Exception):
    """A guest run stopped for a reason other than an ioctl's errno (its timer, its step
    limit, an exit it did not expect): what is said is the why recorded."""


def errno_name(err: int) -> str:
    return errno.errorcode.get(err, str(err))


def note(unavailable: list[dict[str, Any]], what: str, err: int, detail: str = "") -> None:
    """One entry of a profile's ``unavailable`` list: what could not be read, the errno and
    its name, and what was said."""
    unavailable.append({"what": what, "errno": err, "error": errno_name(err), "detail": detail})


class Missing:
    """Collects what could not be read, and why (the profile's ``unavailable``)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def attempt(self, what: str, fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return fn(*args)
        except OSError as e:
            self.add(what, e.errno or 0, e.strerror or "")
            return None

    def add(self, what: str, err: int, detail: str = "") -> None:
        note(self.items, what, err, detail)


def caps_of(fd: _Fd, missing: Missing, where: str) -> dict[str, int]:
    """Every capability of :data:`CAPS` as ``fd`` (/dev/kvm, a VM) answers it."""
    out: dict[str, int] = {}
    for name, number in CAPS.items():
        value = missing.attempt(f"KVM_CHECK_EXTENSION({name}) on {where}", fd.check_extension, number)
        if value is not None:
            out[name] = value
    return out


def _counted_list(fd: int, request: int, item: str) -> list[int]:
    """A "count, then items" ioctl: asked with count 0, KVM fails with E2BIG and writes
    the count it needs; asked again with room for that many, it fills them in."""
    size = struct.calcsize(item)
    # bigger than 1024 bytes: fcntl.ioctl then hands the kernel this very buffer instead of
    # a copy; Python 3.14 no longer copies a failed ioctl's copy back, which lost the count
    head = bytearray(2048)
    try:
        fcntl.ioctl(fd, request, head, True)
    except OSError as e:
        if e.errno != errno.E2BIG:
            raise
    n = struct.unpack_from("<" + item, head)[0]
    buf = bytearray(size + size * n)
    struct.pack_into("<" + item, buf, 0, n)
    fcntl.ioctl(fd, request, buf, True)
    n = struct.unpack_from("<" + item, buf, 0)[0]
    return list(struct.unpack_from(f"<{n}{item}", buf, size))


class _Fd:
    """An owned file descriptor; closing twice is harmless."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_extension(self, cap: int) -> int:
        return fcntl.ioctl(self.fd, KVM_CHECK_EXTENSION, cap)


class KvmSystem(_Fd):
    """``/dev/kvm``."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        super().__init__(os.open(path, os.O_RDWR | os.O_CLOEXEC))

    def api_version(self) -> int:
        return fcntl.ioctl(self.fd, KVM_GET_API_VERSION)

    def create_vm(self, vm_type: int = 0) -> KvmVm:
        return KvmVm(fcntl.ioctl(self.fd, KVM_CREATE_VM, vm_type))

    # x86 --------------------------------------------------------------------------
    def supported_cpuid(self) -> list[tuple[int, int, int, int, int, int, int]]:
        """KVM_GET_SUPPORTED_CPUID: (function, index, flags, eax, ebx, ecx, edx) rows."""
        nent = 128
        while True:
            buf = bytearray(8 + 40 * nent)
            struct.pack_into("<I", buf, 0, nent)
            try:
                fcntl.ioctl(self.fd, KVM_GET_SUPPORTED_CPUID, buf, True)
            except OSError as e:
                if e.errno == errno.E2BIG and nent < 4096:
                    nent *= 2
                    continue
                raise
            count = struct.unpack_from("<I", buf, 0)[0]
            return [struct.unpack_from("<7I", buf, 8 + 40 * i) for i in range(count)]

    def msr_feature_indices(self) -> list[int]:
        """KVM_GET_MSR_FEATURE_INDEX_LIST (struct kvm_msr_list: u32 count, u32 indices[])."""
        return _counted_list(self.fd, KVM_GET_MSR_FEATURE_INDEX_LIST, "I")

    def feature_msr(self, index: int) -> int | None:
        """One feature MSR through KVM_GET_MSRS on the system fd; None if KVM reads 0 MSRs."""
        buf = bytearray(struct.pack("<IIIIQ", 1, 0, index, 0, 0))
        read = fcntl.ioctl(self.fd, KVM_GET_MSRS, buf, True)
        if read != 1:
            return None
        return int(struct.unpack_from("<Q", buf, 16)[0])


class KvmVm(_Fd):
    def create_vcpu(self, index: int = 0) -> KvmVcpu:
        return KvmVcpu(fcntl.ioctl(self.fd, KVM_CREATE_VCPU, index))

    def arm_preferred_target(self) -> int:
        buf = bytearray(32)
        fcntl.ioctl(self.fd, KVM_ARM_PREFERRED_TARGET, buf, True)
        return int(struct.unpack_from("<I", buf, 0)[0])

    def arm_writable_masks(self) -> list[int]:
        """KVM_ARM_GET_REG_WRITABLE_MASKS for range 0 (the feature ID range)."""
        import ctypes

        masks = (ctypes.c_uint64 * ARM_FEATURE_ID_RANGE_SIZE)()
        req = struct.pack("<QI13I", ctypes.addressof(masks), 0, *([0] * 13))
        fcntl.ioctl(self.fd, KVM_ARM_GET_REG_WRITABLE_MASKS, req)
        return list(masks)

    def set_user_memory(self, slot: int, guest_phys: int, size: int, host_addr: int) -> None:
        fcntl.ioctl(self.fd, KVM_SET_USER_MEMORY_REGION, struct.pack("<IIQQQ", slot, 0, guest_phys, size, host_addr))

    def create_device(self, dev_type: int) -> _Fd:
        buf = bytearray(struct.pack("<III", dev_type, 0, 0))
        fcntl.ioctl(self.fd, KVM_CREATE_DEVICE, buf, True)
        return _Fd(struct.unpack_from("<I", buf, 4)[0])

    def enable_cap(self, cap: int, *args: int) -> None:
        argv = list(args) + [0] * (4 - len(args))
        fcntl.ioctl(self.fd, KVM_ENABLE_CAP, struct.pack("<II4Q64x", cap, 0, *argv))


def set_device_attr(fd: _Fd, group: int, attr: int, value: int | None = None, fmt: str = "<Q") -> None:
    """KVM_SET_DEVICE_ATTR on a device or vCPU fd; ``value`` (packed as ``fmt``) is what
    ``addr`` points at, or none (addr 0) for an attribute that takes no argument."""
    import ctypes

    holder = None if value is None else ctypes.create_string_buffer(struct.pack(fmt, value), struct.calcsize(fmt))
    addr = 0 if holder is None else ctypes.addressof(holder)
    fcntl.ioctl(fd.fd, KVM_SET_DEVICE_ATTR, struct.pack("<IIQQ", 0, group, attr, addr))


class GuestMemory:
    """Anonymous shared memory for a guest's memory slot; ``address`` is what
    KVM_SET_USER_MEMORY_REGION is given."""

    def __init__(self, size: int) -> None:
        import ctypes
        import mmap

        self.map = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, mmap.PROT_READ | mmap.PROT_WRITE)
        self._view = ctypes.c_char.from_buffer(self.map)
        self.address = ctypes.addressof(self._view)

    def close(self) -> None:
        del self._view
        self.map.close()


class KvmVcpu(_Fd):
    # x86 --------------------------------------------------------------------------
    def set_cpuid(self, rows: list[tuple[int, int, int, int, int, int, int]]) -> None:
        """KVM_SET_CPUID2 (struct kvm_cpuid2: u32 nent, u32 pad, 40-byte entries)."""
        buf = bytearray(8 + 40 * len(rows))
        struct.pack_into("<I", buf, 0, len(rows))
        for i, row in enumerate(rows):
            struct.pack_into("<7I", buf, 8 + 40 * i, *row)
        fcntl.ioctl(self.fd, KVM_SET_CPUID2, buf)

    def set_msr(self, index: int, value: int) -> bool:
        """One MSR through KVM_SET_MSRS, as a VMM restores it (host-initiated): whether
        KVM took it (the ioctl answers how many of the entries it wrote)."""
        buf = bytearray(struct.pack("<IIIIQ", 1, 0, index, 0, value))
        return bool(fcntl.ioctl(self.fd, KVM_SET_MSRS, buf, True) == 1)

    def get_msr(self, index: int) -> int | None:
        """One MSR of this vCPU through KVM_GET_MSRS; None if KVM reads 0 MSRs."""
        buf = bytearray(struct.pack("<IIIIQ", 1, 0, index, 0, 0))
        if fcntl.ioctl(self.fd, KVM_GET_MSRS, buf, True) != 1:
            return None
        return int(struct.unpack_from("<Q", buf, 16)[0])

    def arm_init(self, target: int, features: list[str]) -> None:
        word = 0
        for name in features:
            word |= 1 << ARM_VCPU_FEATURES[name]
        fcntl.ioctl(self.fd, KVM_ARM_VCPU_INIT, struct.pack("<I7I", target, word, 0, 0, 0, 0, 0, 0))

    def arm_finalize(self, what: int = ARM_FINALIZE_SVE) -> None:
        fcntl.ioctl(self.fd, KVM_ARM_VCPU_FINALIZE, struct.pack("<i", what))

    def reg_list(self) -> list[int]:
        """KVM_GET_REG_LIST (struct kvm_reg_list: u64 n, u64 reg[])."""
        return _counted_list(self.fd, KVM_GET_REG_LIST, "Q")

    def get_one_reg(self, reg_id: int) -> int:
        """Read a register of any size as an unsigned little-endian integer."""
        import ctypes

        value = ctypes.create_string_buffer(reg_size(reg_id))
        fcntl.ioctl(self.fd, KVM_GET_ONE_REG, struct.pack("<QQ", reg_id, ctypes.addressof(value)))
        return int.from_bytes(value.raw, "little")

    def run_area(self, system: KvmSystem) -> Any:
        """The vCPU's struct kvm_run, mapped (KVM_GET_VCPU_MMAP_SIZE bytes)."""
        import mmap

        size = fcntl.ioctl(system.fd, KVM_GET_VCPU_MMAP_SIZE)
        return mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def run(self, area: Any) -> tuple[int, Any]:
        """KVM_RUN once: (exit reason, the MMIO exit's (phys_addr, data, len, is_write) or
        None for another exit)."""
        fcntl.ioctl(self.fd, KVM_RUN, 0)
        reason = struct.unpack_from("<I", area, 8)[0]
        if reason != KVM_EXIT_MMIO:
            return reason, None
        phys, data, length, is_write = struct.unpack_from("<Q8sIB", area, 32)
        return reason, (phys, int.from_bytes(data[:length], "little"), length, is_write)

    def set_one_reg(self, reg_id: int, val: int) -> None:
        import ctypes

        size = reg_size(reg_id)
        value = ctypes.create_string_buffer(val.to_bytes(size, "little"), size)
        fcntl.ioctl(self.fd, KVM_SET_ONE_REG, struct.pack("<QQ", reg_id, ctypes.addressof(value)))


def run_guest(vcpu: KvmVcpu, system: KvmSystem, on_store: Callable[[int, int], bool], max_exits: int,
              seconds: float) -> int:
    """KVM_RUN until ``on_store(phys_addr, value)`` of an MMIO write says stop; the number
    of exits it took. Bounded twice: :class:`GuestStop` after ``max_exits`` exits, or
    after ``seconds`` (a SIGALRM interval timer interrupts KVM_RUN; on a thread other
    than the main one, where Python delivers no signal, the run is refused instead).
    Any exit but an MMIO write is a :class:`GuestStop` naming it."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        raise GuestStop("a guest run needs the main thread (its time limit is a SIGALRM timer)")

    def expired(signum: int, frame: object) -> None:
        raise GuestStop(f"no answer within {seconds:g} s (time limit)")

    area = vcpu.run_area(system)
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        for exits in range(1, max_exits + 1):
            reason, mmio = vcpu.run(area)
            if mmio is None:
                raise GuestStop(f"exit {KVM_EXIT_NAMES.get(reason, reason)} after {exits - 1} answers")
            phys, value, _length, is_write = mmio
            if not is_write:
                raise GuestStop(f"an MMIO read of {phys:#x}")
            if on_store(phys, value):
                return exits
        raise GuestStop(f"more than {max_exits} exits (step limit)")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        area.close()
