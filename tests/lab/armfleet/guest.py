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
