"""The arm64 part of a fleet baseline: per register of the common stream, the richest
value every host takes, by the register's rule (:meth:`.rules.Rule.fold`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import UsageError
from . import regs
from .judge import section_of
from .rules import RULES

if TYPE_CHECKING:
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
    tells those hosts). Hosts of several CPU models: :func:`_cpu_models`."""
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
    cpus = _host_cpus(regsets)
    for rid in stream:
        kind = regs.kind_of(rid)
        if kind == "state" or (len(cpus) > 1 and rid in regs.IMPLEMENTATION_IDS):
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
    impl_cpus: tuple[tuple[int, int, int], ...] = ()
    if len(cpus) > 1:
        impl_cpus = _cpu_models(profiles, config, cpus, set(stream), values, conflicts)
    vls = [c.sve_vls for c in probed]
    sve = min(v for v in vls if v is not None) if None not in vls else None
    guest = _guest(profiles, probed, values, conflicts)
    return Arm64Body(config, sve, stream, values, impl_cpus, guest), conflicts


def _guest(profiles: list[Profile], probed: list[Any], values: dict[int, int],
           conflicts: list[str]) -> dict[int | str, tuple[str, int]]:
    """What a guest born anywhere in the fleet sees where ONE_REG does not say it: per
    register, each host's guest read of it -- the contract's value where that host gives
    the guest its ONE_REG value (a pin or the stream puts the contract's there), its own
    read where not. Hosts that disagree are a conflict (no pin here makes their guests
    agree), and the contract keeps the first host's, so the others refuse it. Firmware
    answers are kept only where every host's firmware registers are the contract's."""
    from .body import seen_shown

    views = [c.guest for c in probed]
    if any(v is None for v in views):
        lacking = [p.label for p, v in zip(profiles, views) if v is None]
        conflicts.append(f"no guest view from {', '.join(lacking)} (probe again with this abiguard): the contract "
                         "records none, so each move is judged on its destination's guest view alone")
        return {}
    out: dict[int | str, tuple[str, int]] = {}
    keys: set[int | str] = set()
    for v in views:
        keys |= set(v.registers) | set(v.faults)
    fw_same = all({r: x for r, x in (c.registers or {}).items() if r in regs.FW_BY_ID}
                  == {r: x for r, x in values.items() if r in regs.FW_BY_ID} for c in probed)
    if fw_same:
        keys |= set(views[0].firmware)
    for key in sorted(keys, key=lambda k: (isinstance(k, str), k)):
        seen = []
        for c, v in zip(probed, views):
            own = (c.registers or {}).get(key) if isinstance(key, int) else None
            passes = isinstance(key, int) and key not in v.faults and own is not None and v.registers.get(key) == own
            seen.append(("value", values[key]) if passes and key in values else v.seen(key))
        if any(x != seen[0] for x in seen):
            name = regs.reg_name(key) if isinstance(key, int) else key
            conflicts.append(f"{name}: the hosts' guests read " + ", ".join(
                f"{seen_shown(x)} on {p.label}" for p, x in zip(profiles, seen)) + ": no pin makes them agree, "
                "so the contract keeps the first and the other hosts refuse it")
        first = seen[0]
        if first is not None and (first[0] != "value" or not isinstance(key, int) or values.get(key) != first[1]):
            out[key] = first
    return out


def _host_cpus(regsets: list[dict[int, int | None]]) -> list[tuple[int, int, int]]:
    """Each host's (MIDR, REVIDR, AIDR), in the order the hosts were given, each once."""
    out: list[tuple[int, int, int]] = []
    for r in regsets:
        cpu = regs.cpu_of(r)
        if None not in cpu and cpu not in out:
            out.append(cpu)  # type: ignore[arg-type]
    return out


def _cpu_models(profiles: list[Profile], config: str, cpus: list[tuple[int, int, int]], stream: set[int],
                values: dict[int, int], conflicts: list[str]) -> tuple[tuple[int, int, int], ...]:
    """Several CPU models: the guest is shown the first host's CPU (the operator orders the
    hosts) and told every one of them through errata discovery, so it applies the
    workarounds of each CPU it may run on. Every host must be able to do both (Linux 6.16
    with KVM_CAP_ARM_WRITABLE_IMP_ID_REGS); where one cannot, that is a conflict, and the
    contract still shows the first host's CPU but tells the guest no other, so it runs only
    where that CPU is (:func:`.judge.cpu_problems`)."""
    from .judge import discovery_obstacle

    obstacles = [w for w in (discovery_obstacle(p, config) for p in profiles) if w]
    if regs.VENDOR_HYP_BMAP_2_ID not in stream:
        obstacles.append("VENDOR_HYP_BMAP_2 is not listed by every host, so the guest cannot be told the other CPUs")
    if len(cpus) > regs.MAX_IMPL_CPUS:
        obstacles.append(f"{len(cpus)} CPU implementations: abiguard_pin.so answers at most {regs.MAX_IMPL_CPUS}")
    for rid, value in zip(regs.IMPLEMENTATION_IDS, cpus[0]):
        values[rid] = value
    if obstacles:
        conflicts.append("the hosts have different CPU models (" + ", ".join(
            "/".join(f"{v:#x}" for v in c) for c in cpus) + ") and not every host can show a guest another "
            "CPU and tell it the others: " + "; ".join(obstacles) + f"; the contract shows {cpus[0][0]:#x} only")
        return ()
    values[regs.VENDOR_HYP_BMAP_2_ID] = values.get(regs.VENDOR_HYP_BMAP_2_ID, 0) | regs.DISCOVER_IMPL_BITS
    return tuple(cpus)


def host_report(contract: Contract, profile: Profile) -> dict[str, Any]:
    """Whether a VM booted on this host starts with the contract, and what stands in the
    way: the same answer the hook's ``prepare`` gives (:func:`.judge.realise`), so the
    baseline never promises a start the hook refuses. Values abiguard_pin.so writes at the
    start are no obstacle; they are listed as ``pins``."""
    from .judge import realise

    v = realise(contract, profile)
    return {
        "boots_with_contract": not v.problems,
        "cannot_pin": [p.line() for p in v.problems],
        "pins": [f"{regs.reg_name(rid)} = {value:#x} (abiguard_pin.so at start)"
                 for rid, value in sorted({**v.boot_pins, **v.keep_off}.items())],
    }
