"""The nested guest: its payload (guest.S), its domain XML, and what its console says."""
from __future__ import annotations

import re
import uuid
from pathlib import Path
from xml.sax.saxutils import escape

from .common import CROSS, HERE, run

SOURCE = HERE / "guest.S"
#: per-line keys that change with time or boot, not part of what the guest "sees"
VOLATILE = ("n", "boot", "now")
#: the last key of a view line: a line that has it was printed completely
LAST_KEY = "eol"
NAMESPACE_QEMU = "http://libvirt.org/schemas/domain/qemu/1.0"
#: a fixed UUID per guest name: a redefinition never fails with "already exists with uuid",
#: and the per-VM AppArmor profile keeps its name (libvirt-<uuid>)
UUID_NS = uuid.UUID("5f0b8c64-7a36-4a53-9f5e-61726d666c74")


def build(out: Path, view_every: int = 30) -> Path:
    """Cross-assemble guest.S into the raw binary *out* (rebuilt when the source is newer)."""
    if out.exists() and out.stat().st_mtime >= SOURCE.stat().st_mtime:
        return out
    obj = out.with_suffix(".o")
    run([f"{CROSS}gcc", "-nostdlib", f"-DVIEW_EVERY={view_every}", "-x", "assembler-with-cpp", "-c",
         str(SOURCE), "-o", str(obj)], quiet=True)
    run([f"{CROSS}objcopy", "-O", "binary", str(obj), str(out)], quiet=True)
    obj.unlink()
    return out


def parse_line(line: str) -> dict[str, str] | None:
    """'AFG n=0001 k=v ...' -> {'n': '0001', 'k': 'v', ...}; None unless complete"""
    line = line.strip()
    i = line.find("AFG n=")
    if i < 0:
        return None
    fields = dict(tok.split("=", 1) for tok in line[i + 4:].split() if "=" in tok)
    if fields.get(LAST_KEY) != "1":
        return None
    del fields[LAST_KEY]
    return fields


def heartbeats(text: str) -> list[tuple[int, int]]:
    """(n, CNTVCT) of every complete 'AFG-HB n=XXXX now=...' line"""
    return [(int(m.group(1), 16), int(m.group(2), 16))
            for m in re.finditer(r"AFG-HB n=([0-9a-f]{4}) now=([0-9a-f]+)\r?\n", text)]


def parse_views(text: str) -> list[dict[str, str]]:
    return [v for v in map(parse_line, text.replace("\r", "\n").split("\n")) if v]


def view_of(line: dict[str, str]) -> dict[str, str]:
    """what the guest sees: the line without counter and time stamps"""
    return {k: v for k, v in line.items() if k not in VOLATILE}


def diff(a: dict[str, str], b: dict[str, str]) -> dict[str, dict[str, str | None]]:
    """key -> {"before": .., "after": ..} for every key whose value differs"""
    va, vb = view_of(a), view_of(b)
    return {k: {"before": va.get(k), "after": vb.get(k)} for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)}


def domain_xml(name: str, *, machine: str = "virt", memory_mib: int = 16, image: str,
               qemu_env: dict[str, str] | None = None, extra_devices: str = "", cmdline: str | None = None,
               initrd: str | None = None) -> str:
    """A nested KVM guest: host-passthrough CPU, direct <kernel> boot of the payload, a pty
    serial console and nothing else (no disk, no NIC, no log file: every file libvirt adds to
    the per-VM AppArmor profile costs a profile recompile at start)."""
    uid = uuid.uuid5(UUID_NS, name)
    ns = f" xmlns:qemu='{NAMESPACE_QEMU}'" if qemu_env else ""
    env = ""
    if qemu_env:
        env = "  <qemu:commandline>\n" + "".join(
            f"    <qemu:env name='{escape(k)}' value='{escape(v)}'/>\n" for k, v in qemu_env.items()
        ) + "  </qemu:commandline>\n"
    boot_extra = "".join(f"\n    <{tag}>{escape(v)}</{tag}>"
                         for tag, v in (("initrd", initrd), ("cmdline", cmdline)) if v)
    return f"""<domain type='kvm'{ns}>
  <name>{escape(name)}</name>
  <uuid>{uid}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='aarch64' machine='{escape(machine)}'>hvm</type>
    <kernel>{escape(image)}</kernel>{boot_extra}
  </os>
  <features><gic version='3'/></features>
  <cpu mode='host-passthrough'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-aarch64</emulator>
    <controller type='usb' model='none'/>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <memballoon model='none'/>
{extra_devices}  </devices>
{env}</domain>
"""


def name_of(xml: str) -> str:
    m = re.search(r"<name>([^<]+)</name>", xml)
    if not m:
        raise ValueError("domain XML without <name>")
    return m.group(1).strip()


def uuid_of(xml: str) -> str | None:
    m = re.search(r"<uuid>([^<]+)</uuid>", xml)
    return m.group(1).strip() if m else None


#: the line's hypercall keys -> the probe's call keys (abiguard.arch.arm64.guest.CALLS):
#: each prints the low 32 bits of x0
_CALLS_PRINTED = {
    "psci": "PSCI_VERSION", "pf.smccc": "PSCI_FEATURES(SMCCC_VERSION)",
    "pf.cpu_suspend": "PSCI_FEATURES(CPU_SUSPEND_64)", "pf.cpu_off": "PSCI_FEATURES(CPU_OFF)",
    "pf.cpu_on": "PSCI_FEATURES(CPU_ON_64)", "pf.affinity_info": "PSCI_FEATURES(AFFINITY_INFO_64)",
    "pf.migrate_info_type": "PSCI_FEATURES(MIGRATE_INFO_TYPE)", "pf.system_off": "PSCI_FEATURES(SYSTEM_OFF)",
    "pf.system_reset": "PSCI_FEATURES(SYSTEM_RESET)", "pf.psci_features": "PSCI_FEATURES(PSCI_FEATURES)",
    "pf.system_suspend": "PSCI_FEATURES(SYSTEM_SUSPEND_64)", "pf.system_reset2": "PSCI_FEATURES(SYSTEM_RESET2_64)",
    "pf.system_off2": "PSCI_FEATURES(SYSTEM_OFF2_64)", "smccc": "SMCCC_VERSION",
    "wa1": "SMCCC_ARCH_FEATURES(ARCH_WORKAROUND_1)", "wa2": "SMCCC_ARCH_FEATURES(ARCH_WORKAROUND_2)",
    "wa3": "SMCCC_ARCH_FEATURES(ARCH_WORKAROUND_3)", "af.soc_id": "SMCCC_ARCH_FEATURES(SMCCC_ARCH_SOC_ID)",
    "af.pv_time": "SMCCC_ARCH_FEATURES(HV_PV_TIME_FEATURES)", "pvtime.st": "HV_PV_TIME_FEATURES(HV_PV_TIME_ST)",
    "trng": "TRNG_VERSION", "trng.rnd64": "TRNG_FEATURES(TRNG_RND64)", "kvm.uid0": "VENDOR_HYP_CALL_UID",
    "kvm.impl_ver": "VENDOR_HYP_KVM_DISCOVER_IMPL_VER", "kvm.feat0": "VENDOR_HYP_KVM_FEATURES",
    "kvm.feat1": "VENDOR_HYP_KVM_FEATURES.x1", "kvm.feat2": "VENDOR_HYP_KVM_FEATURES.x2",
    "kvm.feat3": "VENDOR_HYP_KVM_FEATURES.x3",
}
#: the line's register keys -> ONE_REG ids of what the guest read with MRS (64 bits)
_REGS_PRINTED = {
    "midr": 0x603000000013C000, "revidr": 0x603000000013C006, "aidr": 0x603000000013C807,
    "pfr0": 0x603000000013C020, "pfr1": 0x603000000013C021, "pfr2": 0x603000000013C022,
    "zfr0": 0x603000000013C024, "smfr0": 0x603000000013C025, "dfr0": 0x603000000013C028,
    "dfr1": 0x603000000013C029, "afr0": 0x603000000013C02C, "isar0": 0x603000000013C030,
    "isar1": 0x603000000013C031, "isar2": 0x603000000013C032, "isar3": 0x603000000013C033,
    "mmfr0": 0x603000000013C038, "mmfr1": 0x603000000013C039, "mmfr2": 0x603000000013C03A,
    "mmfr3": 0x603000000013C03B, "mmfr4": 0x603000000013C03C, "ctr": 0x603000000013D801,
    "dczid": 0x603000000013D807, "clidr": 0x603000000013C801,
    # CSSELR 0, 1, 2: kept by the probe only where CLIDR_EL1 describes that cache
    "ccsidr.l1d": 0x6020000000110000, "ccsidr.l1i": 0x6020000000110001, "ccsidr.l2": 0x6020000000110002,
}
#: what the line has and the probe does not ask (CNTFRQ_EL0: the timer, not the ID space;
#: the errata discovery of CPUs 1 and 2) or keeps only where CLIDR describes a cache
NOT_PROBED = frozenset({"cntfrq", "kvm.impl1.midr", "kvm.impl2.midr"})


def probe_view_as_printed(view: dict) -> dict[str, str]:
    """A profile configuration's ``guest_view`` (abiguard's probe) written as this guest
    prints its line: hex without 0x or leading zeros, hypercall answers in 32 bits."""
    regs = {int(k, 16): int(v, 16) for k, v in view["registers"].items()}
    fw = {k: int(v, 16) for k, v in view["firmware"].items()}
    out = {key: f"{fw[call] & 0xFFFFFFFF:x}" for key, call in _CALLS_PRINTED.items() if call in fw}
    out.update({key: f"{regs[rid]:x}" for key, rid in _REGS_PRINTED.items() if rid in regs})
    if "VENDOR_HYP_KVM_PTP" in fw:      # the line: 1 where the call answered
        out["kvm.ptp"] = "1" if fw["VENDOR_HYP_KVM_PTP"] & 0xFFFFFFFF != 0xFFFFFFFF else "0"
    ver = fw.get("VENDOR_HYP_KVM_DISCOVER_IMPL_VER")
    if ver is not None:               # the line: x2 (how many CPUs) where x0 is 0, else all ones
        out["kvm.impl_n"] = f"{fw['VENDOR_HYP_KVM_DISCOVER_IMPL_VER.x2'] if ver == 0 else (1 << 64) - 1:x}"
    cpu0 = fw.get("VENDOR_HYP_KVM_DISCOVER_IMPL_CPUS(0)")
    if cpu0 is not None:              # the line: x1 (MIDR) where x0 is 0, else x0
        out["kvm.impl0.midr"] = f"{fw['VENDOR_HYP_KVM_DISCOVER_IMPL_CPUS(0).x1'] if cpu0 == 0 else cpu0:x}"
    return out


def probe_vs_printed(view: dict, printed: dict[str, str]) -> dict[str, dict[str, str | None]]:
    """Every key of the guest's line whose value the probe's guest view does not give:
    {key: {"probe": .., "guest": ..}}; keys the probe does not ask (:data:`NOT_PROBED`) and
    CCSIDRs of caches CLIDR does not describe are left out."""
    mine = probe_view_as_printed(view)
    clidr = int(printed.get("clidr", "0"), 16)
    out: dict[str, dict[str, str | None]] = {}
    for key, value in view_of(printed).items():
        if key in NOT_PROBED:
            continue
        if key.startswith("ccsidr.") and key not in mine:
            sel = _REGS_PRINTED[key] & 0xFF
            level, instruction = (sel >> 1) + 1, sel & 1
            ctype = (clidr >> (3 * (level - 1))) & 7
            if ctype not in ((1, 3) if instruction else (2, 3, 4)):
                continue
        if mine.get(key) != value:
            out[key] = {"probe": mine.get(key), "guest": value}
    return out
