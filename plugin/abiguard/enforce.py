"""Enforcing an arm64 contract where QEMU has no knob: the preload library.

Released QEMU (up to 11.1) starts a KVM/arm64 vCPU with whatever the host kernel defaults
to for the firmware pseudo-registers (PSCI version, hypercall bitmaps) and the writable
ID-register fields, and migrates those values. ``preload/abiguard_pin.c`` (loaded into QEMU
with ``LD_PRELOAD``) writes chosen values with KVM_SET_ONE_REG right after each guest
vCPU's KVM_ARM_VCPU_INIT, before it runs, so QEMU reads them back, migrates them and writes
them again on every reset. This module decides which registers to pin for a contract on a
host, validates every value against that host's profile (anything the host's KVM would
refuse, or that the library cannot write, is refused here with one line per problem) and
renders the library's configuration: ``ABIGUARD_PINS`` and the libvirt
``<qemu:commandline>`` snippet.

What can be pinned (and the library's compiled-in allow-list agrees):

- PSCI_VERSION: to a version the host accepted in its write trials;
- the hypercall bitmaps (STD_BMAP, STD_HYP_BMAP, VENDOR_HYP_BMAP, VENDOR_HYP_BMAP_2): to
  bits the host knows; a bitmap the host has and the VM's stream lacks is pinned to 0, so
  the guest does not gain services on arrival;
- ID registers op0=3, op1=0, CRn=0 (not MIDR/REVIDR, fixed for QEMU VMs): only on hosts
  with writable ID registers (Linux 6.7), only bits inside the host's writable mask, and
  each changed field only to the value the kernel's own rule takes
  (``arm64_ftr_safe_value``, :func:`abiguard.arch.arm64_idregs.safe_value`).

SMCCC workaround levels are a host property (CPU errata, mitigations): never pinned.
Where the host's QEMU offers a native ``SYSREG_<REG>_<FIELD>`` property for every changed
field of an ID register (seen in its host CPU model expansion), that register is realised
through ``-cpu`` properties instead, never both.
"""
from __future__ import annotations

import os

from ._record import record
from .arch import arm64
from .errors import AbiguardError

# typing and collections.abc cost the hook more than its whole budget: annotations only
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

from .preload import (ENV_PINS, LIBRARY_DIR, LIBRARY_NAME, LIBRARY_PATH, MAX_ENV_CHARS,  # noqa: F401
                      MAX_PINS, SOURCE_PATH, build_library)
QEMU_XMLNS = "http://libvirt.org/schemas/domain/qemu/1.0"

_FW_PREFIX = 0x6030000000140000
_BMAP_PREFIX = 0x6030000000160000
_SYSREG_PREFIX = 0x6030000000130000

#: id, name, value; how: "preload" (ABIGUARD_PINS) or "cpu-property" (props: name -> value);
#: why: one phrase for `abiguard status`
Pin = record("Pin", "id name value how why props", ("preload", "", None))


class EnforceError(AbiguardError):
    """A pin the host cannot realise, or the library cannot write: refused at configuration
    time, so no VM ever starts half-pinned."""

    exit_code = 1

    def __init__(self, host: str, problems: list[str]) -> None:
        super().__init__(host, problems)
        self.host = host
        self.problems = problems

    def __str__(self) -> str:
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"abiguard: cannot enforce the contract on {self.host}: {self.problems[0]}{more}"


def library_allows(reg_id: int) -> bool:
    """The preload library's compiled-in allow-list (``allowed()`` in abiguard_pin.c)."""
    if reg_id & ~0xF in (_FW_PREFIX, _BMAP_PREFIX):
        return True
    if reg_id & ~0xFFFF == _SYSREG_PREFIX:
        op0, op1, crn, crm = (reg_id >> 14) & 3, (reg_id >> 11) & 7, (reg_id >> 7) & 15, (reg_id >> 3) & 15
        return op0 == 3 and op1 == 0 and crn == 0 and 1 <= crm <= 7
    return False


def _h(v: int) -> str:
    return f"{v:#x}"


def _host_section(profile: dict[str, Any], config: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    name = str(profile["host"]["kernel_release"])
    if profile["host"].get("machine") != "aarch64":
        raise EnforceError(name, [f"the host is {profile['host'].get('machine')}: register pins are arm64 only"])
    section = (profile.get("kvm") or {}).get("aarch64") or {}
    probed = (section.get("configs") or {}).get(config)
    if not probed or "registers" not in probed:
        raise EnforceError(name, [f"vCPU configuration {config!r} was not probed on this host"])
    return name, section, probed["registers"]


def native_properties(profile: dict[str, Any]) -> set[str]:
    """``SYSREG_<REG>_<FIELD>`` properties of the host QEMU's ``-cpu host`` (model expansion)."""
    exp = ((profile.get("stack") or {}).get("qemu") or {}).get("host_cpu_expansion") or {}
    return {p for p in (exp.get("props") or {}) if p.startswith("SYSREG_")}


def _check_idreg(reg_id: int, value: int, host_value: int, masks: dict[str, str] | None) -> list[str]:
    from .arch import arm64_idregs

    reg = arm64_idregs.REG_BY_ID.get(reg_id)
    name = reg.name if reg else arm64.reg_name(reg_id)
    where = f"{name} ({reg_id:#x})"
    if reg is None:
        return [f"{where}: an ID register abiguard has no field table for: not pinned"]
    if name in arm64.IMPLEMENTATION_ID_REGS:
        return [f"{where}: fixed for QEMU VMs (QEMU does not enable KVM_CAP_ARM_WRITABLE_IMP_ID_REGS)"]
    if value == host_value:
        return []
    if masks is None:
        return [(f"{where}: {_h(value)} differs from this host's {_h(host_value)} and its KVM has no "
                "writable ID registers (before Linux 6.7)")]
    mask = int(masks.get(name, "0x0"), 16)
    problems = []
    outside = (value ^ host_value) & ~mask
    if outside:
        problems.append(f"{where}: bits {_h(outside)} differ from this host's value ({_h(value & outside)} vs "
                        f"{_h(host_value & outside)}) outside its writable mask {_h(mask)}: its KVM refuses them")
    covered = 0
    for f in arm64_idregs.FIELDS_BY_REG.get(name, ()):
        fmask = ((1 << f.width) - 1) << f.shift
        covered |= fmask
        s, d = (value >> f.shift) & ((1 << f.width) - 1), (host_value >> f.shift) & ((1 << f.width) - 1)
        if s == d or fmask & ~mask:
            continue
        if arm64_idregs.safe_value(f, s, d) != s:
            problems.append(f"{where}: field {f.name} = {_h(s)} is not safe against this host's {_h(d)} "
                            f"({f.safety.name.lower().replace('_', ' ')}): its KVM refuses it")
    rest = (value ^ host_value) & mask & ~covered
    if rest:
        problems.append(f"{where}: bits {_h(rest)} inside the writable mask belong to no known field")
    return problems


def check_pins(pins: dict[int, int], profile: dict[str, Any], config: str) -> list[str]:
    """Why each pin cannot be realised on this host, one line each (empty: all fine)."""
    _name, section, host = _host_section(profile, config)
    names = section.get("register_names") or {}
    acceptance = section.get("firmware_acceptance") or {}
    masks = section.get("writable_masks")
    problems: list[str] = []
    if len(pins) > MAX_PINS:
        problems.append(f"{len(pins)} registers: the library pins at most {MAX_PINS}")
    for reg_id, value in sorted(pins.items()):
        name = names.get(f"{reg_id:#x}") or arm64.reg_name(reg_id)
        where = f"{name} ({reg_id:#x})"
        if not 0 <= value < 1 << 64:
            problems.append(f"{where}: value {value} is not a 64-bit register value")
            continue
        if not library_allows(reg_id):
            problems.append(f"{where}: not enforceable (the library pins firmware pseudo-registers and "
                            "ID registers op0=3, op1=0, CRn=0 only)")
            continue
        if f"{reg_id:#x}" not in host:
            problems.append(f"{where}: this host's KVM does not list it (KVM_GET_REG_LIST)")
            continue
        fw = arm64.FW_BY_ID.get(reg_id)
        kind = fw.kind if fw else ("idreg" if reg_id & ~0xFFFF == _SYSREG_PREFIX else "unknown_fw")
        if kind == "psci":
            tried = acceptance.get(name) or {}
            version = arm64.psci_name(value)
            if tried.get(version) != "accepted":
                ok = ", ".join(sorted(v for v, r in tried.items() if r == "accepted")) or "none known"
                problems.append(f"{where}: PSCI {version} is not accepted by this host's KVM "
                                f"({tried.get(version, 'not tried')}); it accepts {ok}")
        elif kind == "bitmap":
            tried = acceptance.get(name)
            if tried is None:
                problems.append(f"{where}: the profile has no bitmap trials: probe the host again")
            elif value & ~int(tried["known_bits"], 16):
                unknown = value & ~int(tried["known_bits"], 16)
                bits = [fw.bits.get(b, (f"bit {b}", ""))[0] for b in range(64) if unknown >> b & 1]
                problems.append(f"{where}: {_h(value)} has {', '.join(bits)}, unknown to this host's KVM "
                                f"(knows {tried['known_bits']})")
        elif kind == "workaround":
            problems.append(f"{where}: a mitigation level is a host property (CPU errata, mitigations=): "
                            "never pinned")
        elif kind == "idreg":
            problems += _check_idreg(reg_id, value, int(host[f"{reg_id:#x}"], 16), masks)
        else:
            problems.append(f"{where}: a firmware register this abiguard has no rule for: not pinned")
    return problems


def plan(contract: dict[str, Any], profile: dict[str, Any], stream: Iterable[str] | None = None,
         carried: bool = False, explicit: bool = False) -> list[Pin]:
    """The pins that give a VM of this contract exactly the contract's values on this host:
    every value that differs from the host's default (none: the library stays off), and 0
    for a hypercall bitmap the host lists and the VM's stream lacks, where the host's
    default is not 0 already.

    stream: the register list the VM arrives with (default: the contract's). carried: an
    incoming migration or restore, whose stream carries every value (judged by the
    verdict), so registers no pin realises are left to it; at a plain start they are
    refused. explicit: also pin firmware values equal to the host's defaults. Raises
    EnforceError listing every value the host cannot take, or that no pin can realise.
    """
    body = contract["aarch64"]
    config = body["config"]
    name, section, host = _host_section(profile, config)
    names = section.get("register_names") or {}
    have = {int(r, 16) for r in (stream if stream is not None else body["stream"])}
    want: dict[int, tuple[int, str]] = {}
    problems: list[str] = []
    for rid_hex, val_hex in body["values"].items():
        rid, value = int(rid_hex, 16), int(val_hex, 16)
        default = host.get(f"{rid:#x}")
        if default is None:
            continue          # the host lacks it: the verdict (stream rules) decides
        rule = arm64.value_rule(rid)
        if int(default, 16) == value:
            if explicit and rule in ("psci", "bitmap"):
                want[rid] = (value, "contract value (the host's default, pinned explicitly)")
            continue
        if rule in ("psci", "bitmap") or rule == "idreg" and not (carried and not library_allows(rid)):
            want[rid] = (value, f"contract value (host default {default})")
        elif not carried:
            problems.append(f"{names.get(rid_hex) or arm64.reg_name(rid)} ({rid:#x}): VM has {_h(value)}, this host {default}: "
                            f"no pin realises a {rule} register")
    for rid_hex, default in host.items():
        rid = int(rid_hex, 16)
        if rid not in have and arm64.value_rule(rid) == "bitmap" and (
                explicit or default is None or int(default, 16) != arm64.NEUTRAL_VALUE):
            want[rid] = (arm64.NEUTRAL_VALUE, f"absent from the VM's stream: kept off (host default {default})")
    problems += check_pins({r: v for r, (v, _w) in want.items()}, profile, config)
    if problems:
        raise EnforceError(name, problems)
    native = native_properties(profile)
    pins: list[Pin] = []
    for rid, (value, why) in sorted(want.items()):
        if native and arm64.value_rule(rid) == "idreg":
            from .arch import arm64_idregs

            reg = arm64_idregs.REG_BY_ID[rid]
            default = int(host[f"{rid:#x}"], 16)
            changed = [f for f in arm64_idregs.FIELDS_BY_REG.get(reg.name, ())
                       if (value ^ default) >> f.shift & ((1 << f.width) - 1)]
            props = {f"SYSREG_{reg.name.removesuffix('_EL1')}_{f.name}": (value >> f.shift) & ((1 << f.width) - 1)
                     for f in changed}
            if props and all(p in native for p in props):
                pins.append(Pin(rid, reg.name, value, "cpu-property", why, props))
                continue
        pins.append(Pin(rid, names.get(f"{rid:#x}") or arm64.reg_name(rid), value, "preload", why))
    return pins


def env_value(pins: Iterable[Pin]) -> str:
    """ABIGUARD_PINS for the library: the preload pins, in id order."""
    text = ",".join(f"{p.id:#018x}={p.value:#x}" for p in sorted(pins, key=lambda p: p.id) if p.how == "preload")
    if len(text) > MAX_ENV_CHARS:
        raise EnforceError("this host", [(f"{ENV_PINS} would be {len(text)} characters (the library reads "
                                         f"{MAX_ENV_CHARS})")])
    return text


def _attr(v: str) -> str:
    return v.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def commandline_xml(pins: Iterable[Pin], library: str = LIBRARY_PATH, prefix: str = "qemu") -> str:
    """The libvirt ``<qemu:commandline>`` element that loads the library with these pins;
    empty when nothing needs the library (off unless a contract asks for it)."""
    value = env_value(pins)
    if not value:
        return ""
    return (f'<{prefix}:commandline xmlns:{prefix}="{QEMU_XMLNS}">\n'
            f'  <{prefix}:env name="LD_PRELOAD" value="{_attr(library)}"/>\n'
            f'  <{prefix}:env name="{ENV_PINS}" value="{_attr(value)}"/>\n'
            f'</{prefix}:commandline>')


def cpu_properties(pins: Iterable[Pin]) -> dict[str, int]:
    """``-cpu host`` properties for the pins a native QEMU property realises."""
    out: dict[str, int] = {}
    for p in pins:
        if p.how == "cpu-property":
            out.update(p.props)
    return out


def describe(pins: Iterable[Pin]) -> list[str]:
    """One line per pin, for ``abiguard status``."""
    return [f"{p.name} ({p.id:#x}) = {p.value:#x} via {'LD_PRELOAD ' + LIBRARY_NAME if p.how == 'preload' else '-cpu ' + ','.join(p.props)}: {p.why}"
            for p in pins]
