"""arm64 verdicts: can a VM with this contract move to (or start on) that host with its
guest ABI unchanged?

Every register of the VM's stream is judged by the rule its kind names (:mod:`.rules`);
what QEMU does with a stream register the destination does not list is
:mod:`.cpreg`'s; a register the destination has and the stream lacks keeps the
destination's default, which widens the ABI unless it is neutral or pinned off.
"""
from __future__ import annotations

from ...model.problem import Problem, Verdict
from . import cpreg, regs
from .rules import RULES, Dest, can_pin

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

    from ...model.contract import Contract
    from ...model.problem import Policy
    from ...model.profile import Profile
    from .body import Arm64Body
    from .section import Arm64Kvm


def _h(v: int) -> str:
    return f"{v:#x}"


def section_of(profile: Profile) -> Arm64Kvm | None:
    from .section import Arm64Kvm

    s = profile.arch_section()
    return s if isinstance(s, Arm64Kvm) else None


def dest_for(profile: Profile, config: str) -> tuple[Dest | None, list[Problem]]:
    """The destination's registers for one vCPU configuration, or why it has none."""
    from ...uapi import arm64 as ids

    section = section_of(profile)
    probed = section.usable(config) if section is not None else None
    if section is None or probed is None or probed.registers is None:
        caps = profile.kvm.caps if profile.kvm is not None else {}
        lacking = [f for f in regs.config_features(config) if not caps.get(ids.ARM_FEATURE_CAP[f])]
        why = (f"its KVM does not offer {', '.join(lacking)}" if lacking
               else "that vCPU configuration was not probed there")
        return None, [Problem("vCPU configuration", None, None, config, "cannot create it", why,
                              "keep the VM on hosts that offer these vCPU features, or pin fewer",
                              pinnable=True)]
    from .guestreads import guest_view

    dest = Dest(profile.kernel_release, probed.registers, section.acceptance, section.masks,
                profile.qemu_version(), section.vm_caps.get(regs.IMP_CAP, 0) > 0)
    dest.guest = guest_view(profile, config)
    return dest, []


def _cpu_text(cpu: tuple[int | None, ...]) -> str:
    return "/".join("?" if v is None else f"{v:#x}" for v in cpu)


def cpu_problems(body: Arm64Body, dest: Dest) -> list[Problem]:
    """A guest may run on a CPU it was told about: its own (the contract's MIDR, REVIDR,
    AIDR) or one its errata discovery lists. Anywhere else it would miss that CPU's errata
    workarounds, whatever MIDR it is shown."""
    here = regs.cpu_of(dest.registers)          # the host CPU: its KVM's defaults
    own = tuple(v if v is not None else h for v, h in zip(body.own_cpu(), here))
    if None in here or here == own or here in body.impl_cpus:
        return []
    told = ", ".join(map(_cpu_text, body.impl_cpus)) if body.impl_cpus else f"only its own, {_cpu_text(own)}"
    # named by the first register that differs (MIDR for another model, REVIDR for a revision)
    i = next(i for i in range(3) if own[i] != here[i])
    rid = regs.IMPLEMENTATION_IDS[i]
    why = (f"another CPU implementation ({_cpu_text(here)} MIDR/REVIDR/AIDR): the guest was not told about it "
           f"(its errata discovery lists {told}), so it would miss this CPU's errata workarounds")
    # booted on (or pinned to a fleet with) a kernel before 6.16: no VENDOR_HYP_BMAP_2 in
    # its stream, and a stream never gains a register, so this VM can never be told
    never = regs.VENDOR_HYP_BMAP_2_ID not in body.stream
    if never:
        why += ("; its register stream has no VENDOR_HYP_BMAP_2 (its contract comes from a host or fleet with "
                "Linux < 6.16), so it can never be told")
    fix = ("keep the VM on hosts with its CPU model" if never else
           "pin the VM to a baseline of hosts that includes this one (abiguard baseline): it lists every CPU for "
           "the guest")
    return [Problem(regs.reg_name(rid), rid, None, _h(own[i]), f"has {_h(here[i])}",  # type: ignore[arg-type]
                    why, fix, pinnable=not never)]


def _fields(name: str, a: int, b: int) -> str | None:
    """The ID-register fields two values differ in, by name (None: no known field)."""
    from . import idregs

    if not idregs.has_fields(name):
        return None
    diffs, rest = idregs.field_diffs(name, a, b, 0)
    names = [d.field.name for d in diffs] + ([f"bits {rest:#x}"] if rest else [])
    return ", ".join(names) or None


def guest_here(body: Arm64Body, dest: Dest, name_of: Any) -> Verdict:
    """Where the guest would read something else here than it read where its contract comes
    from, and the pins that keep what it read. ONE_REG does not always say what a guest
    reads (:mod:`.guest`); where it does not, on either side, the guest's view
    (:func:`.guestreads.guest_view`) decides:

    - born where the guest read another value than ONE_REG's (``body.guest``), it keeps
      that value on a host whose guest reads the same; a host that gives the guest its
      ONE_REG value gives it the stream's instead -- unless the register is one such a host
      can show apart from the stream (:data:`.guestreads.PINNED_APART`: CTR_EL0, written
      from Linux 6.11) and its KVM takes the value: then it is pinned there (``boot_pins``)
      while QEMU's stream keeps its own value (``stream_values``; abiguard_pin.so
      translates), and what an unpinned VM would meet instead is in ``unpinned``;
    - here the guest reads this host's own value where this host's ONE_REG says another,
      whatever the stream carries;
    - registers outside ONE_REG (DCZID_EL0) and reads that trap compare as the guests saw
      them; firmware answers too, when this host's firmware registers are the contract's
      (otherwise the stream and pins decide them, judged by their rules).

    Never one traded for the other: a value no pin here can show is refused, naming the
    register, the field and both guest values.
    """
    from . import guestreads
    from .body import seen_shown

    out = Verdict([], [])
    here = dest.guest
    values = body.values
    if here is None:
        if body.guest:
            out.problems.append(Problem(
                "guest view", None, None, "a recorded guest view", "has none in its profile",
                "the host's probe did not run a guest there (its profile says why under 'unavailable', or it "
                "predates guest views), so abiguard cannot tell what the guest would read there",
                "probe the host again with this abiguard (abiguard probe)"))
        return out     # neither side ran a guest: ONE_REG alone, as before guest views
    if here.partial:
        out.notes.append(f"the guest's view here: {here.partial}")
        unknown = [k for k in body.guest if k not in here.registers]
        if unknown:
            out.problems.append(Problem(
                "guest view", None, None, f"a recorded guest view ({len(unknown)} item(s) beyond ONE_REG)",
                f"has only the lab's record of {', '.join(name_of(r) for r in sorted(here.registers))}",
                "the host's probe did not run a guest there, so abiguard cannot tell what else the guest "
                "would read there", "probe the host again with this abiguard (abiguard probe)"))

    def passes(rid: int) -> bool:
        return guestreads.passes(here, dest.registers, rid)

    firmware_same = {r: v for r, v in values.items() if r in regs.FW_BY_ID} == \
        {r: v for r, v in dest.registers.items() if r in regs.FW_BY_ID}
    keys: set[int | str] = set(body.guest) | set(here.faults)
    keys |= {rid for rid, v in here.registers.items() if not passes(rid)}
    if firmware_same and body.guest:
        keys |= set(here.firmware)
    if here.partial:
        keys &= set(here.registers)
    for key in sorted(keys, key=lambda k: (isinstance(k, str), k)):
        if isinstance(key, str) and not firmware_same:
            continue
        born: tuple[str, int] | None = body.guest.get(key)
        if born is None:
            if not body.guest and isinstance(key, str):
                continue   # a contract from before guest views says nothing of firmware answers
            if not (isinstance(key, int) and key in values):
                continue   # the contract says nothing of it
            born = ("value", values[key])
        now: tuple[str, int] | None = here.seen(key)
        through = isinstance(key, int) and passes(key) and key in values
        if through:
            assert isinstance(key, int)
            now = ("value", values[key])         # the stream's value reaches the guest here
        if now == born:
            continue
        if isinstance(key, int):
            name = name_of(key)
            field = _fields(name, born[1], now[1]) if now is not None and born[0] == now[0] == "value" else None
            reg_id: int | None = key
        else:
            name, field, reg_id = key, None, None
        source = f"{seen_shown(born)} as its guest read it"
        if through and key in guestreads.PINNED_APART and born[0] == "value":
            assert isinstance(key, int) and now is not None and reg_id is not None
            trouble = RULES[regs.kind_of(key)].check(key, name, born[1], dest)
            if trouble:
                shown = f"would give the guest {seen_shown(now)}"
                out.problems += [Problem(p.register, p.reg_id, p.field, source, shown,
                                         f"no pin here shows the guest what it read: the register {p.destination} "
                                         f"where written ({p.why})", p.fix) for p in trouble]
                continue
            out.boot_pins[key] = born[1]
            out.stream_values[key] = values[key]
            out.pin_notes.append(f"{name} ({key:#x}) pinned to {born[1]:#x}, the value its guest read where its "
                                 f"contract comes from (this host's guest would read {now[1]:#x}); QEMU's stream "
                                 f"keeps {values[key]:#x} (abiguard_pin.so translates)")
            out.notes.append(out.pin_notes[-1])
            out.unpinned.append(Problem(
                name, reg_id, field, source, f"would give the guest {seen_shown(now)}",
                "an unpinned VM has no pin: this host traps the guest's read and gives it the stream's value, "
                "not the CPU's own its guest read", f"pin the VM to a contract (abiguard baseline + pin): this host "
                f"then shows its guest {born[1]:#x}", pinnable=True))
            continue
        why = ("the guest read it from the CPU or KVM's emulation, not the value ONE_REG (the register stream) "
               "carries" if isinstance(key, int) else "KVM's firmware answers the guest differently here")
        if born[0] == "fault" or (now is not None and now[0] == "fault"):
            why = "a read the guest makes traps on one side and not the other (or with another exception class)"
        out.problems.append(Problem(name, reg_id, field, source, f"would give the guest {seen_shown(now)}",
                                    f"the guest's own view would change: {why}",
                                    "keep the VM on hosts whose guests read the same (abiguard matrix shows which)"))
    return out


def discovery_obstacle(profile: Profile, config: str) -> str | None:
    """Why this host cannot show a guest another CPU and answer its errata discovery
    (None: it can): the capability (Linux 6.15) and VENDOR_HYP_BMAP_2's discovery bits
    (Linux 6.16), which abiguard_pin.so needs both of."""
    dest, _ = dest_for(profile, config)
    if dest is None:
        return None
    if not dest.imp_writable:
        return (f"{profile.label}: its KVM ({profile.kernel_release}) lacks {regs.IMP_CAP} (Linux >= 6.15), "
                "so it shows a guest only its own CPU's MIDR_EL1")
    known = dest.acceptance.get("VENDOR_HYP_BMAP_2")
    if regs.VENDOR_HYP_BMAP_2_ID not in dest.registers or not isinstance(known, int) or \
            known & regs.DISCOVER_IMPL_BITS != regs.DISCOVER_IMPL_BITS:
        return (f"{profile.label}: its KVM ({profile.kernel_release}) has no VENDOR_HYP_BMAP_2 with "
                "DISCOVER_IMPL_VER/_CPUS (Linux >= 6.16), so the guest cannot be told the other CPUs; abiguard "
                "refuses rather than hide a CPU from it")
    return None


def common_config(profiles: list[Profile]) -> str | None:
    """The richest vCPU configuration every profile offers (None: there is none)."""
    sets = []
    for p in profiles:
        s = section_of(p)
        sets.append({c for c in (s.configs if s is not None else {}) if s is not None and s.usable(c)})
    common = set.intersection(*sets) if sets else set()
    return max(common, key=regs.config_width) if common else None


def check(contract: Contract, dest_profile: Profile, policy: Policy, stream: tuple[int, ...] | None) -> Verdict:
    """An incoming migration or restore of this contract, carrying ``stream`` (the VM's
    register list now: its last hop's, from the stamp; default the contract's)."""
    body: Arm64Body = contract.body  # type: ignore[assignment]
    dest, problems = dest_for(dest_profile, body.config)
    if dest is None:
        return Verdict(problems, [])
    section = section_of(dest_profile)
    assert section is not None
    notes: list[str] = []
    stream = stream if stream is not None else body.stream
    stream_set = set(stream)
    values = body.values
    qemu_rule = cpreg.rule_for(dest.qemu_version or policy.qemu)
    dest_ids = set(dest.registers)
    # a hypercall bitmap the stream carries and the contract lacks is 0 in the VM: a start
    # under abiguard keeps it off (kept_off, extras_carried), so QEMU's rule sees that value
    carried = {rid: regs.NEUTRAL_VALUE for rid in stream if rid not in values and regs.kind_of(rid) == "bitmap"}
    outcome = cpreg.stream_outcome(qemu_rule, stream, dest_ids, {**carried, **values} if carried else values)
    failing, dropped = set(outcome.failing), set(outcome.dropped)
    if outcome.length_fails:
        problems.append(Problem("cpreg_vmstate_array_len", None, None, f"{len(stream)} registers",
                                f"lists {len(dest_ids)}", f"{qemu_rule.name} refuses a register stream "
                                "longer than its own list before looking at any register",
                                "a VM booted on a kernel that lists more registers cannot move here"))
    boot_pins: dict[int, int] = {}
    judged_bad: set[int] = set()
    name_of = section.name_of      # names only for what is reported: most registers are fine
    for rid in stream:
        if rid not in dest_ids:
            name = name_of(rid)
            if rid in dropped:
                lost = values.get(rid)
                notes.append(f"{name} ({rid:#x}) is unknown to the destination's kernel; {qemu_rule.name} "
                             f"drops it" + (f" and its value {lost:#x} with it" if lost else ""))
                if lost:
                    problems.append(Problem(name, rid, None, f"{lost:#x}", "does not list it",
                                            f"{qemu_rule.name} drops the register, so the guest loses "
                                            "what it gave", "keep the VM on hosts with this register"))
            elif rid in failing:
                problems.append(Problem(name, rid, None, "it in its migration stream",
                                        "does not list it (KVM_GET_REG_LIST)",
                                        f"{qemu_rule.name} fails loading a register the destination's "
                                        "kernel does not know",
                                        "a VM booted on a kernel with this register cannot move to this one"))
            continue
        value = values.get(rid)
        if value is None:
            continue
        row = RULES[regs.kind_of(rid)]
        if row.default_is_fine and value == dest.registers.get(rid):
            continue
        trouble = row.check(rid, name_of(rid), value, dest)
        if not trouble and row.host_property:
            trouble = row.above(rid, name_of(rid), value, dest.registers.get(rid))
        problems += trouble
        if trouble:
            judged_bad.add(rid)
    problems += cpu_problems(body, dest)
    guest = guest_here(body, dest, name_of)
    problems += guest.problems
    notes += guest.notes
    # the stream carries the values in; a pin keeps each there across every reset. A
    # contract value the stream no longer carries (an earlier hop's host lacked the
    # register) is given back by its pin where this host has the register.
    # Every contract value is judged or pinned, whatever the stream and the policy: a value
    # the stream lacks that this host cannot give is refused, never dropped unsaid.
    for rid, value in values.items():
        default = dest.registers.get(rid)
        if rid not in stream_set and rid not in judged_bad:
            if default is None:
                if value:
                    problems.append(Problem(name_of(rid), rid, None, f"{value:#x}", "does not list it",
                                            "the guest would lose the value its contract gives it",
                                            "keep the VM on hosts with this register"))
                continue
            trouble = RULES[regs.kind_of(rid)].check(rid, name_of(rid), value, dest)
            if trouble:
                problems += trouble
                judged_bad.add(rid)
                continue
        if default is None or default == value or not can_pin(rid) or rid in judged_bad:
            continue
        boot_pins[rid] = value
    probed = section.usable(body.config)
    if body.sve_vls and "SVE" in body.features() and probed is not None:
        if probed.sve_vls != body.sve_vls:
            problems.append(Problem("SVE vector lengths", regs.SVE_VLS_ID, None, _h(body.sve_vls),
                                    f"offers {None if probed.sve_vls is None else _h(probed.sve_vls)}",
                                    "KVM accepts only the host's set of lengths",
                                    "pin SVE lengths every host offers (sve<N>=off in the CPU model)",
                                    pinnable=True))
    keep_off: dict[int, int] = {}
    widen = _widening(stream_set, values, dest, section, keep_off)
    for w in widen:
        if policy.allow_widening:
            notes.append("widening allowed by policy: " + w.line())
        else:
            problems.append(w)
    hidden = shaped(body, dest)
    for rid in sorted(hidden & stream_set):
        problems.append(Problem(name_of(rid), rid, None, "it in its register stream",
                                "hides it to keep the contract's stream",
                                "the VM carries a register its contract's stream does not have (a stamp from a "
                                "host that did not keep the contract's stream)", "start the VM again under its "
                                "contract (abiguard pin) before moving it here"))
    boot_pins.update(guest.boot_pins)
    v = Verdict(problems, notes, boot_pins, keep_off)
    v.hidden = tuple(sorted(hidden))
    v.stream_values = guest.stream_values
    v.unpinned, v.pin_notes = guest.unpinned, guest.pin_notes
    if hidden:
        notes.append(_hidden_note(hidden, dest))
    return v


def shaped(body: Arm64Body, dest: Dest) -> set[int]:
    """The registers abiguard_pin.so hides from QEMU's KVM_GET_REG_LIST on this host so the
    VM carries its contract's stream: every register the host lists beyond it, whenever
    one of them cannot ride along in the stream (:func:`extras_carried`) -- e.g. the
    CCSIDR indices a kernel >= 6.3 always lists (CSSELR_MAX of them) where the contract's
    hosts list only the caches they have. Empty when the host's own list can be carried.
    What KVM then keeps at its default must be nothing the guest sees
    (:func:`hide_obstacle`)."""
    stream_set = set(body.stream)
    extras = set(dest.registers) - stream_set
    return extras if extras - extras_carried(stream_set, dest) else set()


def hide_obstacle(rid: int, default: int | None, body: Arm64Body, dest: Dest) -> str | None:
    """Why the guest would see a hidden register's default (None: it cannot, or has nothing
    there): a cache level the VM's CLIDR reports, an ID register or firmware value that is
    not neutral. Guest-run state is not ABI: the contract's own hosts do not migrate it
    either (their stream lacks it)."""
    kind = regs.kind_of(rid)
    if kind == "state":
        return None
    if kind == "ccsidr":
        clidr = body.values.get(regs.CLIDR_EL1_ID, dest.registers.get(regs.CLIDR_EL1_ID) or 0)
        return None if not regs.ccsidr_visible(rid, clidr) else "the VM's CLIDR_EL1 reports this cache level"
    if kind == "bitmap" and (default == regs.NEUTRAL_VALUE or can_pin(rid)):
        return None      # 0 already, or kept off by a pin (kept_off)
    if default == regs.NEUTRAL_VALUE:
        return None
    return f"its default {default if default is None else hex(default)} is visible to the guest"


def _hidden_note(hidden: set[int], dest: Dest) -> str:
    state = sorted(r for r in hidden if regs.kind_of(r) == "state")
    text = (f"{len(hidden)} register(s) this host lists beyond the contract's stream are hidden from QEMU "
            "(abiguard_pin.so filters KVM_GET_REG_LIST), so the VM carries its contract's stream")
    if state:
        text += ("; guest-run state among them (" + ", ".join(regs.reg_name(r) for r in state)
                 + ") is not migrated, as on the contract's hosts")
    return text


def _widening(stream_set: set[int], values: dict[int, int], dest: Dest, section: Arm64Kvm,
              keep_off: dict[int, int]) -> list[Problem]:
    """Registers the destination has and the stream lacks: they keep the destination's
    default, so a non-neutral one gives the guest something it was not given. Bitmaps are
    kept off by a pin where the library can (``keep_off``, filled in here)."""
    clidr = values.get(regs.CLIDR_EL1_ID)
    if clidr is None:
        clidr = dest.registers.get(regs.CLIDR_EL1_ID) or 0
    keep_off.update(kept_off(stream_set, dest))
    out = []
    for rid, default in dest.registers.items():
        if rid in stream_set:
            continue
        kind = regs.kind_of(rid)
        if default is None or kind == "state" or default == regs.NEUTRAL_VALUE:
            continue
        if kind == "ccsidr" and not regs.ccsidr_visible(rid, clidr):
            continue  # a cache level the VM's CLIDR does not report: nothing the guest can use
        out.append(Problem(section.name_of(rid), rid, None, "no such register", f"adds it with {default:#x}",
                           "registers a stream lacks keep the destination's default: the guest would see "
                           "more than it was given", "allow widening by policy, pin the register on the "
                           "destination, or keep the VM on hosts without this register", "widen", True,
                           pin=keep_off.get(rid)))
    return out


def kept_off(stream_set: set[int], dest: Dest) -> dict[int, int]:
    """Hypercall bitmaps the destination has and the stream lacks, whose default is not
    neutral: a pin keeps each at 0 there whatever the widening policy, since what the VM
    never had stays off."""
    return {rid: regs.NEUTRAL_VALUE for rid, default in dest.registers.items()
            if rid not in stream_set and regs.kind_of(rid) == "bitmap" and can_pin(rid)
            and (default is None or default != regs.NEUTRAL_VALUE)}


def check_pair(source: Profile, dest: Profile, policy: Policy) -> Verdict:
    """A VM booted on the source with defaults, moving to the destination. When the
    destination cannot create the source's default vCPU configuration, the richest
    configuration both offer is judged too, so the answer says what else stands in the way."""
    from ...model import contract

    v = _unpinned(check(contract.from_profile(source), dest, policy, None))
    config_problems = [p for p in v.problems if p.register == "vCPU configuration"]
    if not config_problems:
        return v
    best = common_config([source, dest])
    if best is None:
        return v
    narrower = _unpinned(check(contract.from_profile(source, best), dest, policy, None))
    return Verdict(config_problems + narrower.problems, narrower.notes)


def _unpinned(v: Verdict) -> Verdict:
    """A VM booted with QEMU's defaults has no pins: what only a pin keeps (the guest's
    CTR_EL0 shown apart from the stream) is a problem for it."""
    if v.unpinned:
        v.problems += v.unpinned
        v.notes = [n for n in v.notes if n not in v.pin_notes]
    return v


def boot_values(contract: Contract, profile: Profile) -> Verdict:
    """What writing the contract's values at a plain start on this host takes: the pins
    abiguard_pin.so must write (``boot_pins``), and the values no pin can realise or the
    host's KVM refuses (``problems``)."""
    body: Arm64Body = contract.body  # type: ignore[assignment]
    dest, problems = dest_for(profile, body.config)
    if dest is None:
        return Verdict(problems, [])
    section = section_of(profile)
    assert section is not None
    pins: dict[int, int] = {}
    for rid, value in body.values.items():
        have = dest.registers.get(rid)
        if have is None or have == value:
            continue
        name = section.name_of(rid)
        kind = regs.kind_of(rid)
        if RULES[kind].host_property:
            problems += RULES[kind].above(rid, name, value, have)
            continue
        trouble = RULES[kind].check(rid, name, value, dest)
        if trouble:
            problems += trouble
        elif can_pin(rid):
            pins[rid] = value
        else:
            problems.append(Problem(name, rid, None, _h(value), f"would start it with {have:#x}",
                                    f"no pin realises a {kind} register (released QEMU has no property "
                                    "for it either)", "boot the VM on a host whose defaults are the contract's"))
    problems += cpu_problems(body, dest)
    guest = guest_here(body, dest, section.name_of)
    problems += guest.problems
    pins.update(guest.boot_pins)
    v = Verdict(problems, guest.notes, pins, kept_off(set(body.stream), dest))
    v.stream_values = guest.stream_values
    v.unpinned, v.pin_notes = guest.unpinned, guest.pin_notes
    return v


def realise(contract: Contract, profile: Profile) -> Verdict:
    """A plain start of this contract on this host: released QEMU has no property for
    firmware or ID registers, so the VM starts with the host's register list and
    defaults, except where abiguard_pin.so writes a value (:func:`boot_values`)."""
    body: Arm64Body = contract.body  # type: ignore[assignment]
    v = boot_values(contract, profile)
    dest, _ = dest_for(profile, body.config)
    if dest is None:
        return v
    own = dest.registers
    stream = set(body.stream)
    hidden = shaped(body, dest)
    v.hidden = tuple(sorted(hidden))
    for rid in sorted(hidden):
        why = hide_obstacle(rid, own.get(rid), body, dest)
        if why is not None:
            v.problems.append(Problem(regs.reg_name(rid), rid, None, "no such register", "lists it",
                                      f"hidden from QEMU so the VM keeps its contract's stream, KVM keeps it at its "
                                      f"default, and {why}", "boot the VM on a host of its contract's generation"))
    if hidden:
        v.notes.append(_hidden_note(hidden, dest))
    for rid in sorted(stream - set(own)):
        v.problems.append(Problem(regs.reg_name(rid), rid, None, "it in its contract", "does not list it",
                                  "this kernel lacks the register",
                                  "boot the VM on a host of its contract's generation"))
    return v


def boot_stream(contract: Contract, profile: Profile) -> tuple[int, ...]:
    """The register stream a VM started here under its contract carries: QEMU builds it from
    this host's KVM_GET_REG_LIST, which :func:`realise` lets exceed the contract's stream
    only by the hypercall bitmaps the library keeps at 0."""
    body: Arm64Body = contract.body  # type: ignore[assignment]
    dest, _ = dest_for(profile, body.config)
    if dest is None:
        return tuple(body.stream)
    if shaped(body, dest):
        return tuple(body.stream)
    return tuple(sorted(set(body.stream) | extras_carried(set(body.stream), dest)))


def stamp_stream(contract: Contract, profile: Profile) -> tuple[int, ...] | None:
    """The stream a VM carries from this host on after an allowed arrival: the host's list,
    less what abiguard_pin.so hides there (:func:`shaped`)."""
    body: Arm64Body = contract.body  # type: ignore[assignment]
    dest, _ = dest_for(profile, body.config)
    if dest is None:
        return None
    return tuple(sorted(set(dest.registers) - shaped(body, dest)))


def extras_carried(stream_set: set[int], dest: Dest, off: dict[int, int] | None = None) -> set[int]:
    """The registers this host lists beyond the contract's stream that a start may give the
    VM without widening its ABI: guest-run state (TCR2_EL1, PIR_EL1, ...: what the guest may
    use is decided by the ID registers, which are judged), and hypercall bitmaps left at 0
    (0 by default, or kept off by a pin, :func:`kept_off`), so the guest sees no service it
    was not given. They ride in the VM's stream, which the stamp records
    (:func:`boot_stream`) and every destination's QEMU is judged on. ``off``: the
    :func:`kept_off` of this stream and host, when the caller has it already."""
    if off is None:
        off = kept_off(stream_set, dest)
    return {rid for rid, default in dest.registers.items() if rid not in stream_set and (
        regs.kind_of(rid) == "state"
        or (regs.kind_of(rid) == "bitmap" and (default == regs.NEUTRAL_VALUE or rid in off)))}
