"""The arm64 part of a fleet baseline: per register of the common stream, the richest
value every host takes, by the register's rule (:meth:`.rules.Rule.fold`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import UsageError
from . import idregs, regs
from .judge import dest_for, section_of
from .rules import RULES

if TYPE_CHECKING:
    from ...model.contract import Contract
    from ...model.profile import Profile
    from .body import Arm64Body
    from .section import Arm64Kvm


def baseline(profiles: list[Profile], config: str | None) -> tuple[Arm64Body, list[str]]:
    """PSCI -> the highest version every host accepts; SMCCC workarounds -> the highest
    level every host accepts; hypercall bitmaps -> the AND of the defaults; ID registers
    -> per field the kernel's safe value over all hosts, except that a field some host
    cannot change (outside its writable mask; every field before Linux 6.7) is that host's
    value, which every other host must take (:func:`.idregs.fold_fixed`); bits outside
    known fields must agree; CLIDR/CCSIDR -> a value every host's KVM takes
    (:func:`_fold_cache`). Registers listed by some hosts only are left out of the
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
    dests = None
    # hosts by kernel in messages, by label where two share a kernel (CPU models)
    releases = [p.kernel_release for p in profiles]
    names = [r if releases.count(r) == 1 else p.label for r, p in zip(releases, profiles)]
    for rid in stream:
        kind = regs.kind_of(rid)
        if kind == "state" or (len(cpus) > 1 and rid in regs.IMPLEMENTATION_IDS):
            continue
        raw = [r[rid] for r in regsets]
        if any(v is None for v in raw):
            continue
        name = regs.reg_name(rid)
        value: int | None
        if kind in CACHE_KINDS:
            if dests is None:
                dests = [dest_for(p, config)[0] for p in profiles]
            value, conflict = _fold_cache(rid, name, [v for v in raw if v is not None], dests)
            if conflict:
                conflicts.append(conflict)
        elif kind == "idreg" and idregs.has_fields(name):
            # a field a host cannot change is that host's value, or no contract has it
            value, found = idregs.fold_fixed(name, [v for v in raw if v is not None],
                                             [None if s.masks is None else s.masks.get(name, 0) for s in sections],
                                             names)
            conflicts += found
        else:
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
    guest = _guest(profiles, config, probed, values, conflicts)
    return Arm64Body(config, sve, stream, values, impl_cpus, guest), conflicts


#: the cache description: a host's KVM takes another value within its rule (Linux >= 6.3)
#: or only its own, so the fleet's value is one every host takes, the fixed hosts' first
CACHE_KINDS = ("ccsidr", "clidr")


def _fold_cache(rid: int, name: str, values: list[int], dests: list[Any]) -> tuple[int | None, str | None]:
    """The value of a CLIDR/CCSIDR every host takes (:meth:`.rules.Rule.check` against
    each): a host whose KVM takes only its own value (before Linux 6.3) decides; among
    hosts that take others, the first host's value that all of them take."""
    if len(set(values)) == 1:
        return values[0], None
    fixed = [v for v, d in zip(values, dests) if d is not None and not d.cache_writable()]
    candidates = list(dict.fromkeys(fixed + values))
    rule = RULES[regs.kind_of(rid)]
    for value in candidates:
        if all(d is not None and not rule.check(rid, name, value, d) for d in dests):
            return value, None
    if len(set(fixed)) > 1:
        why = "hosts before Linux 6.3 take only their own value, and theirs differ"
    else:
        first = next(d for d in dests if d is not None and rule.check(rid, name, candidates[0], d))
        why = rule.check(rid, name, candidates[0], first)[0].line()
    return values[0], f"{name}: no value every host takes: {why}"


def _guest(profiles: list[Profile], config: str, probed: list[Any], values: dict[int, int],
           conflicts: list[str]) -> dict[int | str, tuple[str, int]]:
    """What a guest born anywhere in the fleet sees where ONE_REG does not say it
    (:func:`.guestreads.guest_view` of each host): per item, each host's guest read of it --
    the contract's value where that host gives the guest its ONE_REG value (a pin or the
    stream puts the contract's there), its own read where not. A host that gives the guest
    its ONE_REG value of a register it can show apart from the stream
    (:data:`.guestreads.PINNED_APART`: CTR_EL0) is pinned to what the others' guests read
    (:func:`.judge.guest_here`; whether its KVM takes the value is its host check's), so the
    fleet's value is that of the hosts that cannot change it: before Linux 6.3 KVM does not
    trap the read and the guest reads the CPU's own CTR_EL0, while ONE_REG (and so the
    stream) carries the sanitised one, which that KVM insists on at restore. Hosts whose
    guests read differently and no pin changes are a conflict, and the contract keeps the
    first such host's, so the others refuse it: said, never traded silently. Firmware
    answers are kept only where every host's firmware registers are the contract's."""
    from . import guestreads
    from .body import seen_shown

    found = [guestreads.guest_view(p, config) for p in profiles]
    views = [v for v in found if v is not None]
    if len(views) < len(found):
        lacking = [p.label for p, v in zip(profiles, found) if v is None]
        conflicts.append(f"no guest view from {', '.join(lacking)} (probe again with this abiguard): the contract "
                         "records none, so each move is judged on its destination's guest view alone")
        return {}
    out: dict[int | str, tuple[str, int]] = {}
    keys: set[int | str] = set()
    for v in views:
        keys |= set(v.registers) | set(v.faults)
    partial = [(p, v) for p, v in zip(profiles, views) if v.partial]
    for p, v in partial:
        keys &= set(v.registers)
        conflicts.append(f"{p.label}: {v.partial}; the contract records only that of the guest's view")
    fw_same = all({r: x for r, x in (c.registers or {}).items() if r in regs.FW_BY_ID}
                  == {r: x for r, x in values.items() if r in regs.FW_BY_ID} for c in probed)
    if fw_same and not partial:
        keys |= set(views[0].firmware)
    for key in sorted(keys, key=lambda k: (isinstance(k, str), k)):
        seen = []
        pinned = []     # hosts that show the guest the contract's guest value by a pin
        for c, v in zip(probed, views):
            passes = guestreads.passes(v, c.registers or {}, key)
            seen.append(("value", values[key]) if passes and key in values else v.seen(key))
            pinned.append(passes and key in values and key in guestreads.PINNED_APART)
        fixed = [(p, x) for p, x, f in zip(profiles, seen, pinned) if not f]
        if any(x != fixed[0][1] for _, x in fixed):
            name = regs.reg_name(key) if isinstance(key, int) else key
            conflicts.append(f"{name}: the hosts' guests read " + ", ".join(
                f"{seen_shown(x)} on {p.label}" for p, x in fixed) + ": no pin makes them agree, "
                "so the contract keeps the first and the other hosts refuse it")
        first = fixed[0][1] if fixed else seen[0]
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
        "pins": [f"{regs.reg_name(rid)} = {value:#x} (abiguard_pin.so at start"
                 + (f"; QEMU's stream carries {v.stream_values[rid]:#x})" if rid in v.stream_values else ")")
                 for rid, value in sorted({**v.boot_pins, **v.keep_off}.items())]
        + [f"{regs.reg_name(rid)} hidden from QEMU's register list (abiguard_pin.so): not in the contract's "
           "stream" for rid in v.hidden],
    }
