"""x86 verdicts: the destination's QEMU and libvirt decide (machine types, the CPU
model's unavailable features, the host CPU expansion, what libvirt drops from an incoming
CPU), and its KVM the paravirtual features."""
from __future__ import annotations

from ...engine.problem import Problem, Verdict
from . import features

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ...engine.problem import Policy
    from ...model.contract import Contract
    from ...model.profile import Profile
    from .body import X86Body
    from .section import X86Kvm


def section_of(profile: Profile) -> X86Kvm | None:
    from .section import X86Kvm

    s = profile.arch_section()
    return s if isinstance(s, X86Kvm) else None


def contract_body(profile: Profile) -> X86Body:
    """What a VM started there with ``<cpu mode='host-model'/>`` gets."""
    from ...errors import ContractError
    from .body import X86Body

    section = section_of(profile)
    pv = section.pv_eax if section is not None else None
    props = profile.qemu.host_cpu_props if profile.qemu is not None else None
    dc = profile.libvirt.domcaps if profile.libvirt is not None else None
    host_model = dc.host_model if dc is not None else None
    if host_model is not None:
        # a running host-model VM is migratable: features QEMU's migratable host expansion
        # leaves out (invtsc) are not in it, whatever domcapabilities lists
        expanded = props or {}
        feats = {f: pol for f, pol in host_model.features.items()
                 if not (pol in ("require", "force") and expanded.get(features.qemu_feature_name(f)) is False)}
        return X86Body(host_model.model, pv, dict(sorted(feats.items())))
    if props is not None:
        return X86Body(None, pv, {k: ("require" if v else "disable") for k, v in sorted(props.items())
                                  if isinstance(v, bool)})
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
            problems.append(Problem("CPU model", None, None, model, f"QEMU {qemu.version_text} lacks it",
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
    pv = body.pv_features
    section = section_of(dest)
    dest_pv = section.pv_eax if section is not None else None
    if pv and dest_pv is not None:
        lacking = pv & ~dest_pv
        if lacking:
            problems.append(Problem("KVM PV features", None, ", ".join(features.pv_feature_names(lacking)),
                                    f"{pv:#x}", f"offers {dest_pv:#x}", "its KVM lacks these paravirtual features",
                                    "pin the PV features every host offers", pinnable=True))
    return Verdict(problems, [])
