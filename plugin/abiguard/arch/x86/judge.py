"""x86 verdicts: the destination's QEMU and libvirt decide (machine types, the CPU
model's unavailable features, the host CPU expansion, what libvirt drops from an incoming
CPU), and its KVM the paravirtual features."""
from __future__ import annotations

from ...model.problem import Problem, Verdict
from . import features

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from ...model.contract import Contract
    from ...model.problem import Policy
    from ...model.profile import Profile
    from .body import X86Body
    from .section import X86Kvm


def section_of(profile: Profile) -> X86Kvm | None:
    from .section import X86Kvm

    s = profile.arch_section()
    return s if isinstance(s, X86Kvm) else None


def guest_pv(profile: Profile) -> int | None:
    """The KVM PV bits a VM with a named CPU model sees on this host: what QEMU turns on for
    any named model (its expansion of one, from the probe) that this host's KVM offers.
    Without that expansion in the profile: everything KVM offers (an older profile)."""
    section = section_of(profile)
    offered = section.pv_eax if section is not None else None
    named = profile.qemu.named_cpu_props if profile.qemu is not None else None
    if offered is None or named is None:
        return offered
    return features.pv_bits_from_props(named) & offered


def arch_capabilities_settable(profile: Profile) -> int | None:
    """The IA32_ARCH_CAPABILITIES bits a vCPU on this host takes from QEMU (the probe's
    KVM_SET_MSRS on a fresh vCPU); None where the profile did not measure it."""
    section = section_of(profile)
    return section.settable(features.ARCH_CAPABILITIES_MSR) if section is not None else None


def unstartable_arch_capabilities(profile: Profile) -> set[str]:
    """The IA32_ARCH_CAPABILITIES features this host's QEMU offers (its host CPU expansion)
    that its KVM refuses to put into a vCPU: asking QEMU for one aborts the start ("failed
    to set MSR 0x10a"). Measured per host, so no vendor table decides it."""
    settable = arch_capabilities_settable(profile)
    if settable is None:
        return set()
    return {feat for feat, bit in features.ARCH_CAPABILITY_BY_FEATURE.items() if not settable >> bit & 1}


def explicit_arch_capabilities(feats: dict[str, str], known: frozenset[str] | None) -> dict[str, str]:
    """The features with every IA32_ARCH_CAPABILITIES bit spelled out: what the features
    require stays, every other bit this libvirt can name is disabled (so no CPU model's
    definition on another host can add one), and the MSR itself is off when no bit is on."""
    out = dict(feats)
    if known is None:       # without the libvirt's CPU map: no name can be added safely
        return dict(sorted(out.items()))
    on = {f for f in features.ARCH_CAPABILITY_BY_FEATURE if out.get(f) in features.ON}
    if out.get(features.ARCH_CAPABILITIES_FEATURE) not in features.ON:
        on = set()
    for feat in features.ARCH_CAPABILITY_BY_FEATURE:
        if feat not in on and feat in known:
            out[feat] = "disable"
    if not on and features.ARCH_CAPABILITIES_FEATURE in known:
        out[features.ARCH_CAPABILITIES_FEATURE] = "disable"
    return dict(sorted(out.items()))


def contract_body(profile: Profile) -> X86Body:
    """What a VM started there with ``<cpu mode='host-model'/>`` gets, as the custom CPU
    ``abiguard pin`` writes for it (named model: QEMU's PV defaults apply)."""
    from ...errors import ContractError
    from .body import X86Body

    pv = guest_pv(profile)
    props = profile.qemu.host_cpu_props if profile.qemu is not None else None
    dc = profile.libvirt.domcaps if profile.libvirt is not None else None
    known = profile.libvirt.cpu.features if profile.libvirt is not None and profile.libvirt.cpu else None
    host_model = dc.host_model if dc is not None else None
    if host_model is not None:
        # a running host-model VM is migratable: features QEMU's migratable host expansion
        # leaves out (invtsc) are not in it, whatever domcapabilities lists
        expanded = props or {}
        # nor a bit of IA32_ARCH_CAPABILITIES this host's KVM will not put into a vCPU: a
        # contract never asks QEMU for what makes it abort the start
        cannot = unstartable_arch_capabilities(profile)
        feats = {f: pol for f, pol in host_model.features.items()
                 if not (pol in features.ON and (expanded.get(features.qemu_feature_name(f)) is False
                                                 or f in cannot))}
        feats = explicit_arch_capabilities(feats, known)
        return X86Body(host_model.model, pv, feats, features.arch_capabilities_of(feats))
    if props is not None:
        # QEMU's own host expansion (no libvirt answered the probe): the same rule, a bit this
        # host's KVM will not put into a vCPU is off (test_deb_in_a_clean_chroot's self-check)
        cannot = unstartable_arch_capabilities(profile)
        feats = {k: ("require" if v and k not in cannot else "disable")
                 for k, v in sorted(props.items()) if isinstance(v, bool)}
        return X86Body(None, pv, feats, features.arch_capabilities_of(feats))
    raise ContractError("profile", "no host-model CPU in it (neither libvirt domcapabilities nor QEMU's "
                        "host CPU expansion): probe the host with QEMU installed")


def check(contract: Contract, dest: Profile, policy: Policy, incoming: bool = True) -> Verdict:
    """``incoming``: the VM arrives by migration or restore (not a plain start), so what the
    destination's libvirt does to an incoming CPU definition applies too."""
    body: X86Body = contract.body  # type: ignore[assignment]
    problems: list[Problem] = []
    qemu = dest.qemu
    if qemu is None or not qemu.machines:
        return Verdict([Problem("QEMU", None, None, "a QEMU guest", "has no QEMU data in its profile",
                                "cannot check machine type or CPU", "probe the destination with QEMU installed")], [])
    machine = contract.machine_type
    known = qemu.machine_names() | {m.alias for m in qemu.machines if m.alias}
    if machine and machine not in known:
        problems.append(Problem("machine type", None, None, machine, f"QEMU {qemu.version_text} lacks it",
                                "QEMU cannot create this machine", "pin a machine type every host has "
                                "(abiguard baseline)", pinnable=True))
    props = qemu.host_cpu_props or {}
    policies = body.features
    off = {features.qemu_feature_name(f) for f, p in policies.items() if p in ("disable", "forbid")}
    model = body.cpu_model
    libvirt = dest.libvirt
    if model:
        defs = qemu.cpu_definitions or {}
        if model not in defs:
            problems.append(Problem("CPU model", None, model, "it", f"QEMU {qemu.version_text} lacks it",
                                    "QEMU cannot create this CPU model", "pin an older CPU model", pinnable=True))
        else:
            # QEMU names the model's features it cannot give (query-cpu-definitions), and
            # libvirt its own blockers (domcapabilities): each must be disabled by the pin
            dc = libvirt.domcaps if libvirt is not None else None
            custom = (dc.custom_models or {}).get(model) if dc is not None else None
            missing = set(defs[model]) | {features.qemu_feature_name(f) for f in (custom.blockers if custom else ())}
            for feat in sorted(missing - off):
                problems.append(Problem("CPU model", None, feat, f"{model} with {feat}",
                                        "cannot provide it", f"{model} needs {feat}, which this host lacks",
                                        "pin an older CPU model or disable the feature", pinnable=True))
    dropped = features.dropped_on_incoming(dest.libvirt_version()) if incoming else {}
    for feat, pol in policies.items():
        if pol not in ("require", "force"):
            continue
        qname = features.qemu_feature_name(feat)
        if props.get(qname) is not True:
            problems.append(Problem("CPU feature", None, feat, "it required",
                                    "cannot provide it" if qname in props else "does not know it",
                                    "the host CPU or its KVM lacks it", "pin a baseline without it",
                                    pinnable=True))
        elif feat in dropped:
            problems.append(Problem("CPU feature", None, feat, "it required",
                                    f"runs libvirt {libvirt.version_text if libvirt else None}", dropped[feat],
                                    "pin a baseline without it", pinnable=True))
    problems += _libvirt_names(body, dest)
    problems += _arch_capabilities(body, dest, policy)
    problems += _pv_features(body, dest, policy)
    return Verdict(problems, [])


_POLICY_WORD = {"require": "required", "disable": "disabled", "force": "forced", "forbid": "forbidden",
                "optional": "optional"}


def _libvirt_names(body: X86Body, dest: Profile) -> list[Problem]:
    """Every name in the contract must be one the destination's libvirt knows: it refuses
    a definition (and so an incoming migration) naming a CPU model or feature it does not."""
    cpu = dest.libvirt.cpu if dest.libvirt is not None else None
    if cpu is None:
        return []
    version = dest.libvirt.version_text if dest.libvirt is not None else None
    out = []
    if body.cpu_model and cpu.models is not None and body.cpu_model not in cpu.models:
        out.append(Problem("CPU model", None, body.cpu_model, "it", f"libvirt {version} does not know it",
                           "libvirt refuses a definition with a CPU model its CPU map lacks",
                           "pin a CPU model every host's libvirt knows (abiguard baseline)", pinnable=True))
    if cpu.features is not None:
        for feat in sorted(set(body.features) - cpu.features):
            out.append(Problem("CPU feature", None, feat, f"it {_POLICY_WORD.get(body.features[feat], 'named')}",
                               f"libvirt {version} does not know it",
                               "libvirt refuses a definition with a CPU feature its CPU map lacks",
                               "pin a baseline every host's libvirt can read (abiguard baseline)", pinnable=True))
    return out


def _arch_capabilities(body: X86Body, dest: Profile, policy: Policy) -> list[Problem]:
    """IA32_ARCH_CAPABILITIES, bit by bit: what the guest reads must be what the destination
    gives it. A bit the destination cannot give refuses; one it would add (the contract does
    not pin it off) widens."""
    props = (dest.qemu.host_cpu_props if dest.qemu is not None else None) or {}
    want = body.arch_capabilities
    has_msr = body.features.get(features.ARCH_CAPABILITIES_FEATURE) in features.ON
    out = []
    if has_msr and props.get(features.qemu_feature_name(features.ARCH_CAPABILITIES_FEATURE)) is not True:
        out.append(Problem("IA32_ARCH_CAPABILITIES", None, features.ARCH_CAPABILITIES_FEATURE, "the MSR",
                           "cannot give it", "the guest reads the MSR to choose its mitigations",
                           "pin a baseline without arch-capabilities", pinnable=True))
        return out
    settable = arch_capabilities_settable(dest)
    for bit, (linux, feat) in sorted(features.ARCH_CAPABILITIES.items()):
        vm = bool(want >> bit & 1)
        offered = props.get(features.qemu_feature_name(feat)) is True
        # QEMU offering a bit is not the guest reading it: a bit its KVM will not put into
        # a vCPU aborts a start that asks for it, and never reaches a guest that does not
        dest_has = offered and (settable is None or bool(settable >> bit & 1))
        field = f"bit {bit} {linux} ({feat})"
        if vm and offered and not dest_has:
            out.append(Problem("IA32_ARCH_CAPABILITIES", None, field, "1", "cannot start it",
                               "its KVM takes no such bit into a vCPU (the probe's KVM_SET_MSRS of MSR 0x10a "
                               f"takes {settable or 0:#x}): QEMU aborts the VM (failed to set MSR 0x10a)",
                               "pin a baseline without it (abiguard baseline leaves it out)", pinnable=True))
        elif vm and not dest_has:
            out.append(Problem("IA32_ARCH_CAPABILITIES", None, field, "1", "gives 0",
                               "the guest chose its mitigations by this bit", "keep the VM on hosts with it, or "
                               "pin a baseline without it", pinnable=True))
        elif not vm and dest_has and has_msr and body.features.get(feat) not in ("disable", "forbid"):
            p = Problem("IA32_ARCH_CAPABILITIES", None, field, "0", "gives 1",
                        "the guest would read a bit it did not have", "pin the bit off "
                        f"(<feature policy='disable' name='{feat}'/>) or allow widening", "widen", True)
            if policy.allow_widening:
                continue
            out.append(p)
    return out


def _pv_features(body: X86Body, dest: Profile, policy: Policy) -> list[Problem]:
    """KVM PV features (CPUID 0x40000001 EAX), bit by bit, both ways."""
    pv = body.pv_features
    section = section_of(dest)
    offered = section.pv_eax if section is not None else None
    if pv is None or offered is None:
        return []
    out = []
    for bit in range(32):
        if not pv >> bit & 1 or offered >> bit & 1:
            continue
        name = features.pv_feature_names(1 << bit)[0]
        out.append(Problem("KVM PV features", None, f"bit {bit} {name}", "1", f"offers 0 (KVM {offered:#x})",
                           "its KVM lacks this paravirtual feature", "pin the PV features every host offers",
                           pinnable=True))
    gives = guest_pv(dest)
    if gives is not None and not policy.allow_widening:
        for bit in range(32):
            if gives >> bit & 1 and not pv >> bit & 1:
                name = features.pv_feature_names(1 << bit)[0]
                how = features.PV_LIBVIRT_KNOBS.get(bit)
                out.append(Problem("KVM PV features", None, f"bit {bit} {name}", "0", "gives 1",
                                   "QEMU turns it on for the VM's CPU model there", (f"pin it off ({how})" if how
                                   else "keep the VM on hosts without it (libvirt has no knob to turn it off)")
                                   + " or allow widening", "widen", True))
    return out

