"""The verdict: can a VM with this contract move to (or start on) that host with its guest
ABI unchanged?

One generic engine. For arm64 every register of the VM's stream is checked by the rule
its kind names (:data:`ARM64_RULES`, kinds from :func:`abiguard.arch.arm64.value_rule`);
the rules encode what the kernel does with a KVM_SET_ONE_REG of that value (hypercalls.c,
sys_regs.c ``arm64_check_features``) as measured by the arm64 lab, and what QEMU does
with a stream register the destination does not list (:data:`abiguard.arch.arm64.QEMU_CPREG_RULES`).
For x86 the destination's QEMU decides: machine types, the CPU model's unavailable
features and the host CPU expansion.
"""
from __future__ import annotations

from ._record import record
from .arch import arm64

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable


class Problem(record("Problem", "register reg_id field source destination why fix kind pinnable",
                     defaults=("refuse", False))):
    """One reason a move cannot keep the ABI.

    register: register, feature or item name; reg_id: raw id when a register; source: what
    the VM has; destination: what the destination can accept; kind: "refuse" (KVM/QEMU
    would fail) or "widen" (the guest would gain); pinnable: pinning the VM to a contract
    both hosts realise removes it.
    """

    __slots__ = ()

    def line(self) -> str:
        what = self.register + (f" ({self.reg_id})" if self.reg_id else "")
        if self.field:
            what += f" field {self.field}"
        return f"{what}: VM has {self.source}, destination {self.destination}: {self.why}; {self.fix}"


#: allow_widening: allow a move where the destination adds guest-visible registers the
#: stream lacks; qemu: the destination's QEMU version when its profile does not say (a
#: KVM-only profile from the arm64 lab), as a tuple such as (7, 2)
Policy = record("Policy", "allow_widening qemu", defaults=(False, None))


class Verdict(record("Verdict", "problems notes")):
    __slots__ = ()

    @property
    def allow(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"allow": self.allow, "problems": [p._asdict() | {"message": p.line()} for p in self.problems],
                "notes": self.notes}


#: what the destination's profile says, for one vCPU configuration
_Dest = record("_Dest", "name registers acceptance masks qemu_version")


def _h(v: int) -> str:
    return f"{v:#x}"


# -- arm64 value rules: (reg_id, name, source value, destination) -> problems ----------

def _rule_psci(reg_id: str, name: str, value: int, dest: _Dest) -> list[Problem]:
    version = arm64.psci_name(value)
    tried = dest.acceptance.get(name)
    if tried is None:
        return [Problem(name, reg_id, None, f"PSCI {version}", "profile has no PSCI write trials",
                        "cannot tell whether its KVM accepts this version", "probe the destination again")]
    if tried.get(version) == "accepted":
        return []
    ok = sorted(v for v, r in tried.items() if r == "accepted")
    return [Problem(name, reg_id, None, f"PSCI {version}", f"accepts {', '.join(ok) or 'none'}",
                    f"its KVM refuses PSCI {version} ({tried.get(version, 'unknown version')})",
                    "pin the VM's PSCI version to one every host accepts (abiguard baseline)",
                    pinnable=bool(ok))]


def _rule_workaround(reg_id: str, name: str, value: int, dest: _Dest) -> list[Problem]:
    tried = dest.acceptance.get(name)
    levels = arm64.WORKAROUND_2_LEVELS if name.endswith("_2") else arm64.WORKAROUND_LEVELS
    label = f"{value} ({levels.get(value & 0xF, '?')})"
    if tried is not None and tried.get(str(value)) == "accepted":
        return []
    have = dest.registers.get(reg_id)
    return [Problem(name, reg_id, None, label,
                    f"reports {have}" if have else "has no write trials",
                    "the destination's mitigation level is lower, so its KVM refuses the value (EINVAL)",
                    "this is a host property (CPU errata, firmware, mitigations=): keep the VM on hosts "
                    "with at least this level")]


def _rule_bitmap(reg_id: str, name: str, value: int, dest: _Dest) -> list[Problem]:
    tried = dest.acceptance.get(name)
    if tried is None:
        return [Problem(name, reg_id, None, _h(value), "profile has no bitmap trials",
                        "cannot tell which services its KVM knows", "probe the destination again")]
    unknown = value & ~int(tried["known_bits"], 16)
    if not unknown:
        return []
    bits = arm64.FW_BY_NAME[name].bits
    names = [bits.get(b, (f"bit {b}", ""))[0] for b in range(64) if unknown >> b & 1]
    return [Problem(name, reg_id, None, _h(value), f"knows {tried['known_bits']}",
                    f"its KVM does not know {', '.join(names)} (EINVAL)",
                    "pin the bitmap to the services every host knows (abiguard baseline)", pinnable=True)]


def _field_problems(name: str, reg_id: str, src: int, dst: int, mask: int, masked_by: str
                    ) -> list[Problem]:
    from .arch import arm64_idregs

    fields = arm64_idregs.FIELDS_BY_REG.get(name, ())
    if not fields:
        # no cpufeature table (CLIDR_EL1, implementation registers): KVM's own set_user
        # handler takes any value inside the writable mask (measured: 6.1's CLIDR on 6.12/7.2)
        if (src ^ dst) & ~mask:
            return [Problem(name, reg_id, None, _h(src), f"has {_h(dst)}",
                            f"{masked_by} accepts only its own value of this register",
                            "keep the VM on hosts with the same value")]
        return []
    problems = []
    covered = 0
    for f in fields:
        fmask = ((1 << f.width) - 1) << f.shift
        covered |= fmask
        s, d = (src >> f.shift) & ((1 << f.width) - 1), (dst >> f.shift) & ((1 << f.width) - 1)
        if s == d:
            continue
        if fmask & mask == fmask:
            if arm64_idregs.safe_value(f, s, d) == s:
                continue
            problems.append(Problem(name, reg_id, f.name, _h(s), f"offers {_h(d)}",
                                    f"KVM accepts only a {f.safety.name.lower().replace('_', ' ')} value here",
                                    "pin the field to the fleet's safe value (abiguard baseline)",
                                    pinnable=True))
        else:
            problems.append(Problem(name, reg_id, f.name, _h(s), f"has {_h(d)}",
                                    f"{masked_by} cannot change this field",
                                    "keep the VM on hosts with the same value"))
    rest = (src ^ dst) & ~covered
    if rest:
        problems.append(Problem(name, reg_id, f"bits {_h(rest)}", _h(src & rest), f"has {_h(dst & rest)}",
                                f"{masked_by} requires bits outside known fields to match",
                                "keep the VM on hosts with the same value"))
    return problems


def _rule_idreg(reg_id: str, name: str, value: int, dest: _Dest) -> list[Problem]:
    recorded = dest.registers.get(reg_id)
    if recorded is None:
        return []
    default = int(recorded, 16)
    if value == default:
        return []
    if dest.masks is None:
        return _field_problems(name, reg_id, value, default, 0,
                               f"{dest.name} has no writable ID registers (before Linux 6.7), so its KVM")
    mask = 0 if name in arm64.IMPLEMENTATION_ID_REGS else int(dest.masks.get(name, "0x0"), 16)
    return _field_problems(name, reg_id, value, default, mask, "the destination's KVM (writable mask)")


def _rule_ccsidr(reg_id: str, name: str, value: int, dest: _Dest) -> list[Problem]:
    """Since the cache-topology rework (Linux 6.3, before writable ID registers in 6.7) KVM
    takes any CCSIDR whose line size is not below the host's; before it, only its own value.
    Measured: 6.1's values are accepted by 6.12 and 7.2, and 6.12's refused by 6.1."""
    recorded = dest.registers.get(reg_id)
    if recorded is None:
        return []
    own = int(recorded, 16)
    if value == own:
        return []
    if dest.masks is not None:
        if value & arm64.CCSIDR_LINESIZE_MASK >= own & arm64.CCSIDR_LINESIZE_MASK:
            return []
        return [Problem(name, reg_id, "LineSize", _h(value & 7), f"has {_h(own & 7)}",
                        "its KVM refuses a cache line smaller than the host's", "keep the VM on hosts "
                        "with the same cache line size")]
    return [Problem(name, reg_id, None, _h(value), f"has {recorded}",
                    "its KVM accepts only its own cache geometry (before Linux 6.3)",
                    "keep the VM on hosts with the same cache geometry")]


def _rule_unknown_fw(reg_id: str, name: str, value: int, dest: _Dest) -> list[Problem]:
    return [Problem(name, reg_id, None, _h(value), "unknown to this abiguard",
                    "a firmware register this abiguard has no rule for",
                    "upgrade abiguard (its table lacks this register)")]


ARM64_RULES: dict[str, Callable[[str, str, int, _Dest], list[Problem]]] = {
    "psci": _rule_psci, "workaround": _rule_workaround, "bitmap": _rule_bitmap,
    "idreg": _rule_idreg, "ccsidr": _rule_ccsidr, "unknown_fw": _rule_unknown_fw,
}


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """"7.2.22" -> (7, 2, 22); None for anything else."""
    try:
        return tuple(int(x) for x in (text or "").split(".")[:3]) or None
    except ValueError:
        return None


def _dest_arm64(profile: dict[str, Any], config: str) -> tuple[_Dest | None, list[Problem]]:
    section = (profile.get("kvm") or {}).get("aarch64") or {}
    probed = (section.get("configs") or {}).get(config)
    name = profile["host"]["kernel_release"]
    if probed is None or "registers" not in probed:
        caps = (profile.get("kvm") or {}).get("caps", {})
        from . import kvm
        lacking = [f for f in arm64.config_features(config) if not caps.get(kvm.ARM_FEATURE_CAP[f])]
        why = (f"its KVM does not offer {', '.join(lacking)}" if lacking
               else "that vCPU configuration was not probed there")
        return None, [Problem("vCPU configuration", None, None, config, "cannot create it", why,
                              "keep the VM on hosts that offer these vCPU features, or pin fewer",
                              pinnable=True)]
    qemu = ((profile.get("stack") or {}).get("qemu") or {}).get("version")
    return _Dest(name, probed["registers"], section.get("firmware_acceptance") or {},
                 section.get("writable_masks"), parse_version(qemu)), []


def check_arm64(contract: dict[str, Any], dest_profile: dict[str, Any], policy: Policy,
                stream: list[str] | None = None) -> Verdict:
    body = contract["aarch64"]
    dest, problems = _dest_arm64(dest_profile, body["config"])
    if dest is None:
        return Verdict(problems, [])
    notes: list[str] = []
    names = (dest_profile["kvm"]["aarch64"].get("register_names") or {})
    stream = stream if stream is not None else body["stream"]
    stream_set = set(stream)
    values = body["values"]
    qemu_rule = arm64.qemu_cpreg_rule(dest.qemu_version or policy.qemu)
    stream_ints = [int(r, 16) for r in stream]
    dest_ids = {int(r, 16) for r in dest.registers}
    int_values = {int(r, 16): int(v, 16) for r, v in values.items()}
    outcome = arm64.stream_outcome(qemu_rule, stream_ints, dest_ids, int_values)
    failing, dropped = set(outcome.failing), set(outcome.dropped)
    if outcome.length_fails:
        problems.append(Problem("cpreg_vmstate_array_len", None, None, f"{len(stream)} registers",
                                f"lists {len(dest_ids)}", f"{qemu_rule.name} refuses a register stream "
                                "longer than its own list before looking at any register",
                                "a VM booted on a kernel that lists more registers cannot move here"))
    for rid, reg_id in zip(stream_ints, stream):
        name = names.get(reg_id) or arm64.reg_name(rid)
        if rid not in dest_ids:
            if rid in dropped:
                lost = int_values.get(rid)
                notes.append(f"{name} ({reg_id}) is unknown to the destination's kernel; {qemu_rule.name} "
                             f"drops it" + (f" and its value {lost:#x} with it" if lost else ""))
                if lost:
                    problems.append(Problem(name, reg_id, None, f"{lost:#x}", "does not list it",
                                            f"{qemu_rule.name} drops the register, so the guest loses "
                                            "what it gave", "keep the VM on hosts with this register"))
            elif rid in failing:
                problems.append(Problem(name, reg_id, None, "it in its migration stream",
                                        "does not list it (KVM_GET_REG_LIST)",
                                        f"{qemu_rule.name} fails loading a register the destination's "
                                        "kernel does not know",
                                        "a VM booted on a kernel with this register cannot move to this one"))
            continue
        value = values.get(reg_id)
        if value is None:
            continue
        problems += ARM64_RULES[arm64.value_rule(int(reg_id, 16))](reg_id, name, int(value, 16), dest)
    if body.get("sve_vls") and "SVE" in arm64.config_features(body["config"]):
        dest_vls = (dest_profile["kvm"]["aarch64"]["configs"][body["config"]].get("sve_vls"))
        if dest_vls != body["sve_vls"]:
            problems.append(Problem("SVE vector lengths", _h(0x606000000015FFFF), None, body["sve_vls"],
                                    f"offers {dest_vls}", "KVM accepts only the host's set of lengths",
                                    "pin SVE lengths every host offers (sve<N>=off in the CPU model)",
                                    pinnable=True))
    clidr_text = values.get(_h(arm64.CLIDR_EL1_ID)) or dest.registers.get(_h(arm64.CLIDR_EL1_ID)) or "0x0"
    clidr = int(clidr_text, 16)
    for reg_id, default in dest.registers.items():
        if reg_id in stream_set or default is None:
            continue
        rid = int(reg_id, 16)
        rule = arm64.value_rule(rid)
        if rule == "state" or int(default, 16) == arm64.NEUTRAL_VALUE:
            continue
        if rule == "ccsidr" and not arm64.ccsidr_visible(rid, clidr):
            continue  # a cache level the VM's CLIDR does not report: nothing the guest can use
        name = names.get(reg_id) or arm64.reg_name(rid)
        widen = Problem(name, reg_id, None, "no such register", f"adds it with {default}",
                        "registers a stream lacks keep the destination's default: the guest would see "
                        "more than it was given", "allow widening by policy, pin the register on the "
                        "destination, or keep the VM on hosts without this register", "widen", True)
        if policy.allow_widening:
            notes.append("widening allowed by policy: " + widen.line())
        else:
            problems.append(widen)
    for rule in arm64.QEMU_CPREG_RULES[1:]:
        other = arm64.stream_outcome(rule, stream_ints, dest_ids, int_values)
        if other.length_fails or other.failing:
            why = (f"stream of {len(stream)} > {len(dest_ids)} registers" if other.length_fails
                   else "unknown " + ", ".join(names.get(_h(r)) or arm64.reg_name(r) for r in other.failing[:3]))
            notes.append(f"{rule.name} as destination QEMU: load fails ({why})")
        else:
            notes.append(f"{rule.name} as destination QEMU: register list loads"
                         + (f", dropping {len(other.dropped)}" if other.dropped else ""))
    return Verdict(problems, notes)


# -- x86 ------------------------------------------------------------------------------

def check_x86(contract: dict[str, Any], dest_profile: dict[str, Any], policy: Policy,
              incoming: bool = True) -> Verdict:
    """``incoming``: the VM arrives by migration or restore (not a plain start), so what the
    destination's libvirt does to an incoming CPU definition applies too."""
    from .arch import x86

    body = contract["x86_64"]
    problems: list[Problem] = []
    qemu = (dest_profile.get("stack") or {}).get("qemu") or {}
    if not qemu.get("machines"):
        return Verdict([Problem("QEMU", None, None, "a QEMU guest", "has no QEMU data in its profile",
                                "cannot check machine type or CPU", "probe the destination with QEMU installed")], [])
    machine = contract.get("machine_type")
    known = {m["name"] for m in qemu["machines"]} | {m["alias"] for m in qemu["machines"] if "alias" in m}
    if machine and machine not in known:
        problems.append(Problem("machine type", None, None, machine, f"QEMU {qemu.get('version')} lacks it",
                                "QEMU cannot create this machine", "pin a machine type every host has "
                                "(abiguard baseline)", pinnable=True))
    props = (qemu.get("host_cpu_expansion") or {}).get("props", {})
    policies = body["features"]
    off = {x86.qemu_feature_name(f) for f, p in policies.items() if p in ("disable", "forbid")}
    model = body.get("cpu_model")
    libvirt = (dest_profile.get("stack") or {}).get("libvirt") or {}
    if model:
        defs = qemu.get("cpu_definitions") or {}
        if model not in defs:
            problems.append(Problem("CPU model", None, None, model, f"QEMU {qemu.get('version')} lacks it",
                                    "QEMU cannot create this CPU model", "pin an older CPU model",
                                    pinnable=True))
        else:
            # QEMU names the model's features it cannot give (query-cpu-definitions), and
            # libvirt its own blockers (domcapabilities): each must be disabled by the pin
            custom = ((libvirt.get("domcapabilities") or {}).get("custom_models") or {}).get(model) or {}
            missing = set(defs[model]) | {x86.qemu_feature_name(f) for f in custom.get("blockers", [])}
            for feat in sorted(missing - off):
                problems.append(Problem("CPU model", None, feat, f"{model} with {feat}",
                                        "cannot provide it", f"{model} needs {feat}, which this host lacks",
                                        "pin an older CPU model or disable the feature", pinnable=True))
    libvirt_version = parse_version(libvirt.get("version"))
    dropped = x86.dropped_on_incoming(libvirt_version) if incoming else {}
    for feat, pol in policies.items():
        if pol not in ("require", "force"):
            continue
        qname = x86.qemu_feature_name(feat)
        if props.get(qname) is not True:
            problems.append(Problem("CPU feature", None, feat, "it required",
                                    "cannot provide it" if qname in props else "does not know it",
                                    "the host CPU or its KVM lacks it", "pin a baseline without it",
                                    pinnable=True))
        elif feat in dropped:
            problems.append(Problem("CPU feature", None, feat, "it required",
                                    f"runs libvirt {libvirt.get('version')}", dropped[feat],
                                    "pin a baseline without it", pinnable=True))
    pv = body.get("pv_features")
    dest_pv = ((dest_profile.get("kvm") or {}).get("x86_64") or {}).get("pv_features") or {}
    if pv and dest_pv.get("eax") is not None:
        lacking = int(pv, 16) & ~int(dest_pv["eax"], 16)
        if lacking:
            problems.append(Problem("KVM PV features", None, ", ".join(x86.pv_feature_names(lacking)), pv,
                                    f"offers {dest_pv['eax']}", "its KVM lacks these paravirtual features",
                                    "pin the PV features every host offers", pinnable=True))
    return Verdict(problems, [])


_CHECKS: dict[str, Callable[..., Verdict]] = {"aarch64": check_arm64, "x86_64": check_x86}


def check(contract: dict[str, Any], dest_profile: dict[str, Any], policy: Policy = Policy(),
          stream: list[str] | None = None) -> Verdict:
    arch = contract["arch"]
    if dest_profile["host"]["machine"] != arch:
        return Verdict([Problem("architecture", None, None, arch, f"is {dest_profile['host']['machine']}",
                                "a guest cannot change architecture", "migrate within one architecture")], [])
    if arch == "aarch64":
        return check_arm64(contract, dest_profile, policy, stream)
    return _CHECKS[arch](contract, dest_profile, policy)


def check_pair(source_profile: dict[str, Any], dest_profile: dict[str, Any],
               policy: Policy = Policy()) -> Verdict:
    """A VM booted on the source with defaults, moving to the destination. On arm64, when
    the destination cannot create the source's default vCPU configuration, the richest
    configuration both offer is judged too, so the answer says what else stands in the way."""
    from . import contract

    v = check(contract.from_profile(source_profile), dest_profile, policy)
    if source_profile["host"]["machine"] != "aarch64" or dest_profile["host"]["machine"] != "aarch64":
        return v
    config_problems = [p for p in v.problems if p.register == "vCPU configuration"]
    if not config_problems:
        return v
    from .arch import arm64

    common = set(source_profile["kvm"]["aarch64"]["configs"]) & set(dest_profile["kvm"]["aarch64"]["configs"])
    if not common:
        return v
    best = max(common, key=lambda c: (len(arm64.config_features(c)), c))
    narrower = check(contract.from_profile(source_profile, best), dest_profile, policy)
    return Verdict(config_problems + narrower.problems, narrower.notes)


def realise(contract: dict[str, Any], profile: dict[str, Any], pinned: dict[int, int] | None = None
            ) -> list[Problem]:
    """What stands between this host and starting a VM with exactly this contract.

    x86: QEMU realises the pinned CPU model and features itself (libvirt passes them on
    the command line), so it is the incoming check. arm64: released QEMU has no property
    for firmware or ID registers, so a VM starts with this host's defaults: the host's
    register stream and values must already be the contract's.
    """
    if contract["arch"] == "x86_64" and profile["host"]["machine"] == "x86_64":
        return check_x86(contract, profile, Policy(), incoming=False).problems
    if contract["arch"] != "aarch64" or profile["host"]["machine"] != "aarch64":
        return check(contract, profile).problems
    body = contract["aarch64"]
    dest, problems = _dest_arm64(profile, body["config"])
    if dest is None:
        return problems
    own = dest.registers
    stream = set(body["stream"])
    for reg_id in sorted(set(own) - stream, key=lambda r: int(r, 16)):
        problems.append(Problem(arm64.reg_name(int(reg_id, 16)), reg_id, None, "no such register",
                                "lists it", "QEMU would put it in the VM's stream: the contract does "
                                "not have it", "boot the VM on a host of its contract's generation"))
    for reg_id in sorted(stream - set(own), key=lambda r: int(r, 16)):
        problems.append(Problem(arm64.reg_name(int(reg_id, 16)), reg_id, None, "it in its contract",
                                "does not list it", "this kernel lacks the register",
                                "boot the VM on a host of its contract's generation"))
    pinned = pinned or {}
    for reg_id, value in body["values"].items():
        have = own.get(reg_id)
        if pinned.get(int(reg_id, 16)) == int(value, 16):
            continue      # written at every vCPU init by abiguard_pin.so (abiguard.enforce)
        if have is not None and int(have, 16) != int(value, 16):
            problems.append(Problem(arm64.reg_name(int(reg_id, 16)), reg_id, None, value,
                                    f"would start it with {have}", "released QEMU has no property to "
                                    "set this register at boot", "boot on a host whose defaults are the "
                                    "contract's, or use abiguard's register enforcement", pinnable=True))
    return problems
