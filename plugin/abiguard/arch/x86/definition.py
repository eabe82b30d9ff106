"""What realises an x86 contract in a libvirt definition (lxml edits for ``abiguard pin``):
a custom CPU model with the contract's features."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...model.contract import Contract
    from ...model.profile import Profile


def x86_cpu_of(root: Any) -> tuple[str, dict[str, str]] | None:
    """The CPU model and features a domain definition asks for (custom mode only)."""
    cpu = root.find("cpu")
    if cpu is None or cpu.get("mode", "custom") != "custom" or cpu.findtext("model") is None:
        return None
    return (cpu.findtext("model").strip(),
            {f.get("name"): f.get("policy", "require") for f in cpu.findall("feature")})


def edit(root: Any, contract: Contract, notes: list[str], cannot: list[str], profile: Profile | None) -> None:
    """<cpu mode='custom' match='exact' check='partial'> with the contract's model and
    features (IA32_ARCH_CAPABILITIES bits among them); the KVM PV features this host's
    QEMU would add to the contract's, switched off where libvirt has a knob for them."""
    from .body import X86Body

    body = contract.body
    assert isinstance(body, X86Body)
    from lxml import etree

    if body.cpu_model is None:
        notes.append("x86 CPU: the contract names features without a model; CPU left as it is")
        return
    old = root.find("cpu")
    cpu = etree.Element("cpu", mode="custom", match="exact", check="partial")
    if old is not None:
        for keep in ("topology", "numa", "cache"):
            for el in old.findall(keep):
                cpu.append(el)
        root.replace(old, cpu)
    else:
        root.append(cpu)
    model = etree.SubElement(cpu, "model", fallback="forbid")
    model.text = body.cpu_model
    for name, policy in body.features.items():
        etree.SubElement(cpu, "feature", policy=policy, name=name)
    notes.append(f"x86 CPU: custom {body.cpu_model} with {len(body.features)} explicit features, "
                 "check=partial")
    _pv_knobs(root, body, notes, cannot, profile)


def _pv_knobs(root: Any, body: Any, notes: list[str], cannot: list[str], profile: Profile | None) -> None:
    from lxml import etree

    from . import features
    from .judge import guest_pv

    gives = guest_pv(profile) if profile is not None else None
    if gives is None or body.pv_features is None:
        notes.append("KVM PV features: left to QEMU (no host profile to compare with)")
        return
    extra = gives & ~body.pv_features
    for bit in range(32):
        if not extra >> bit & 1:
            continue
        name = features.pv_feature_names(1 << bit)[0]
        if bit in (0, 3):
            clock = root.find("clock")
            if clock is None:
                clock = etree.SubElement(root, "clock", offset="utc")
            if clock.find("timer[@name='kvmclock']") is None:
                etree.SubElement(clock, "timer", name="kvmclock", present="no")
            notes.append(f"KVM PV {name}: off (<timer name='kvmclock' present='no'/>)")
        elif bit in (11, 12):
            knob = "pv-ipi" if bit == 11 else "poll-control"
            feats = root.find("features")
            if feats is None:
                feats = etree.SubElement(root, "features")
            kvm = feats.find("kvm")
            if kvm is None:
                kvm = etree.SubElement(feats, "kvm")
            for old in kvm.findall(knob):
                kvm.remove(old)
            etree.SubElement(kvm, knob, state="off")
            notes.append(f"KVM PV {name}: off (<features><kvm><{knob} state='off'/>)")
        else:
            cannot.append(f"KVM PV {name} (CPUID 0x40000001 EAX bit {bit}): QEMU turns it on here and the "
                          "contract has it off; libvirt has no knob for it")


def domain_contract(root: Any, host: Profile) -> Contract:
    """The contract of what the VM asks for now on this host: its own CPU model and
    features (custom mode), else the host-model one; with its own machine type made
    concrete (an alias such as 'q35' resolved by this host's QEMU)."""
    from ...errors import ContractError
    from ...model import contract
    from ...model.fields import Reader
    from ..base import domain_machine
    from . import body as body_mod

    sealed = contract.from_profile(host)
    machine = domain_machine(root, host)
    cpu = x86_cpu_of(root)
    if cpu is None:
        return sealed.replace(machine_type=machine or sealed.machine_type)
    model, features = cpu
    doc = sealed.body.to_json() | {"cpu_model": model, "features": features}
    doc["arch_capabilities"] = f"{_arch_capabilities_of(features):#x}"
    new_body = body_mod.from_json(Reader("the domain's <cpu>", ContractError), doc, "x86_64")
    return sealed.replace(body=new_body, machine_type=machine or sealed.machine_type)


def _arch_capabilities_of(features: dict[str, str]) -> int:
    from .features import arch_capabilities_of

    return arch_capabilities_of(features)
