"""x86 knowledge: how libvirt names CPU features versus QEMU, KVM PV feature bits, and
what an x86 contract holds.

Sources: libvirt src/qemu/qemu_capabilities.c (``virQEMUCapsCPUFeatureTranslate``:
QEMU spells most features with '-' where libvirt uses '_', plus a few renames),
Documentation/virt/kvm/x86/cpuid.rst (KVM_CPUID_FEATURES bits).
"""
from __future__ import annotations

from ..errors import ContractError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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


def contract_body(profile: dict[str, Any]) -> dict[str, Any]:
    """What a VM started there with ``<cpu mode='host-model'/>`` gets."""
    stack = profile.get("stack") or {}
    domcaps = ((stack.get("libvirt") or {}).get("domcapabilities") or {})
    host_model = domcaps.get("host_model")
    kvm = (profile.get("kvm") or {}).get("x86_64") or {}
    pv = (kvm.get("pv_features") or {}).get("eax")
    expansion = (stack.get("qemu") or {}).get("host_cpu_expansion")
    if host_model:
        # a running host-model VM is migratable: features QEMU's migratable host expansion
        # leaves out (invtsc) are not in it, whatever domcapabilities lists
        props = (expansion or {}).get("props") or {}
        features = {f: pol for f, pol in host_model["features"].items()
                    if not (pol in ("require", "force") and props.get(qemu_feature_name(f)) is False)}
        return {"cpu_model": host_model["model"], "pv_features": pv, "features": dict(sorted(features.items()))}
    if expansion:
        return {"cpu_model": None, "pv_features": pv,
                "features": {k: ("require" if v else "disable")
                             for k, v in sorted(expansion["props"].items()) if isinstance(v, bool)}}
    raise ContractError("profile", "no host-model CPU in it (neither libvirt domcapabilities nor QEMU's "
                        "host CPU expansion): probe the host with QEMU installed")


def validate_body(body: dict[str, Any], source: str) -> None:
    from ..contract import is_hex, is_name

    model = body.get("cpu_model")
    if model is not None and not is_name(model):
        raise ContractError(source, "member 'cpu_model' must be a CPU model name or null")
    pv = body.get("pv_features")
    if pv is not None and not is_hex(pv, 16):
        raise ContractError(source, "member 'pv_features' must be a hex string or null")
    feats = body.get("features")
    if not isinstance(feats, dict) or len(feats) > 1024 or not all(
            is_name(k) and k.lower() == k and v in POLICIES for k, v in feats.items()):
        raise ContractError(source, "member 'features' must map feature names to one of "
                            + ", ".join(POLICIES))
