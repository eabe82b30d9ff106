"""x86 knowledge as table rows: how libvirt names CPU features versus QEMU, the guest-visible
feature MSR bits (IA32_ARCH_CAPABILITIES) and KVM PV feature bits, what libvirt does to an
incoming CPU definition, and what an x86 contract holds.

Sources (read through the public-source index before encoding):

* libvirt ``src/qemu/qemu_capabilities.c`` ``virQEMUCapsCPUFeatureTranslate``: QEMU spells
  most features with '-' where libvirt uses '_', plus a few renames.
* libvirt ``src/cpu_map/x86_features.xml`` (9.0 and 11.3, unpacked from Debian's sources):
  the ``<msr index='0x10a'>`` features and their bits. libvirt 9.0 names bits 0-8, 11.3
  adds 13-15, 17, 24, 26-28, 12.8 (sid's CPU map, read in the lab's root filesystem) 20
  and 62 (``tests/test_x86_abi_bits.py`` holds the table to every map on the machine).
* Linux ``arch/x86/include/asm/msr-index.h`` ``ARCH_CAP_*`` for the names of the bits.
* QEMU ``target/i386/cpu.c`` ``feature_word_info[FEAT_KVM]``: the property of each PV bit
  (bit 3 was a second "kvmclock" until QEMU named it "kvmclock2"), and
  Documentation/virt/kvm/x86/cpuid.rst for KVM_CPUID_FEATURES.
"""
from __future__ import annotations

#: libvirt feature name -> QEMU property name, where '_' -> '-' is not the whole story
LIBVIRT_TO_QEMU_FEATURE: dict[str, str] = {"pclmuldq": "pclmulqdq"}

#: IA32_ARCH_CAPABILITIES (MSR 0x10a): bit -> (Linux ARCH_CAP_ name, libvirt/QEMU feature).
#: A guest reads the MSR (when CPUID.7.0:EDX[29] "arch-capabilities" is set) to decide which
#: mitigations it needs: each bit is guest ABI.
ARCH_CAPABILITIES_MSR = 0x10A
ARCH_CAPABILITIES_FEATURE = "arch-capabilities"
ARCH_CAPABILITIES: dict[int, tuple[str, str]] = {
    0: ("RDCL_NO", "rdctl-no"),
    1: ("IBRS_ALL", "ibrs-all"),
    2: ("RSBA", "rsba"),
    3: ("SKIP_VMENTRY_L1DFLUSH", "skip-l1dfl-vmentry"),
    4: ("SSB_NO", "ssb-no"),
    5: ("MDS_NO", "mds-no"),
    6: ("PSCHANGE_MC_NO", "pschange-mc-no"),
    7: ("TSX_CTRL", "tsx-ctrl"),
    8: ("TAA_NO", "taa-no"),
    13: ("SBDR_SSDP_NO", "sbdr-ssdp-no"),
    14: ("FBSDP_NO", "fbsdp-no"),
    15: ("PSDP_NO", "psdp-no"),
    17: ("FB_CLEAR", "fb-clear"),
    20: ("BHI_NO", "bhi-no"),
    24: ("PBRSB_NO", "pbrsb-no"),
    26: ("GDS_NO", "gds-no"),
    27: ("RFDS_NO", "rfds-no"),
    28: ("RFDS_CLEAR", "rfds-clear"),
    62: ("ITS_NO", "its-no"),
}
#: feature MSRs QEMU writes into every vCPU it starts whose CPU model has the feature (its
#: kvm_put_msrs): a KVM that refuses the value makes QEMU abort the start, so the probe asks
#: each host's KVM which bits a vCPU takes (``kvm.x86_64.vcpu_msrs``)
VCPU_FEATURE_MSRS: tuple[int, ...] = (ARCH_CAPABILITIES_MSR,)
ARCH_CAPABILITY_BY_FEATURE: dict[str, int] = {feat: bit for bit, (_n, feat) in ARCH_CAPABILITIES.items()}
#: the bits a feature name exists for: anything else in the MSR QEMU never passes to a guest
ARCH_CAPABILITIES_NAMED = sum(1 << b for b in ARCH_CAPABILITIES)

#: KVM_CPUID_FEATURES (0x40000001 EAX): bit -> (Linux KVM_FEATURE_ name, QEMU properties that
#: turn it on, the first one the QEMU in question has)
KVM_PV_FEATURES: dict[int, tuple[str, tuple[str, ...]]] = {
    0: ("CLOCKSOURCE", ("kvmclock",)),
    1: ("NOP_IO_DELAY", ("kvm-nopiodelay",)),
    2: ("MMU_OP", ("kvm-mmu",)),
    3: ("CLOCKSOURCE2", ("kvmclock2", "kvmclock")),
    4: ("ASYNC_PF", ("kvm-asyncpf",)),
    5: ("STEAL_TIME", ("kvm-steal-time",)),
    6: ("PV_EOI", ("kvm-pv-eoi",)),
    7: ("PV_UNHALT", ("kvm-pv-unhalt",)),
    9: ("PV_TLB_FLUSH", ("kvm-pv-tlb-flush",)),
    10: ("ASYNC_PF_VMEXIT", ("kvm-asyncpf-vmexit",)),
    11: ("PV_SEND_IPI", ("kvm-pv-ipi",)),
    12: ("POLL_CONTROL", ("kvm-poll-control",)),
    13: ("PV_SCHED_YIELD", ("kvm-pv-sched-yield",)),
    14: ("ASYNC_PF_INT", ("kvm-asyncpf-int",)),
    15: ("MSI_EXT_DEST_ID", ("kvm-msi-ext-dest-id",)),
    16: ("HC_MAP_GPA_RANGE", ("kvm-hc-map-gpa-range",)),
    17: ("MIGRATION_CONTROL", ("kvm-migration-control",)),
    24: ("CLOCKSOURCE_STABLE_BIT", ("kvmclock-stable-bit",)),
}
#: PV features libvirt can switch off in a domain definition, and how (the rest follow
#: QEMU's defaults for the CPU model; libvirt has no knob for them)
PV_LIBVIRT_KNOBS: dict[int, str] = {
    0: "<clock><timer name='kvmclock' present='no'/></clock>",
    3: "<clock><timer name='kvmclock' present='no'/></clock>",
    11: "<features><kvm><pv-ipi state='off'/></kvm></features>",
    12: "<features><kvm><poll-control state='off'/></kvm></features>",
}

#: CPUID bits KVM_GET_SUPPORTED_CPUID copies from whichever host CPU ran the ioctl (the
#: APIC ids): not guest ABI, and they made two probes of one host differ. Zeroed by the probe.
PER_CPU_CPUID_BITS: dict[tuple[int, str], int] = {
    (0x1, "ebx"): 0xFF000000,    # initial APIC id
    (0xB, "edx"): 0xFFFFFFFF,    # x2APIC id
    (0x1F, "edx"): 0xFFFFFFFF,   # x2APIC id (v2 topology leaf)
}

POLICIES = ("require", "disable", "force", "forbid", "optional")
#: the policies under which the guest has the feature
ON = ("require", "force")


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
    """QEMU's names of the PV bits set in ``bits`` (``bitN`` for a bit no row names)."""
    return [KVM_PV_FEATURES[b][1][0] if b in KVM_PV_FEATURES else f"bit{b}" for b in range(32) if bits >> b & 1]


def pv_bits_from_props(props: dict[str, object]) -> int:
    """The PV bits a QEMU CPU (its query-cpu-model-expansion properties) turns on."""
    bits = 0
    for bit, (_name, names) in KVM_PV_FEATURES.items():
        prop = next((n for n in names if n in props), None)
        if prop is not None and props[prop] is True:
            bits |= 1 << bit
    return bits


def arch_capability_names(bits: int) -> list[str]:
    return [f"{ARCH_CAPABILITIES[b][0]} ({ARCH_CAPABILITIES[b][1]})" if b in ARCH_CAPABILITIES else f"bit {b}"
            for b in range(64) if bits >> b & 1]


def arch_capabilities_of(features: dict[str, str]) -> int:
    """The IA32_ARCH_CAPABILITIES a guest with these libvirt feature policies reads (0 when
    it has no such MSR: arch-capabilities not on)."""
    if features.get(ARCH_CAPABILITIES_FEATURE) not in ON:
        return 0
    return sum(1 << bit for feat, bit in ARCH_CAPABILITY_BY_FEATURE.items() if features.get(feat) in ON)
