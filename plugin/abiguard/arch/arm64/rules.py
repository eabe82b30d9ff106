"""The rule kinds that judge arm64 register values: one table row per kind, used alike by
the verdict (:meth:`Rule.check`), the baseline (:meth:`Rule.fold`), pin planning
(:attr:`Rule.pinnable`, :meth:`Rule.check` against the host that writes the pin) and the
probe (:meth:`Rule.trial`, :meth:`Rule.parse_trial`).

Each rule encodes what the kernel does with a KVM_SET_ONE_REG of a value (hypercalls.c
``kvm_arm_set_fw_reg``/``_bmap``, sys_regs.c ``arm64_check_features``), as measured by
the arm64 lab on real kernels. Which kind judges a register: :func:`.regs.kind_of`.
"""
from __future__ import annotations

from ...model.problem import Problem
from . import regs

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

    from ...model.fields import Reader
    from ...uapi.kvm import KvmVcpu


def _h(v: int) -> str:
    return f"{v:#x}"


class Dest:
    """What one destination offers for one vCPU configuration, as the rules read it.

    :param name: the host, for messages (its kernel release)
    :param registers: the configuration's registers and their default values
    :param acceptance: firmware register name -> its trial (see each rule)
    :param masks: writable ID-register masks by name; None before Linux 6.7
    :param imp_writable: its KVM has KVM_CAP_ARM_WRITABLE_IMP_ID_REGS (Linux 6.15), so
        abiguard_pin.so can give a VM another CPU's MIDR/REVIDR/AIDR there
    """

    __slots__ = ("name", "registers", "acceptance", "masks", "qemu_version", "imp_writable", "kernel", "guest")

    def __init__(self, name: str, registers: dict[int, int | None], acceptance: dict[str, Any],
                 masks: dict[str, int] | None, qemu_version: tuple[int, ...] | None,
                 imp_writable: bool = False) -> None:
        self.name, self.registers, self.acceptance = name, registers, acceptance
        self.masks, self.qemu_version = masks, qemu_version
        self.imp_writable = imp_writable
        self.kernel = regs.kernel_version(name)
        #: what a guest here sees (:func:`.guestreads.guest_view`): None where nothing knows
        self.guest: Any = None

    def cache_writable(self) -> bool:
        """Its KVM takes CLIDR/CCSIDR from userspace (:data:`.regs.CACHE_WRITABLE_SINCE`)."""
        return self.kernel >= regs.CACHE_WRITABLE_SINCE


class Rule:
    """One kind of register value rule.

    :param kind: the name registers are tagged with (:func:`.regs.kind_of`)
    :param pinnable: abiguard_pin.so may write a value of this kind at vCPU init (and the
        library's allow-list admits the register: :func:`.regs.preload_allows`)
    :param default_is_fine: :meth:`check` finds nothing when the value is the destination's
        own default (the verdict then skips the call, which is most registers of a hop)
    :param host_property: the guest sees the host's own value whatever userspace writes
        (KVM only checks a written value against it), so a start realises the contract
        wherever :meth:`check` finds nothing, without a pin
    """

    kind = ""
    pinnable = False
    default_is_fine = False
    host_property = False

    def check(self, reg_id: int, name: str, value: int, dest: Dest) -> list[Problem]:
        """Why the destination's KVM would not take ``value`` for this register."""
        raise NotImplementedError

    def fold(self, name: str, values: list[int], trials: list[Any]) -> tuple[int | None, str | None]:
        """The richest value every host takes (values: each host's default; trials: each
        host's trial), or None and why not."""
        if len(set(values)) > 1:
            return values[0], f"{name}: differs between hosts and cannot be changed"
        return values[0], None

    def above(self, reg_id: int, name: str, value: int, have: int | None) -> list[Problem]:
        """For a ``host_property``: why this host's own value (``have``) is beyond the
        contract's ``value`` although KVM takes the write (nothing for other kinds)."""
        return []

    def trial(self, vcpu: KvmVcpu, reg: regs.FwReg) -> Any:
        """Probe: the JSON record of which values this kernel accepts (firmware kinds)."""
        return None

    def parse_trial(self, r: Reader, doc: Any, where: str) -> Any:
        """The trial as the model holds it; checked member by member."""
        return None


def _level(name: str, value: int) -> str:
    """A mitigation level as its register names it: ``2 (NOT_REQUIRED)``."""
    levels = regs.WORKAROUND_2_LEVELS if name.endswith("_2") else regs.WORKAROUND_LEVELS
    return f"{value} ({levels.get(value & 0xF, '?')})"


def _set_result(vcpu: KvmVcpu, reg_id: int, value: int) -> str:
    from ...uapi import kvm

    try:
        vcpu.set_one_reg(reg_id, value)
        return "accepted"
    except OSError as e:
        return kvm.errno_name(e.errno or 0)


def _results(r: Reader, doc: Any, where: str, keys: tuple[str, ...]) -> dict[str, str]:
    d = r.obj(doc, where, 16)
    out = {}
    for k, v in d.items():
        r.need(k in keys and isinstance(v, str) and 0 < len(v) <= 16 and v.isalnum(),
               f"member '{where}' must map {', '.join(keys)} to a result (accepted or an errno name)")
        out[k] = v
    return out


class Psci(Rule):
    """PSCI_VERSION: KVM takes only the versions its write trials accepted
    (``kvm_arm_set_fw_reg``: 0.1 only without PSCI_0_2, 1.1 since 5.18, 1.2/1.3 since 6.13).
    Trial: version -> "accepted" or the errno name."""

    kind = "psci"
    pinnable = True

    def check(self, reg_id: int, name: str, value: int, dest: Dest) -> list[Problem]:
        version = regs.psci_name(value)
        tried = dest.acceptance.get(name)
        if tried is None:
            return [Problem(name, reg_id, None, f"PSCI {version}", "profile has no PSCI write trials",
                            "cannot tell whether its KVM accepts this version", "probe the destination again")]
        if tried.get(version) == "accepted":
            return []
        ok = sorted(v for v, res in tried.items() if res == "accepted")
        return [Problem(name, reg_id, None, f"PSCI {version}", f"accepts {', '.join(ok) or 'none'}",
                        f"its KVM refuses PSCI {version} ({tried.get(version, 'unknown version')})",
                        "pin the VM's PSCI version to one every host accepts (abiguard baseline)",
                        pinnable=bool(ok))]

    def fold(self, name: str, values: list[int], trials: list[Any]) -> tuple[int | None, str | None]:
        ok = [v for v in regs.PSCI_VERSIONS if all(t is not None and t.get(v) == "accepted" for t in trials)]
        if not ok:
            return None, f"{name}: no PSCI version every host accepts"
        return regs.PSCI_VERSIONS[ok[-1]][0], None

    def trial(self, vcpu: KvmVcpu, reg: regs.FwReg) -> Any:
        return {ver: _set_result(vcpu, reg.id, value) for ver, (value, _since) in regs.PSCI_VERSIONS.items()}

    def parse_trial(self, r: Reader, doc: Any, where: str) -> Any:
        return _results(r, doc, where, tuple(regs.PSCI_VERSIONS))


class Workaround(Rule):
    """SMCCC_ARCH_WORKAROUND_*: a host property (CPU errata, firmware, ``mitigations=``);
    KVM takes a level only if its own is at least as good. Never pinned.
    Trial: level ("0".."4") -> "accepted" or the errno name."""

    kind = "workaround"
    # kvm_arm_set_fw_reg() (since 5.10) maps a written WORKAROUND_2 level onto NOT_AVAIL or
    # NOT_REQUIRED, checks it against the host's and stores nothing: the guest's
    # SMCCC_ARCH_FEATURES answer is the host's. Measured in the arm64 libvirt lab: a VM
    # started on 6.12 (level 1) runs on 7.2 (level 0) with the same guest view.
    host_property = True

    def check(self, reg_id: int, name: str, value: int, dest: Dest) -> list[Problem]:
        tried = dest.acceptance.get(name)
        label = _level(name, value)
        if tried is not None and tried.get(str(value)) == "accepted":
            return []
        have = dest.registers.get(reg_id)
        return [Problem(name, reg_id, None, label,
                        f"reports {have:#x}" if have is not None else "has no write trials",
                        "the destination's mitigation level is lower, so its KVM refuses the value (EINVAL)",
                        "this is a host property (CPU errata, firmware, mitigations=): keep the VM on hosts "
                        "with at least this level")]

    def fold(self, name: str, values: list[int], trials: list[Any]) -> tuple[int | None, str | None]:
        """The contract's level is the highest a VM of the fleet may carry, which every host
        must take on arrival (:meth:`check`): KVM's KVM_GET_ONE_REG gives the level of the
        host the VM runs on (a write stores nothing), so a VM carries the level of its last
        host, never the contract's. Seen in the arm64 lab: a VM pinned to a cortex-a53 +
        cortex-a72 contract whose level was the lowest both take (0) was started on the
        a53 (level 2, NOT_REQUIRED) and its move to the a72 failed after the RAM was
        copied (QEMU: "Could not set register fw reg 1 to 2 (is 0)")."""
        ok = [lvl for lvl in regs.WORKAROUND_TRIALS
              if all(t is not None and t.get(str(lvl)) == "accepted" for t in trials)]
        if not ok:
            return None, f"{name}: no level every host accepts"
        top = max(values)
        if ok[-1] >= top:
            return ok[-1], None
        seen = ", ".join(sorted({_level(name, v) for v in values}))
        return top, (f"{name}: the hosts' mitigation levels differ ({seen}): "
                     f"a VM started where it is {_level(name, top)} carries that level, which a host whose own is "
                     "lower refuses (a host property: CPU errata, firmware, mitigations=)")

    def above(self, reg_id: int, name: str, value: int, have: int | None) -> list[Problem]:
        """A host whose own level (``have``) is above the contract's ``value``: the guest sees
        that level there and the VM carries it on (KVM gives the host's, no write changes it),
        which the contract's hosts need not take -- :meth:`fold` holds the highest they have.
        Asked at a start and at an arrival (:mod:`.judge`)."""
        if have is None or have <= value:
            return []
        return [Problem(name, reg_id, None, _h(value), f"has {have:#x}",
                        "this host's own level is above its contract's: the guest would see it here and the VM "
                        "would carry it on (KVM gives the host's, no write changes it), which its hosts need not "
                        "take", "keep the VM on the hosts of its contract")]

    def trial(self, vcpu: KvmVcpu, reg: regs.FwReg) -> Any:
        return {str(v): _set_result(vcpu, reg.id, v) for v in regs.WORKAROUND_TRIALS}

    def parse_trial(self, r: Reader, doc: Any, where: str) -> Any:
        return _results(r, doc, where, tuple(str(v) for v in regs.WORKAROUND_TRIALS))


class Bitmap(Rule):
    """Hypercall bitmaps: KVM refuses a bit it does not know (EINVAL); lowering is fine.
    Trial: the bits a write of each single bit was accepted for (an int)."""

    kind = "bitmap"
    pinnable = True

    def check(self, reg_id: int, name: str, value: int, dest: Dest) -> list[Problem]:
        known = dest.acceptance.get(name)
        if known is None:
            return [Problem(name, reg_id, None, _h(value), "profile has no bitmap trials",
                            "cannot tell which services its KVM knows", "probe the destination again")]
        unknown = value & ~known
        if not unknown:
            return []
        return [Problem(name, reg_id, None, _h(value), f"knows {known:#x}",
                        f"its KVM does not know {', '.join(regs.FW_BY_NAME[name].bit_names(unknown))} (EINVAL)",
                        "pin the bitmap to the services every host knows (abiguard baseline)", pinnable=True)]

    def fold(self, name: str, values: list[int], trials: list[Any]) -> tuple[int | None, str | None]:
        out = values[0]
        for v in values[1:]:
            out &= v
        return out, None

    def trial(self, vcpu: KvmVcpu, reg: regs.FwReg) -> Any:
        known = 0
        for bit in range(64):
            if _set_result(vcpu, reg.id, 1 << bit) == "accepted":
                known |= 1 << bit
        return {"known_bits": _h(known)}

    def parse_trial(self, r: Reader, doc: Any, where: str) -> Any:
        d = r.obj(doc, where, 4)
        return r.hexint(d.get("known_bits"), f"{where}.known_bits")


class IdRegister(Rule):
    """Feature ID registers: before writable ID registers (Linux 6.7) only the host's own
    value; after, bits outside the writable mask must match and each field inside it
    must be safe by the kernel's rule (:func:`.idregs.is_safe`). MIDR/REVIDR/AIDR take
    another CPU's value only where KVM has KVM_CAP_ARM_WRITABLE_IMP_ID_REGS (which
    abiguard_pin.so enables; whether the guest was told about this host's CPU is
    :func:`.judge.cpu_problems`'s question)."""

    kind = "idreg"
    pinnable = True
    default_is_fine = True

    def check(self, reg_id: int, name: str, value: int, dest: Dest) -> list[Problem]:
        default = dest.registers.get(reg_id)
        if default is None or value == default:
            return []
        if name in regs.IMPLEMENTATION_ID_REGS:
            return implementation_problems(name, reg_id, value, default, dest)
        if dest.masks is None:
            return field_problems(name, reg_id, value, default, 0,
                                  f"{dest.name} has no writable ID registers (before Linux 6.7), so its KVM")
        return field_problems(name, reg_id, value, default, dest.masks.get(name, 0),
                              f"{dest.name}'s KVM (the field is outside its writable mask)")

    def fold(self, name: str, values: list[int], trials: list[Any]) -> tuple[int | None, str | None]:
        from . import idregs

        value, agree = idregs.fold(name, values)
        return value, None if agree else f"{name}: bits outside known fields differ between hosts"


def implementation_problems(name: str, reg_id: int, value: int, default: int, dest: Dest) -> list[Problem]:
    """Another CPU's MIDR/REVIDR/AIDR: set_imp_id_reg takes any value inside its mask,
    once the capability is on, and refuses every other value before it."""
    if not dest.imp_writable:
        return [Problem(name, reg_id, None, _h(value), f"has {_h(default)}",
                        f"its KVM lacks {regs.IMP_CAP} (Linux >= 6.15 has it), so it shows the guest only "
                        "its own CPU's value", "keep the VM on hosts with this CPU model, or on kernels "
                        ">= 6.15 where abiguard pins it")]
    mask = regs.IMPLEMENTATION_MASKS[reg_id]
    if value & ~mask:
        return [Problem(name, reg_id, f"bits {_h(value & ~mask)}", _h(value), f"takes only {_h(mask)}",
                        "KVM's writable mask of this register", "pin a value inside the mask")]
    return []


def field_problems(name: str, reg_id: int, src: int, dst: int, mask: int, masked_by: str) -> list[Problem]:
    """An ID register value against a host's, field by field (:func:`.idregs.field_diffs`).
    The field tables load only here: a move that keeps every ID value never needs them."""
    from . import idregs

    if not idregs.has_fields(name):
        # no cpufeature table (CLIDR_EL1, implementation registers): KVM's own set_user
        # handler takes any value inside the writable mask (measured: 6.1's CLIDR on 6.12/7.2)
        if (src ^ dst) & ~mask:
            return [Problem(name, reg_id, None, _h(src), f"has {_h(dst)}",
                            f"{masked_by} accepts only its own value of this register",
                            "keep the VM on hosts with the same value")]
        return []
    diffs, rest = idregs.field_diffs(name, src, dst, mask)
    problems = []
    for d in diffs:
        if d.writable:
            if d.safe:
                continue
            problems.append(Problem(name, reg_id, d.field.name, _h(d.vm), f"offers {_h(d.host)}",
                                    f"KVM accepts only a {d.field.safety_name} value here",
                                    "pin the field to the fleet's safe value (abiguard baseline)", pinnable=True))
        else:
            problems.append(Problem(name, reg_id, d.field.name, _h(d.vm), f"has {_h(d.host)}",
                                    f"{masked_by} cannot change this field",
                                    "keep the VM on hosts with the same value"))
    if rest:
        problems.append(Problem(name, reg_id, f"bits {_h(rest)}", _h(src & rest), f"has {_h(dst & rest)}",
                                f"{masked_by} requires bits outside known fields to match",
                                "keep the VM on hosts with the same value"))
    return problems


class CacheRule(Rule):
    """The cache description KVM takes from userspace since Linux 6.3 (:meth:`.Dest.cache_writable`):
    before it, only the host's own value (``fixed``: why, what to do); after it, what
    :meth:`writable_check` says."""

    pinnable = True
    default_is_fine = True
    fixed: tuple[str, str] = ("", "")

    def check(self, reg_id: int, name: str, value: int, dest: Dest) -> list[Problem]:
        own = dest.registers.get(reg_id)
        if own is None or value == own:
            return []
        if not dest.cache_writable():
            return [Problem(name, reg_id, None, _h(value), f"has {own:#x}", f"its KVM ({dest.name}) " + self.fixed[0],
                            self.fixed[1])]
        return self.writable_check(reg_id, name, value, own, dest)

    def writable_check(self, reg_id: int, name: str, value: int, own: int, dest: Dest) -> list[Problem]:
        raise NotImplementedError


class Ccsidr(CacheRule):
    """CCSIDR (cache geometry, the demux group). Since Linux 6.3 ``set_ccsidr`` takes any
    value with no RES0 bit (63:32) whose line size is not below the host's minimum (from
    its sanitised CTR_EL0, the profile's CTR_EL0 default), for every CSSELR index whether
    CLIDR reports that cache or not; abiguard_pin.so writes it. Before 6.3 the guest reads
    the hardware and KVM takes only that value. Measured: 6.1's values are accepted by
    6.12 and 7.2, and 6.12's refused by 6.1."""

    kind = "ccsidr"
    fixed = ("accepts only its own cache geometry (before Linux 6.3)", "keep the VM on hosts with the same cache "
             "geometry")

    def writable_check(self, reg_id: int, name: str, value: int, own: int, dest: Dest) -> list[Problem]:
        if value >> 32:
            return [Problem(name, reg_id, "RES0", _h(value), f"has {own:#x}", "set_ccsidr refuses RES0 bits (EINVAL)",
                            "pin a CCSIDR without bits 63:32")]
        ctr = dest.registers.get(regs.CTR_EL0_ID)
        if ctr is not None:
            # get_min_cache_line_size: IminLine (bits 3:0) or DminLine (19:16), log2(words)
            least = (ctr & 0xF) if reg_id & 1 else (ctr >> 16) & 0xF
            if (value & regs.CCSIDR_LINESIZE_MASK) + 2 < least:
                return [Problem(name, reg_id, "LineSize", _h(value & 7), f"needs at least {least - 2:#x}",
                                "its KVM refuses a cache line smaller than the host's (set_ccsidr, EINVAL)",
                                "keep the VM on hosts with the same cache line size")]
        return []

    def fold(self, name: str, values: list[int], trials: list[Any]) -> tuple[int | None, str | None]:
        if len(set(values)) > 1:
            return values[0], f"{name}: differs between hosts and cannot be changed"
        return values[0], None


class Clidr(CacheRule):
    """CLIDR_EL1. Since Linux 6.3 ``set_clidr`` takes any value inside its writable mask
    (the profile's, probed: RES0 is the rest) unless the value implies CTR_EL0.IDC
    (:func:`.regs.clidr_implies_idc`) while the host's sanitised CTR_EL0 (the profile's
    CTR_EL0 default) lacks it -- the host's, not the VM's: a pinned CTR_EL0 does not
    change it. Before 6.3 an invariant register: only the host's value."""

    kind = "clidr"
    fixed = ("accepts only its own CLIDR_EL1 (an invariant register before Linux 6.3)",
             "keep the VM on hosts with the same cache levels")

    def writable_check(self, reg_id: int, name: str, value: int, own: int, dest: Dest) -> list[Problem]:
        mask = (dest.masks or {}).get(name)
        if mask is None:
            return [Problem(name, reg_id, None, _h(value), f"has {own:#x}",
                            "its profile has no writable mask of CLIDR_EL1 (probed on Linux >= 6.7), so which "
                            "values its KVM takes is not known", "probe the host with abiguard on Linux >= 6.7")]
        if value & ~mask:
            return [Problem(name, reg_id, f"bits {_h(value & ~mask)}", _h(value), f"takes only {_h(mask)}",
                            "set_clidr refuses RES0 bits (EINVAL)", "pin a CLIDR_EL1 inside the mask")]
        ctr = dest.registers.get(regs.CTR_EL0_ID)
        if regs.clidr_implies_idc(value) and (ctr is None or not ctr & regs.CTR_EL0_IDC):
            return [Problem(name, reg_id, "LoC/LoUIS/LoUU", _h(value), "CTR_EL0.IDC is 0 on the host",
                            "set_clidr refuses a CLIDR that implies CTR_EL0.IDC when the host's sanitised "
                            "CTR_EL0 lacks IDC (EINVAL)", "keep the VM on hosts whose CTR_EL0 has IDC")]
        return []


class UnknownFirmware(Rule):
    """A firmware register this abiguard's table has no row for: refused, since nothing
    says what the destination's KVM does with it."""

    kind = "unknown_fw"

    def check(self, reg_id: int, name: str, value: int, dest: Dest) -> list[Problem]:
        return [Problem(name, reg_id, None, _h(value), "unknown to this abiguard",
                        "a firmware register this abiguard has no rule for",
                        "upgrade abiguard (its table lacks this register)")]


#: kind -> rule; every kind :func:`.regs.kind_of` returns has a row, except "state"
#: (guest-run state, not guest ABI: never judged by value)
RULES: dict[str, Rule] = {r.kind: r for r in (Psci(), Workaround(), Bitmap(), IdRegister(), Ccsidr(), Clidr(),
                                               UnknownFirmware())}


def can_pin(reg_id: int) -> bool:
    """Whether abiguard_pin.so can realise this register's value on a host: its kind is
    pinnable and the library's allow-list admits it (MPIDR: no)."""
    rule = RULES.get(regs.kind_of(reg_id))
    return rule is not None and rule.pinnable and regs.preload_allows(reg_id)
