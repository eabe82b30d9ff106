"""The x86 part of a fleet baseline.

The CPU is libvirt's own answer where a libvirt can be asked (``abiguard baseline
--libvirt URI``): ``baselineHypervisorCPU`` over every host's CPU (the host-model CPU each
host's libvirt expanded into its features at probe time), computed by the oldest libvirt
given (whose CPU map every newer one reads), migratable, features spelled out; then
``compareHypervisorCPU`` on every libvirt given. Without one, it is computed from the
profiles (QEMU's usable models and host expansion), as before, and says so.

Either way the result is then made readable the same way by every host: only names every
host's libvirt knows, features some host's libvirt drops from an incoming definition
disabled, every IA32_ARCH_CAPABILITIES bit spelled out, the KVM PV features every host
gives a named CPU model.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import features
from .judge import contract_body, explicit_arch_capabilities, guest_pv, unstartable_arch_capabilities

if TYPE_CHECKING:
    from typing import Any

    from ...model.contract import Contract
    from ...model.profile import Profile
    from .body import X86Body
    from .hypervisor_cpu import HypervisorCpu


def baseline(profiles: list[Profile], hypervisors: list[HypervisorCpu] | None = None
             ) -> tuple[X86Body, list[str]]:
    from .body import X86Body

    conflicts: list[str] = []
    model: str | None = None
    feats: dict[str, str] = {}
    if hypervisors:
        model, feats = _libvirt_baseline(profiles, hypervisors, conflicts)
    if model is None and not feats:
        model, feats = _profile_baseline(profiles, conflicts)
        if hypervisors is not None:
            conflicts.append("the CPU was computed from the profiles, not by libvirt (give --libvirt URI of a "
                             "fleet host whose profile lists its host CPU features)")
    feats = _readable_everywhere(feats, profiles, conflicts)
    known = _common(p.libvirt.cpu.features if p.libvirt is not None and p.libvirt.cpu is not None else None
                    for p in profiles)
    feats = explicit_arch_capabilities(feats, known)
    feats = _unnamed_arch_capabilities(feats, profiles, known, conflicts)
    pvs = [guest_pv(p) for p in profiles]
    pv = None
    if pvs and all(x is not None for x in pvs):
        pv = pvs[0]
        for x in pvs[1:]:
            pv &= x  # type: ignore[operator]
    return X86Body(model, pv, dict(sorted(feats.items())), features.arch_capabilities_of(feats)), conflicts


def host_report(contract: Contract, profile: Profile) -> dict[str, Any]:
    """Whether a VM of this contract starts on this host, and what stands in the way: the
    hook's answer at ``prepare`` (:meth:`..X86.realise`), which holds the contract to the
    host's QEMU, libvirt and KVM (an IA32_ARCH_CAPABILITIES bit QEMU would abort on among
    them), so a baseline never promises a start the host refuses. Whether the host's own
    libvirt agrees (compareHypervisorCPU) is asked where a connection is given
    (``baseline --libvirt``: the document's ``libvirt`` member)."""
    from ...model.problem import Policy
    from . import judge

    v = judge.check(contract, profile, Policy(), incoming=False)
    return {"starts_with_contract": not v.problems, "cannot_start": [p.line() for p in v.problems]}


def _unnamed_arch_capabilities(feats: dict[str, str], profiles: list[Profile], known: frozenset[str] | None,
                               conflicts: list[str]) -> dict[str, str]:
    """A guest with IA32_ARCH_CAPABILITIES reads every bit its host gives unless the
    contract turns it off by name; a bit some host's libvirt cannot name (GDS_NO and RFDS_NO
    on libvirt 9.0) cannot be turned off, so a host whose vCPUs take it (its QEMU offers
    it and its KVM puts it into a vCPU: the probe measures both) would widen the guest. Then
    the MSR is left out of the contract, which every host can hold: no guest reads it."""
    if feats.get(features.ARCH_CAPABILITIES_FEATURE) not in features.ON or known is None:
        return feats
    from .judge import arch_capabilities_settable

    widen: dict[str, list[str]] = {}
    for p in profiles:
        props = (p.qemu.host_cpu_props if p.qemu is not None else None) or {}
        settable = arch_capabilities_settable(p)
        for feat, bit in features.ARCH_CAPABILITY_BY_FEATURE.items():
            if feat in known or props.get(features.qemu_feature_name(feat)) is not True:
                continue
            if settable is None or settable >> bit & 1:
                widen.setdefault(feat, []).append(p.label)
    if not widen:
        return feats
    out = {f: ("disable" if f in features.ARCH_CAPABILITY_BY_FEATURE and f in known else pol)
           for f, pol in feats.items()}
    out[features.ARCH_CAPABILITIES_FEATURE] = "disable"
    conflicts.append("IA32_ARCH_CAPABILITIES left out (arch-capabilities disabled): " + "; ".join(
        f"{feat} (bit {features.ARCH_CAPABILITY_BY_FEATURE[feat]}) reaches a guest on {', '.join(sorted(hosts))} "
        "and some host's libvirt cannot name it to turn it off" for feat, hosts in sorted(widen.items())))
    return dict(sorted(out.items()))


def _common(sets: object) -> frozenset[str] | None:
    out: frozenset[str] | None = None
    for s in sets:  # type: ignore[attr-defined]
        if s is None:
            return None
        out = s if out is None else out & s
    return out


def _libvirt_baseline(profiles: list[Profile], hypervisors: list[HypervisorCpu],
                      conflicts: list[str]) -> tuple[str | None, dict[str, str]]:
    from .hypervisor_cpu import parse_cpu

    hosts = []
    for p in profiles:
        cpu = p.libvirt.cpu if p.libvirt is not None else None
        if cpu is None or cpu.host_features is None:
            conflicts.append(f"{p.label}: its profile lists no host CPU features (probe it with this abiguard)")
            return None, {}
        # a host's CPU without the IA32_ARCH_CAPABILITIES bits its KVM will not put into a
        # vCPU: QEMU aborts a start that asks for one, so no baseline may
        cannot = unstartable_arch_capabilities(p) & set(cpu.host_features)
        if cannot:
            conflicts.append(f"{p.label}: its KVM takes no IA32_ARCH_CAPABILITIES {', '.join(sorted(cannot))} into a "
                             "vCPU (the probe's KVM_SET_MSRS): left out, QEMU would abort the VM")
        hosts.append(set(cpu.host_features) - cannot)
    oldest = min(hypervisors, key=lambda h: h.version())
    xml, unknown = oldest.baseline(hosts)
    if unknown:
        conflicts.append(f"libvirt {'.'.join(map(str, oldest.version()))} ({oldest.label}) cannot name "
                         f"{', '.join(sorted(unknown))}: left out of the baseline")
    model, feats = parse_cpu(xml)
    if model:
        # a newer libvirt may define the model with more features than the oldest: spell
        # those off, so the model means the same everywhere
        for h in hypervisors:
            for extra in sorted(h.model_features(model) - {f for f, p in feats.items() if p in features.ON}):
                if feats.get(extra) not in ("disable", "forbid"):
                    feats[extra] = "disable"
                    conflicts.append(f"{extra}: disabled, libvirt {'.'.join(map(str, h.version()))} ({h.label}) "
                                     f"defines {model} with it and the baseline has it off")
    return model, feats


def _readable_everywhere(feats: dict[str, str], profiles: list[Profile], conflicts: list[str]) -> dict[str, str]:
    """Every name in a form every host's libvirt reads the same way: features some host's
    libvirt drops on an incoming migration disabled, names some libvirt lacks left out."""
    out = dict(feats)
    for p in profiles:
        for feat in features.dropped_on_incoming(p.libvirt_version()):
            if out.get(feat) in features.ON:
                out[feat] = "disable"
                conflicts.append(f"{feat}: disabled, {p.label}'s libvirt drops it from an incoming CPU definition")
    for p in profiles:
        known = p.libvirt.cpu.features if p.libvirt is not None and p.libvirt.cpu is not None else None
        if known is None:
            continue
        for feat in sorted(set(out) - known):
            conflicts.append(f"{feat}: left out, {p.label}'s libvirt {p.libvirt.version_text if p.libvirt else ''} "
                             "cannot name it")
            del out[feat]
    return out


def _profile_baseline(profiles: list[Profile], conflicts: list[str]) -> tuple[str | None, dict[str, str]]:
    """A named CPU model every host's QEMU (and libvirt) can run, the features it cannot
    give somewhere disabled, plus the host-model features every host gives migratably.

    The model: the first hosts' host-model model every QEMU knows (the oldest host usually
    names the smallest), else qemu64. A feature is required only when every host's
    host-model requires it and every QEMU's migratable host expansion offers it.
    """
    bodies = [contract_body(p) for p in profiles]
    defs = [(p.qemu.cpu_definitions if p.qemu is not None else None) or {} for p in profiles]
    props = [(p.qemu.host_cpu_props if p.qemu is not None else None) or {} for p in profiles]
    customs = []
    for p in profiles:
        dc = p.libvirt.domcaps if p.libvirt is not None else None
        customs.append((dc.custom_models if dc is not None else None) or {})
    candidates = [b.cpu_model for b in bodies if b.cpu_model] + ["qemu64"]
    model = next((m for m in candidates if all(m in d for d in defs)), None)
    if model is None:
        conflicts.append("no CPU model every host's QEMU knows: the baseline names features only")
    # QEMU speaks of features by its own names; the contract uses libvirt's
    libvirt_name = {features.qemu_feature_name(f): f for b in bodies for f in b.features}
    disable: set[str] = set()
    if model:
        for d, custom in zip(defs, customs):
            disable |= {libvirt_name.get(f, f) for f in d[model]}
            blockers = custom.get(model)
            disable |= set(blockers.blockers if blockers else ())
    common = set.intersection(*({f for f, pol in b.features.items() if pol in features.ON} for b in bodies))
    require = {f for f in common if all(pr.get(features.qemu_feature_name(f)) is True for pr in props)} - disable
    return model, {f: "disable" for f in disable} | {f: "require" for f in require}
