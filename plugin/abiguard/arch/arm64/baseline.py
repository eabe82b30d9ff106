"""The arm64 part of a fleet baseline: per register of the common stream, the richest
value every host takes, by the register's rule (:meth:`.rules.Rule.fold`)."""
from __future__ import annotations

from ...errors import UsageError
from . import regs
from .judge import section_of
from .rules import RULES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ...model.contract import Contract
    from ...model.profile import Profile
    from .body import Arm64Body
    from .section import Arm64Kvm


def baseline(profiles: list[Profile], config: str | None) -> tuple[Arm64Body, list[str]]:
    """PSCI -> the highest version every host accepts; SMCCC workarounds -> the highest
    level every host accepts; hypercall bitmaps -> the AND of the defaults; ID registers
    -> per field the kernel's safe value over all hosts, bits outside known fields must
    agree; CCSIDR -> must agree. Registers listed by some hosts only are left out of the
    stream (released QEMU carries every register its kernel lists: :func:`host_report`
    tells those hosts)."""
    from .body import Arm64Body

    sections: list[Arm64Kvm] = []
    for p in profiles:
        s = section_of(p)
        if s is None:
            raise UsageError(f"{p.label}: the profile has no arm64 KVM section (was /dev/kvm there?): "
                             "probe the host again")
        sections.append(s)
    common = set.intersection(*({c for c in s.configs if s.usable(c)} for s in sections))
    if config is None:
        if not common:
            raise UsageError("no vCPU configuration was probed on every host")
        config = max(common, key=regs.config_width)
    elif config not in common:
        raise UsageError(f"vCPU configuration {config!r} is not available on every host "
                         f"(common: {', '.join(sorted(common)) or 'none'})")
    probed = [s.configs[config] for s in sections]
    regsets = [c.registers or {} for c in probed]
    stream = tuple(sorted(set.intersection(*(set(r) for r in regsets))))
    values: dict[int, int] = {}
    conflicts: list[str] = []
    for rid in stream:
        kind = regs.kind_of(rid)
        if kind == "state":
            continue
        raw = [r[rid] for r in regsets]
        if any(v is None for v in raw):
            continue
        name = regs.reg_name(rid)
        value, conflict = RULES[kind].fold(name, [v for v in raw if v is not None],
                                           [s.acceptance.get(name) for s in sections])
        if conflict:
            conflicts.append(conflict)
        if value is not None:
            values[rid] = value
    vls = [c.sve_vls for c in probed]
    sve = min(v for v in vls if v is not None) if None not in vls else None
    return Arm64Body(config, sve, stream, values), conflicts


def host_report(contract: Contract, profile: Profile) -> dict[str, Any]:
    """Whether a VM booted on this host starts with the contract, and what it cannot pin."""
    body: Arm64Body = contract.body  # type: ignore[assignment]
    section = section_of(profile)
    probed = section.usable(body.config) if section is not None else None
    own = (probed.registers if probed is not None else None) or {}
    stream = set(body.stream)
    extra = [regs.reg_name(r) for r in own if r not in stream]
    differs = [regs.reg_name(r) for r, v in body.values.items() if own.get(r) is not None and own[r] != v]
    return {
        "boots_with_contract": not extra and not differs,
        "cannot_pin": (
            [f"{n}: a VM booted here starts with this host's value; released QEMU has no property "
             "for it (needs abiguard's register enforcement)" for n in differs]
            + [f"{n}: listed by this kernel, not by every host; QEMU carries it in the stream of a "
               "VM booted here, so such a VM cannot move to hosts that lack it" for n in extra]),
    }
