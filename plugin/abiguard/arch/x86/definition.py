"""What realises an x86 contract in a libvirt definition (lxml edits for ``abiguard pin``):
a custom CPU model with the contract's features."""
from __future__ import annotations

from typing import Any

TYPE_CHECKING = False
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


def edit(root: Any, contract: Contract, notes: list[str]) -> None:
    """<cpu mode='custom' match='exact' check='partial'> with the contract's model and features."""
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


def domain_contract(root: Any, host: Profile) -> Contract:
    """The contract of what the VM asks for now on this host: its own CPU model and
    features (custom mode) with its machine type made concrete; else the host-model one."""
    from ...errors import ContractError
    from ...model import contract
    from ...model.fields import Reader
    from . import body as body_mod

    sealed = contract.from_profile(host)
    cpu = x86_cpu_of(root)
    if cpu is None:
        return sealed
    model, features = cpu
    doc = sealed.body.to_json() | {"cpu_model": model, "features": features}
    new_body = body_mod.from_json(Reader("the domain's <cpu>", ContractError), doc, "x86_64")
    os_type = root.find("os/type")
    machine = host.qemu.resolve_machine(os_type.get("machine")) if host.qemu is not None and os_type is not None \
        else None
    return sealed.replace(body=new_body, machine_type=machine or sealed.machine_type)
