"""Which registers abiguard_pin.so writes for a contract on a host, planned from the
verdict that judged them (:attr:`Verdict.boot_pins`, :attr:`Verdict.keep_off`): the
values that differ from the host's defaults and the host accepts, and the hypercall
bitmaps the host adds and the VM never had, kept at 0.

Where the host's QEMU offers a native ``SYSREG_<REG>_<FIELD>`` property for every changed
field of an ID register (seen in its host CPU model expansion), that register is realised
through ``-cpu`` properties instead, never both.
"""
from __future__ import annotations

from ...errors import EnforceError
from ...model.pins import Pin
from ...preload import MAX_PINS
from . import regs
from .judge import section_of

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from ...model.contract import Contract
    from ...model.problem import Problem, Verdict
    from ...model.profile import Profile
    from .body import Arm64Body


def native_properties(profile: Profile) -> set[str]:
    """``SYSREG_<REG>_<FIELD>`` properties of the host QEMU's ``-cpu host`` (model expansion)."""
    props = (profile.qemu.host_cpu_props if profile.qemu is not None else None) or {}
    return {p for p in props if p.startswith("SYSREG_")}


def plan(contract: Contract, profile: Profile, verdict: Verdict, explicit: bool = False,
         stream: tuple[int, ...] | None = None) -> list[Pin]:
    """The pins realising ``verdict`` on ``profile``'s host.

    :param explicit: also pin the firmware values equal to the host's defaults, and keep
        every bitmap the stream lacks at 0 even where the host's default is 0 already
    :param stream: the VM's stream when it is not the contract's (explicit mode only)
    :raise EnforceError: more pins than the library takes
    """
    body: Arm64Body = contract.body  # type: ignore[assignment]
    section = section_of(profile)
    probed = section.usable(body.config) if section is not None else None
    if section is None or probed is None or probed.registers is None:
        return []
    host = probed.registers

    def default(rid: int) -> str:
        value = host.get(rid)
        return "None" if value is None else f"{value:#x}"

    want: dict[int, tuple[int, str]] = {}
    for rid, value in verdict.boot_pins.items():
        what = "contract value" if rid not in verdict.stream_values else \
            "what the guest reads on the contract's hosts before Linux 6.3"
        want[rid] = (value, f"{what} (host default {default(rid)})")
    if explicit:
        for rid, value in body.values.items():
            if regs.kind_of(rid) in ("psci", "bitmap") and rid in host and host[rid] == value:
                want[rid] = (value, "contract value (the host's default, pinned explicitly)")
        have = set(stream if stream is not None else body.stream)
        for rid in host:
            if rid not in have and regs.kind_of(rid) == "bitmap":
                want[rid] = (regs.NEUTRAL_VALUE, f"absent from the VM's stream: kept off (host default {default(rid)})")
    for rid, value in verdict.keep_off.items():
        want[rid] = (value, f"absent from the VM's stream: kept off (host default {default(rid)})")
    if len(want) > MAX_PINS:
        raise EnforceError(profile.name, [f"{len(want)} registers: the library pins at most {MAX_PINS}"])
    native = native_properties(profile)
    pins: list[Pin] = []
    for rid, (value, why) in sorted(want.items()):
        if native and regs.kind_of(rid) == "idreg":
            from . import idregs

            reg = idregs.REG_BY_ID[rid]
            base = host.get(rid) or 0
            changed = [f for f in idregs.fields_of(reg.name) if f.raw(value ^ base)]
            props = {f"SYSREG_{reg.name.removesuffix('_EL1')}_{f.name}": f.raw(value) for f in changed}
            if props and all(p in native for p in props):
                pins.append(Pin(rid, reg.name, value, "cpu-property", why, props))
                continue
        pins.append(Pin(rid, section.name_of(rid), value, "preload", why, stream=verdict.stream_values.get(rid)))
    for rid in verdict.hidden:
        pins.append(Pin(rid, section.name_of(rid), 0, "hide",
                        f"listed here, not in the contract's stream (host default {default(rid)})"))
    if pins:
        # errata discovery: every host answers the same list (the contract's), whichever CPU it is
        for i, (midr, revidr, aidr) in enumerate(body.impl_cpus):
            pins.append(Pin(-1 - i, f"implementation CPU {i}", midr, "impl-cpu",
                            "told to the guest (errata discovery, DISCOVER_IMPL_CPUS)",
                            {"midr": midr, "revidr": revidr, "aidr": aidr}))
    return pins


def check(pins: dict[int, int], profile: Profile, config: str) -> list[Problem]:
    """Why each of these pins cannot be realised on this host (empty: all fine): the same
    rule rows that judge a migration, plus what the library itself can write."""
    from ...model.problem import Problem
    from .judge import dest_for
    from .rules import RULES

    dest, problems = dest_for(profile, config)
    if dest is None:
        return problems
    section = section_of(profile)
    assert section is not None
    if len(pins) > MAX_PINS:
        problems.append(Problem("pins", None, None, f"{len(pins)} registers", f"the library pins at most {MAX_PINS}",
                                "abiguard_pin.so has room for that many", "pin fewer registers"))
    for rid, value in sorted(pins.items()):
        name = section.name_of(rid)
        why = _unpinnable(rid, value, dest.registers)
        if why is not None:
            problems.append(Problem(name, rid, None, f"{value:#x}" if 0 <= value < 1 << 64 else str(value),
                                    "cannot take it as a pin", why[0], why[1]))
            continue
        problems += RULES[regs.kind_of(rid)].check(rid, name, value, dest)
    return problems


def _unpinnable(rid: int, value: int, host: dict[int, int | None]) -> tuple[str, str] | None:
    """(why, fix) when no pin can write this value here, before any rule is asked."""
    from .rules import RULES

    if not 0 <= value < 1 << 64:
        return "the value is not a 64-bit register value", "give a value below 2**64"
    if not regs.preload_allows(rid):
        return ("not enforceable (the library pins firmware pseudo-registers and ID registers op0=3, "
                "op1=0, CRn=0 only)", "leave it to the host's default")
    if rid not in host:
        return "this host's KVM does not list it (KVM_GET_REG_LIST)", "pin only registers the host has"
    kind = regs.kind_of(rid)
    if kind == "workaround":
        return ("a mitigation level is a host property (CPU errata, mitigations=): never pinned",
                "keep the VM on hosts with at least this level")
    rule = RULES.get(kind)
    if rule is None or not rule.pinnable:
        return f"a {kind} register: no pin realises it", "leave it to the host's default"
    return None


def for_start(contract: Contract, profile: Profile, explicit: bool = False) -> list[Pin]:
    """The pins a plain start of this contract on this host needs (``abiguard pin``);
    EnforceError listing every value the host's KVM refuses or no pin realises."""
    from .judge import boot_values, dest_for, shaped

    body: Arm64Body = contract.body  # type: ignore[assignment]
    v = boot_values(contract, profile)
    dest, _ = dest_for(profile, body.config)
    if dest is not None:                # the registers hidden so the VM keeps its contract's stream
        v.hidden = tuple(sorted(shaped(body, dest)))
    if v.problems:
        raise EnforceError(profile.name, [p.line() for p in v.problems])
    return plan(contract, profile, v, explicit)


def for_arrival(contract: Contract, profile: Profile, stream: tuple[int, ...] | None = None) -> list[Pin]:
    """The pins an incoming migration or restore of this contract gets on this host (what
    the hook adds to the incoming XML), whatever else its verdict says."""
    from ...model.problem import Policy
    from .judge import check as judge

    return plan(contract, profile, judge(contract, profile, Policy(), stream))
