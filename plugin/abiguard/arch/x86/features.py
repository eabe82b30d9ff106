"""x86 knowledge: how libvirt names CPU features versus QEMU, KVM PV feature bits, and
what an x86 contract holds.

Sources: libvirt src/qemu/qemu_capabilities.c (``virQEMUCapsCPUFeatureTranslate``:
QEMU spells most features with '-' where libvirt uses '_', plus a few renames),
Documentation/virt/kvm/x86/cpuid.rst (KVM_CPUID_FEATURES bits).
"""
from __future__ import annotations

#: libvirt feature name -> QEMU property name, where '_' -> '-' is not the whole story
LIBVIRT_TO_QEMU_FEATURE: dict[str, str] = {"pclmuldq": "pclmulqdq"}

#: KVM_CPUID_FEATURES (0x40000001) eax bits
KVM_PV_FEATURES: dict[int, str] = {
    0: "kvmclock", 1: "kvm-nopiodelay", 2: "kvm-mmu", 3: "kvmclock2", 4: "kvm-asyncpf",
    5: "kvm-steal-time", 6: "kvm-pv-eoi", 7: "kvm-pv-unhalt", 9: "kvm-pv-tlb-flush",
    10: "kvm-asyncpf-vmexit", 11: "kvm-pv-ipi", 12: "kvm-poll-control", 13: "kvm-pv-sched-yield",
    14: "kvm-asyncpf-int", 15: "kvm-msi-ext-dest-id", 16: "kvm-hc-map-gpa-range",
    17: "kvm-migration-control", 24: "kvmclock-stable-bit",
}

#: CPUID bits KVM_GET_SUPPORTED_CPUID copies from whichever host CPU ran the ioctl (the
#: APIC ids): not guest ABI, and they made two probes of one host differ. Zeroed by the probe.
PER_CPU_CPUID_BITS: dict[tuple[int, str], int] = {
    (0x1, "ebx"): 0xFF000000,    # initial APIC id
    (0xB, "edx"): 0xFFFFFFFF,    # x2APIC id
    (0x1F, "edx"): 0xFFFFFFFF,   # x2APIC id (v2 topology leaf)
}

POLICIES = ("require", "disable", "force", "forbid", "optional")


#: features a destination libvirt drops from an incoming CPU definition, from the first
#: version seen doing it (measured by the x86 fleet lab: bookworm 9.0 and trixie 11.3 keep
#: it, sid 12.8 drops it; versions in between were not tried)
LIBVIRT_DROPS_ON_INCOMING: tuple[tuple[tuple[int, ...], str, str], ...] = (
    ((12, 8), "cmp_legacy", "libvirt 12.8 drops cmp_legacy from the incoming CPU definition and "
     "QEMU then clears CPUID 0x80000001 ECX[1]: the guest would lose it"),
)


def dropped_on_incoming(libvirt_version: tuple[int, ...] | None) -> dict[str, str]:
    if libvirt_version is None:
        return {}
    return {feat: why for since, feat, why in LIBVIRT_DROPS_ON_INCOMING if libvirt_version >= since}


def qemu_feature_name(libvirt_name: str) -> str:
    return LIBVIRT_TO_QEMU_FEATURE.get(libvirt_name, libvirt_name.replace("_", "-"))


def pv_feature_names(bits: int) -> list[str]:
    return [KVM_PV_FEATURES.get(b, f"bit{b}") for b in range(32) if bits >> b & 1]
