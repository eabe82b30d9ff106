"""abiguard's mixed-version x86 fleet lab: real KVM live migrations between libvirt/QEMU of
three Debian releases on this one machine.

    bookworm  libvirt 9.0  + QEMU 7.2   this machine's own userspace
    trixie    libvirt 11.3 + QEMU 10.0  chrooted (tests/lab/rootfs.sh)
    sid       libvirt 12.8 + QEMU 11.1  chrooted

Two of them at a time run as the hosts "a" and "b" of the two-host lab (twohost.sh,
TWOHOST_ROOTFS_A/B). Every ordered pair of versions is migrated (``virsh migrate --live
--p2p``: the source libvirtd drives the migration, as in a real fleet) for

  unpinned  host-model CPU and the newest pc-q35 machine type of its boot host. On this
            machine QEMU 7.2 and 10.0 abort a host-model vCPU with arch-capabilities
            (kvm_buf_set_msrs assertion): where plain host-model does not start, the VM is
            host-model with arch-capabilities disabled, and the record says so.
  pinned    ``abiguard pin VM --baseline fleet.json`` to ``abiguard baseline`` over the three
            host profiles (each host probed itself with ``abiguard probe`` inside its chroot).

The guest is a 5 KB multiboot kernel (below, assembled with binutils) that executes CPUID
for every leaf and subleaf and prints the results on COM1, then halts with interrupts off;
``virsh inject-nmi`` makes it print them again, on whichever host it now runs. So "the
guest-visible CPUID" before and after a migration is what the guest itself read, not what
QEMU says it configured; QEMU's view (qom-get feature-words / filtered-features / family,
model, stepping, ... of the vCPU) is recorded next to it.

    python3 tests/lab/x86fleet.py record [--out DIR]     # default: tests/data/x86
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    from .twohost import LabError, TwoHost, run
except ImportError:  # pragma: no cover - run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from twohost import LabError, TwoHost, run  # type: ignore[no-redef]

LAB_DIR = Path(__file__).resolve().parent
REPO = LAB_DIR.parents[1]
PLUGIN = REPO / "plugin"
ROOTFS_SH = LAB_DIR / "rootfs.sh"
DATA = REPO / "tests" / "data" / "x86"
#: bound at the same path into every chrooted host (the guest kernel lives here)
SHARED = Path("/var/tmp/abiguard-x86fleet")
CHROOT_PLUGIN = "/opt/abiguard/plugin"
CHROOT_VENDOR_QEMU = "/usr/share/abiguard/vendor/qemu"
VERSIONS = ("bookworm", "trixie", "sid")
#: chrooted suites (bookworm is this machine)
SUITES = {"trixie": "trixie", "sid": "sid"}
MOVE = ("--persistent", "--undefinesource")

CPUID_ASM = r"""
/* abiguard x86 fleet lab guest: a multiboot kernel that prints, on COM1, every CPUID
   leaf/subleaf the guest sees, then halts with interrupts off; an NMI (virsh inject-nmi)
   wakes it and it prints everything again (on whichever host it runs by then), once.
   Line format: LEAF SUBLEAF: EAX EBX ECX EDX (hex); then "MSR 0000010a: EDX EAX"
   (IA32_ARCH_CAPABILITIES as the guest reads it), or "MSR 0000010a: gp" when the rdmsr
   faults: the guest tries it whatever CPUID.7.0:EDX[29] says, so what reaches it is
   measured, not inferred from the CPUID bit. */
        .code32
        .section .text
        .align 4
mb:     .long 0x1BADB002, 0, -(0x1BADB002)
        .globl _start
_start: cli
        mov $stack_top, %esp
        lgdt gdtr                   /* our own flat GDT: the loader's may not survive */
        ljmp $0x08, $1f
1:      mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov %cs, %ax                /* IDT vector 2 (NMI) -> nmi */
        mov $idt, %ebx
        mov $nmi, %ecx
        movw %cx, 16(%ebx)
        movw %ax, 18(%ebx)
        movw $0x8E00, 20(%ebx)
        shr $16, %ecx
        movw %cx, 22(%ebx)
        mov $gp, %ecx               /* IDT vector 13 (#GP) -> gp: a faulting rdmsr */
        movw %cx, 104(%ebx)
        movw %ax, 106(%ebx)
        movw $0x8E00, 108(%ebx)
        shr $16, %ecx
        movw %cx, 110(%ebx)
        lidt idtr
dump:   incl round
        mov $s_begin, %esi
        call puts
        mov round, %eax
        call hex32
        mov $'\n', %al
        call putc
        xor %eax, %eax
        xor %ecx, %ecx
        cpuid
        mov %eax, maxleaf
        mov %eax, maxbasic
        xor %edi, %edi
1:      call leaf
        inc %edi
        cmp maxleaf, %edi
        jbe 1b
        mov $0x40000000, %edi
2:      call leaf
        inc %edi
        cmp $0x40000010, %edi
        jbe 2b
        mov $0x80000000, %eax
        xor %ecx, %ecx
        cpuid
        mov %eax, maxleaf
        mov $0x80000000, %edi
3:      call leaf
        inc %edi
        cmp maxleaf, %edi
        jbe 3b
        mov $s_msr, %esi            /* IA32_ARCH_CAPABILITIES, whatever CPUID says: #GP -> gp */
        call puts
        mov $0x10a, %ecx
        rdmsr
        mov %eax, r_a
        mov %edx, %eax
        call sphex
        mov r_a, %eax
        call sphex
        mov $'\n', %al
        call putc
12:     mov $s_end, %esi
        call puts
        hlt
        jmp dump
/* the rdmsr faulted: say so and finish the dump (a fresh stack, no iret: see nmi) */
gp:     mov $stack_top, %esp
        mov $s_gp, %esi
        call puts
        jmp 12b
/* no iret: this machine's (nested) KVM fails to emulate the IRET that ends an NMI handler
   ("KVM internal error. Suberror: 1 ... emulation failure"), so the handler starts over on
   a fresh stack and NMIs stay blocked: one NMI per boot (later reads: virsh reset) */
nmi:    mov $stack_top, %esp
        jmp dump

/* leaf %edi, subleaves 0..n-1: n = 64 for 0xd, 8 for the leaves in sublist, else 1 */
leaf:   mov $1, %ebp
        cmp $0xd, %edi
        jne 5f
        mov $64, %ebp
        jmp 7f
5:      mov $sublist, %ebx
6:      mov (%ebx), %eax
        test %eax, %eax
        jz 7f
        add $4, %ebx
        cmp %eax, %edi
        jne 6b
        mov $8, %ebp
7:      xor %esi, %esi
8:      mov %edi, %eax
        mov %esi, %ecx
        push %esi
        cpuid
        mov %eax, r_a
        mov %ebx, r_b
        mov %ecx, r_c
        mov %edx, r_d
        pop %esi
        mov %edi, %eax
        call hex32
        mov $' ', %al
        call putc
        mov %esi, %eax
        call hex32
        mov $':', %al
        call putc
        mov r_a, %eax
        call sphex
        mov r_b, %eax
        call sphex
        mov r_c, %eax
        call sphex
        mov r_d, %eax
        call sphex
        mov $'\n', %al
        call putc
        inc %esi
        cmp %ebp, %esi
        jb 8b
        ret

sphex:  push %eax
        mov $' ', %al
        call putc
        pop %eax
hex32:  push %ecx
        push %edx
        mov %eax, %edx
        mov $8, %ecx
9:      rol $4, %edx
        mov %dl, %al
        and $0xf, %al
        add $'0', %al
        cmp $'9', %al
        jbe 10f
        add $('a' - '9' - 1), %al
10:     call putc
        loop 9b
        pop %edx
        pop %ecx
        ret

puts:   lodsb
        test %al, %al
        jz 11f
        call putc
        jmp puts
11:     ret

putc:   push %edx
        mov $0x3f8, %dx
        out %al, %dx
        pop %edx
        ret

        .align 4
sublist: .long 0x4, 0x7, 0xb, 0xf, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1d, 0x1e, 0x1f, 0x20, 0x23, 0x24
         .long 0x8000001d, 0x80000020, 0x80000026, 0
gdtr:   .word 8 * 3 - 1
        .long gdt
        .align 8
gdt:    .quad 0, 0x00cf9a000000ffff, 0x00cf92000000ffff
idtr:   .word 8 * 14 - 1
        .long idt
s_begin: .asciz "ABIGUARD-CPUID-BEGIN "
s_end:  .asciz "ABIGUARD-CPUID-END\n"
s_msr:  .asciz "MSR 0000010a:"
s_gp:   .asciz " gp\n"
        .align 8
idt:    .fill 14, 8, 0
round:  .long 0
maxleaf: .long 0
maxbasic: .long 0
r_a:    .long 0
r_b:    .long 0
r_c:    .long 0
r_d:    .long 0
        .align 16
        .fill 4096, 1, 0
stack_top:
"""

DOMAIN_XML = """<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='{machine}'>hvm</type><kernel>{kernel}</kernel></os>
  {cpu}
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <serial type='file'><source path='/var/log/libvirt/qemu/{name}.serial'/><target port='0'/></serial>
  </devices>
</domain>
"""

CPU_XML = {
    "host-model": "<cpu mode='host-model'/>",
    "host-model-noarchcap": "<cpu mode='host-model'><feature policy='disable' name='arch-capabilities'/></cpu>",
    # what a VM has before `abiguard pin` replaces its CPU (qemu64 minus what this KVM lacks)
    "prepin": "<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model>"
              "<feature policy='disable' name='pni'/><feature policy='disable' name='svm'/></cpu>",
}
#: QEMU vCPU properties recorded next to the guest's own CPUID dump
QOM_PROPS = ("feature-words", "filtered-features", "vendor", "family", "model", "stepping",
             "model-id", "level", "xlevel", "min-level", "min-xlevel", "phys-bits", "tsc-frequency")
#: leaf 1 EBX[31:24] is the initial APIC id, which is per vCPU, not ABI (one vCPU here anyway)


def log(msg: str) -> None:
    sys.stderr.write(f"[x86fleet {time.strftime('%T')}] {msg}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------- set-up
def problems() -> list[str]:
    """What this machine lacks for the fleet lab (beyond the two-host lab's own needs)."""
    out = []
    for tool in ("debootstrap", "as", "ld", "chroot"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            out.append(f"missing {tool}")
    if "overlay" not in Path("/proc/filesystems").read_text():
        out.append("no overlayfs")
    try:
        qemu_qmp_dir()
    except ImportError:
        out.append("qemu.qmp not importable (packaging/setup-dev)")
    return out


def build_rootfs(suites: tuple[str, ...] = ("trixie", "sid")) -> dict[str, str]:
    """Build (once; cached under /var/cache/abiguard-lab) and return {suite: path}."""
    t0 = time.monotonic()
    cp = run([str(ROOTFS_SH), "build", *suites], timeout=1800)
    paths = cp.stdout.split()
    log(f"rootfs {' '.join(suites)} ready in {time.monotonic() - t0:.1f} s")
    return dict(zip(suites, paths))


def rootfs_info(suite: str) -> dict[str, str]:
    cp = run([str(ROOTFS_SH), "info", suite], timeout=30)
    return dict(line.split(" ", 1) for line in cp.stdout.splitlines() if " " in line)


def qemu_qmp_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("qemu.qmp")
    if spec is None or not spec.origin:
        raise ImportError("qemu.qmp")
    return Path(spec.origin).resolve().parents[1]  # .../site-packages/qemu


def build_guest(dest: Path = SHARED) -> Path:
    """Assemble the CPUID-dumping multiboot kernel into dest/cpuid-dump.elf."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "cpuid-dump.elf"
    with tempfile.TemporaryDirectory(prefix="abiguard-cpuid-") as tmp:
        src, obj, elf = Path(tmp, "cpuid.S"), Path(tmp, "cpuid.o"), Path(tmp, "cpuid.elf")
        src.write_text(CPUID_ASM)
        subprocess.run(["as", "--32", "-o", str(obj), str(src)], check=True, capture_output=True, timeout=60)
        subprocess.run(["ld", "-m", "elf_i386", "-N", "-Ttext=0x100000", "-e", "_start", "--no-warn-rwx-segments",
                        "-o", str(elf), str(obj)], check=True, capture_output=True, timeout=60)
        shutil.copyfile(elf, out)
    out.chmod(0o644)
    return out


# ---------------------------------------------------------------------------- parsing
def parse_dumps(text: str) -> dict[int, dict[str, list[str]]]:
    """{round: {"LEAF.SUB": [eax, ebx, ecx, edx]}} of every complete dump in a serial log."""
    out: dict[int, dict[str, list[str]]] = {}
    cur: dict[str, list[str]] | None = None
    rnd = 0
    lines = text.split("\n")
    # the last line is still being written unless the text ends with one (the log is read
    # while the guest prints: "ABIGUARD-CPUID-BEGIN " without its round was seen)
    for line in (x.rstrip("\r") for x in lines[:-1]):
        if line.startswith("ABIGUARD-CPUID-BEGIN "):
            rnd, cur = int(line.split()[1], 16), {}
        elif line.startswith("ABIGUARD-CPUID-END") and cur is not None:
            out[rnd], cur = cur, None
        elif cur is not None and line.startswith("MSR ") and ":" in line:
            key, regs = line.split(":", 1)
            cur[f"msr.{int(key.split()[1], 16):#x}"] = [r if r == "gp" else f"0x{r}" for r in regs.split()]
        elif cur is not None and ":" in line:
            key, regs = line.split(":", 1)
            leaf, sub = key.split()
            cur[f"{int(leaf, 16):#x}.{int(sub, 16)}"] = [f"0x{r}" for r in regs.split()]
    return out


def guest_reads(dump: dict[str, list[str]]) -> dict[str, str]:
    """What the guest itself read of IA32_ARCH_CAPABILITIES: CPUID.7.0:EDX[29] (whether
    the MSR is enumerated) and its rdmsr of 0x10a (the value, or gp when it faulted)."""
    edx = int(dump["0x7.0"][3], 16) if "0x7.0" in dump else 0
    msr = dump.get("msr.0x10a")
    value = "not read" if msr is None else "gp" if msr == ["gp"] else f"{int(msr[0], 16) << 32 | int(msr[1], 16):#x}"
    return {"cpuid_7_0_edx_29": str(edx >> 29 & 1), "msr_0x10a": value}


def cpuid_digest(dump: dict[str, list[str]]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:32]


def cpuid_diff(a: dict[str, list[str]], b: dict[str, list[str]]) -> list[str]:
    """Human lines for every leaf/subleaf/register that differs."""
    lines = []
    def order(k: str) -> tuple[int, int, int]:
        head, _, tail = k.partition(".")
        return (1, int(tail, 16), 0) if head == "msr" else (0, int(head, 16), int(tail))

    for key in sorted(set(a) | set(b), key=order):
        ra, rb = a.get(key), b.get(key)
        if ra == rb:
            continue
        if ra is None or rb is None or "gp" in ra + rb:
            lines.append(f"{key}: {'absent' if ra is None else ra} -> {'absent' if rb is None else rb}")
            continue
        for name, x, y in zip(("edx", "eax") if key.startswith("msr.") else ("eax", "ebx", "ecx", "edx"), ra, rb):
            if x != y:
                gained, lost = int(y, 16) & ~int(x, 16), int(x, 16) & ~int(y, 16)
                lines.append(f"{key} {name}: {x} -> {y} (bits +{gained:#x} -{lost:#x})")
    return lines


def feature_words(words: list[dict[str, Any]]) -> dict[str, str]:
    return {f"{w['cpuid-input-eax']:#x}.{w.get('cpuid-input-ecx', 0)}.{w['cpuid-register'].lower()}":
            f"{w['features']:#x}" for w in words}


# ---------------------------------------------------------------------------- the lab
class FleetLab:
    """Two versions of the fleet as hosts a and b of a two-host lab."""

    def __init__(self, a: str, b: str, prefix: str, rootfs: dict[str, str],
                 hook: bool = False) -> None:
        self.version = {"a": a, "b": b}
        self.host_of = {a: "a", b: "b"}
        self.hook = hook
        binds = [f"{PLUGIN}:{CHROOT_PLUGIN}", f"{qemu_qmp_dir()}:{CHROOT_VENDOR_QEMU}", f"{SHARED}:{SHARED}"]
        self.lab = TwoHost(prefix=prefix, rootfs={h: rootfs.get(v) for h, v in self.version.items()},
                           chroot_binds=binds, timeout=120)
        self.kernel = SHARED / "cpuid-dump.elf"

    @classmethod
    def over(cls, lab: TwoHost, versions: dict[str, str], kernel: Path) -> FleetLab:
        """These guest helpers over a two-host lab that is already up (the fleet lab's)."""
        self = cls.__new__(cls)
        self.version, self.host_of, self.hook = dict(versions), {v: h for h, v in versions.items()}, False
        self.lab, self.kernel = lab, kernel
        return self

    # -- lifecycle
    def up(self) -> None:
        prestart = None
        if self.hook:
            prestart = (f'if [ -n "${{TWOHOST_ROOTFS:-}}" ]; then PYTHONPATH={CHROOT_PLUGIN} '
                        f'PYTHONDONTWRITEBYTECODE=1 python3 -m abiguard install --no-probe; '
                        f'else {sys.executable} -m abiguard install --no-probe; fi')
        t0 = time.monotonic()
        self.lab.up(prestart=prestart)
        log(f"lab {self.lab.prefix} up ({self.version['a']} a, {self.version['b']} b) "
            f"in {time.monotonic() - t0:.1f} s")

    def down(self) -> None:
        self.lab.down()

    # -- abiguard on a host
    def python(self, host: str) -> list[str]:
        if self.lab.chrooted(host):
            return ["env", f"PYTHONPATH={CHROOT_PLUGIN}", "PYTHONDONTWRITEBYTECODE=1", "python3"]
        return [sys.executable]

    def abiguard(self, host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cp = self.lab.exec(host, *self.python(host), "-m", "abiguard", *args, check=False, timeout=180)
        if check and cp.returncode != 0:
            raise LabError(f"abiguard {' '.join(args)} on {host} ({self.version[host]}) "
                           f"rc={cp.returncode}:\n{cp.stderr}")
        return cp

    def probe(self, host: str) -> dict[str, Any]:
        t0 = time.monotonic()
        self.abiguard(host, "probe", "-o", "/var/lib/abiguard/host-profile.json")
        doc = json.loads((self.lab.host_state(host) / "abiguard-lib" / "host-profile.json").read_text())
        log(f"probe of {self.version[host]} ({host}) in {time.monotonic() - t0:.1f} s: libvirt "
            f"{doc['stack']['libvirt']['version']}, QEMU {doc['stack']['qemu']['version']}")
        return doc

    # -- guests
    def serial(self, host: str, name: str) -> Path:
        return self.lab.host_state(host) / "log" / "qemu" / f"{name}.serial"

    def define(self, host: str, name: str, machine: str, cpu: str) -> None:
        for h in ("a", "b"):  # libvirt opens the serial file itself; the directory must exist
            self.serial(h, name).parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        xml = DOMAIN_XML.format(name=name, machine=machine, kernel=self.kernel, cpu=CPU_XML.get(cpu, cpu))
        path = self.lab._need_up() / "guests" / f"{name}.xml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(xml)
        self.lab.virsh(host, "define", str(path))

    def wait_dump(self, host: str, name: str, rnd: int, timeout: float = 30) -> dict[str, list[str]] | None:
        deadline = time.monotonic() + timeout
        f = self.serial(host, name)
        while time.monotonic() < deadline:
            try:
                dumps = parse_dumps(f.read_text(errors="replace"))
            except FileNotFoundError:
                dumps = {}
            if rnd in dumps:
                return dumps[rnd]
            if self.lab.domstate(host, name) != "running":
                return None
            time.sleep(0.1)
        return None

    def qom(self, host: str, name: str) -> dict[str, Any]:
        """QEMU's view of the running vCPU (one libvirt connection for all properties)."""
        import libvirt
        import libvirt_qemu

        conn = libvirt.open(self.lab.uri(host))
        try:
            dom = conn.lookupByName(name)
            out: dict[str, Any] = {}
            for prop in QOM_PROPS:
                cmd = json.dumps({"execute": "qom-get", "arguments": {"path": "/machine/unattached/device[0]",
                                                                      "property": prop}})
                try:
                    ans = json.loads(libvirt_qemu.qemuMonitorCommand(dom, cmd, 0))
                except libvirt.libvirtError as e:
                    out[prop] = f"error: {e.get_error_message()}"
                    continue
                val = ans.get("return", ans.get("error"))
                out[prop] = feature_words(val) if prop in ("feature-words", "filtered-features") else val
            return out
        finally:
            conn.close()

    def live_cpu(self, host: str, name: str) -> str:
        xml = self.lab.virsh(host, "dumpxml", name).stdout
        start, end = xml.find("<cpu"), xml.find("</cpu>")
        return xml[start:end + 6] if start >= 0 and end >= 0 else ""

    def machine_of(self, host: str, name: str) -> str:
        import re

        m = re.search(r"machine='([^']+)'", self.lab.virsh(host, "dumpxml", name).stdout)
        return m.group(1) if m else ""

    def snapshot(self, host: str, name: str, rnd: int) -> dict[str, Any]:
        dump = self.wait_dump(host, name, rnd)
        return {"host_version": self.version[host], "cpuid": dump, "qom": self.qom(host, name),
                "machine": self.machine_of(host, name), "live_cpu": self.live_cpu(host, name)}

    def cleanup(self, name: str) -> None:
        for h in ("a", "b"):
            if name in self.lab.domains(h):
                self.lab.destroy_guest(h, name)

    def start(self, host: str, name: str) -> subprocess.CompletedProcess:
        return self.lab.virsh(host, "start", name, check=False)

    def migrate_and_record(self, src: str, name: str, case: dict[str, Any]) -> None:
        """The VM runs on src: record, migrate to the other host, record again."""
        dst = "b" if src == "a" else "a"
        case["before"] = self.snapshot(src, name, 1)
        pid = self.lab.qemu_pid(src, name)
        cp = self.lab.migrate(src, dst, name, *MOVE, p2p=True, check=False)
        case["migrate"] = {"ok": cp.returncode == 0, "rc": cp.returncode, "seconds": round(cp.seconds, 2),
                           "error": cp.stderr.strip(),
                           "mode": "virsh migrate --live --p2p --persistent --undefinesource"}
        if cp.returncode == 0:
            case["migrate"]["dest_running"] = self.lab.domstate(dst, name) == "running"
            self.lab.virsh(dst, "inject-nmi", name)
            case["after"] = self.snapshot(dst, name, 2)
        else:
            case["migrate"]["source_still_running"] = (self.lab.domstate(src, name) == "running"
                                                       and self.lab.qemu_pid(src, name) == pid)
            case["migrate"]["left_on_dest"] = name in self.lab.domains(dst)
            case["after"] = None
        judge(case)


def judge(case: dict[str, Any]) -> None:
    """What really happened, in the terms the verdict is held to."""
    before, after = case["before"], case.get("after")
    if not case["migrate"]["ok"]:
        case["outcome"] = "failed"
        return
    if not (before and after and before["cpuid"] and after["cpuid"]):
        case["outcome"] = "migrated, CPUID not read"
        return
    diff = cpuid_diff(before["cpuid"], after["cpuid"])
    fw_a, fw_b = before["qom"].get("feature-words"), after["qom"].get("feature-words")
    # a newer QEMU lists more feature words; a word one side does not list is 0 there
    fw_a, fw_b = fw_a or {}, fw_b or {}
    fw = sorted(k for k in set(fw_a) | set(fw_b) if int(fw_a.get(k, "0x0"), 16) != int(fw_b.get(k, "0x0"), 16))
    case["cpuid_diff"] = diff
    case["feature_words_diff"] = [f"{k}: {fw_a.get(k, '0x0')} -> {fw_b.get(k, '0x0')}" for k in fw]
    case["outcome"] = "kept" if not diff and not fw else "changed"


# ---------------------------------------------------------------------------- the fleet
def newest_q35(profile: dict[str, Any]) -> str:
    sys.path.insert(0, str(PLUGIN))
    from abiguard.model.stack import newest_machine

    m = newest_machine([m["name"] for m in profile["stack"]["qemu"]["machines"]], "pc-q35")
    assert m, "no pc-q35 machine type"
    return m


def record(out: Path = DATA, keep_unpinned_cpu: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the whole fleet; write out/profiles/*.json, out/fleet.json, out/groundtruth.json."""
    sys.path.insert(0, str(PLUGIN))
    from abiguard.engine import baseline as baseline_mod
    from abiguard.model import profile as profile_mod

    t_all = time.monotonic()
    rootfs = build_rootfs()
    build_guest()
    profiles: dict[str, dict[str, Any]] = {}
    unpinned_cpu: dict[str, str] = dict(keep_unpinned_cpu or {})
    cases: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    fleet: dict[str, Any] | None = None
    out.mkdir(parents=True, exist_ok=True)
    (out / "profiles").mkdir(exist_ok=True)

    def run_cases(fl: FleetLab, kinds: tuple[str, ...]) -> None:
        for src in ("a", "b"):
            sv, dv = fl.version[src], fl.version["b" if src == "a" else "a"]
            for kind in kinds:
                name = f"x86-{kind}-{sv}-{dv}"
                case: dict[str, Any] = {"source": sv, "dest": dv, "vm": kind, "name": name}
                t0 = time.monotonic()
                try:
                    if kind in ("unpinned", "host-model"):
                        # unpinned: the newest machine type of its boot host; host-model: the
                        # baseline's machine type, so that the CPU is the first thing that differs
                        machine = newest_q35(profiles[sv]) if kind == "unpinned" else fleet_machine()
                        cpus = [unpinned_cpu[sv]] if sv in unpinned_cpu else ["host-model", "host-model-noarchcap"]
                        case["start_attempts"] = []
                        for cpu in cpus:
                            fl.define(src, name, machine, cpu)
                            cp = fl.start(src, name)
                            case["start_attempts"].append({"cpu": cpu, "ok": cp.returncode == 0,
                                                           "error": cp.stderr.strip()})
                            if cp.returncode == 0:
                                unpinned_cpu[sv] = cpu
                                case["cpu"] = cpu
                                break
                            fl.lab.virsh(src, "undefine", name, check=False)
                        else:
                            raise LabError(f"{name}: no host-model variant starts on {sv}: {case['start_attempts']}")
                        case["machine"] = machine
                    else:
                        assert fleet is not None
                        fl.define(src, name, "q35", "prepin")  # "pc" cannot take a pc-q35 pin: see the report
                        # pin runs from outside with -c URI, as an operator would
                        # a refused baseline (issue 24) is not pinned to: its contract is, as a
                        # contract file, to hold each host's start to what the baseline said of it
                        pin_file = out / ("fleet.json" if fleet["outcome"]["holds"] else "fleet-contract.json")
                        cp = run([sys.executable, "-m", "abiguard", "pin", name, "--baseline", str(pin_file),
                                  "-c", fl.lab.uri(src), "--json"], timeout=120,
                                 env=dict(os.environ, PYTHONPATH=str(PLUGIN)))
                        case["pin"] = json.loads(cp.stdout)
                        case["domain_xml"] = fl.lab.virsh(src, "dumpxml", "--inactive", name).stdout
                        cp = fl.start(src, name)
                        case["start_attempts"] = [{"cpu": "pinned", "ok": cp.returncode == 0,
                                                   "error": cp.stderr.strip()}]
                        if cp.returncode != 0:
                            case["outcome"] = "pinned VM does not start"
                            cases.append(case)
                            continue
                        case["cpu"] = "pinned"
                        case["machine"] = fl.machine_of(src, name)
                    fl.migrate_and_record(src, name, case)
                finally:
                    fl.cleanup(name)
                case["seconds"] = round(time.monotonic() - t0, 2)
                log(f"{kind:8} {sv:8} -> {dv:8}: {case.get('outcome')}"
                    + (f" ({case['migrate']['error'][:160]})" if not case.get("migrate", {}).get("ok", True) else ""))
                cases.append(case)

    def with_lab(a: str, b: str, prefix: str, step) -> None:  # type: ignore[no-untyped-def]
        fl = FleetLab(a, b, prefix, rootfs)
        t0 = time.monotonic()
        try:
            fl.up()
            step(fl)
        finally:
            fl.down()
            timings[f"lab {a}+{b} ({prefix})"] = round(time.monotonic() - t0, 1)

    def probe_all(fl: FleetLab) -> None:
        for h in ("a", "b"):
            if fl.version[h] not in profiles:
                profiles[fl.version[h]] = fl.probe(h)

    def fleet_machine() -> str:
        assert fleet is not None
        return str(fleet["contract"]["machine_type"])

    def make_fleet(uris: dict[str, str]) -> None:
        """``abiguard baseline`` over the three fresh profiles, libvirt computing the CPU
        (the oldest of the three) and every host's libvirt confirming it."""
        nonlocal fleet
        from abiguard.arch.x86.hypervisor_cpu import HypervisorCpu

        for v, doc in profiles.items():  # JSON only (profile.save would add the hook's marshal view)
            (out / "profiles" / f"{v}.json").write_text(profile_mod.render(doc))
        docs = [profile_mod.load(str(out / "profiles" / f"{v}.json")).with_label(v) for v in VERSIONS]
        hypervisors = [HypervisorCpu.open(uris[v]) for v in VERSIONS]
        try:
            fleet = baseline_mod.compute(docs, hypervisors=hypervisors)
        finally:
            for h in hypervisors:
                h.conn.close()
        # the URIs are this run's sockets: name the hosts instead
        fleet["libvirt"] = {v: fleet.get("libvirt", {}).get(uris[v]) for v in VERSIONS}
        def named(text: str) -> str:
            for v, uri in uris.items():
                text = text.replace(uri, v)
            return text

        fleet["conflicts"] = [named(c) for c in fleet["conflicts"]]
        (out / "fleet.json").write_text(json.dumps(fleet, indent=1, sort_keys=True) + "\n")
        (out / "fleet-contract.json").write_text(json.dumps(fleet["contract"], indent=1) + "\n")
        o = fleet["outcome"]
        log(f"baseline {o['verdict']}" + "".join(f"; {h}: {w}" for h, b in o["blocked"].items() for w in b["why"][:2])
            + "".join(f"; {named(x)}" for x in o["libvirt"]))
        log(f"baseline: machine {fleet['contract']['machine_type']}, CPU model "
            f"{fleet['contract']['x86_64']['cpu_model']} with {len(fleet['contract']['x86_64']['features'])} "
            f"features, libvirt {({v: (x or {}).get('compare') for v, x in fleet['libvirt'].items()})}, "
            f"conflicts {fleet['conflicts']}")

    kinds = ("unpinned", "host-model", "pinned")
    labs: list[FleetLab] = []
    try:
        # bookworm+trixie and sid+bookworm at once: all three libvirts answer the baseline
        t0 = time.monotonic()
        for a, b, prefix in (("bookworm", "trixie", "abgf1"), ("sid", "bookworm", "abgf2")):
            labs.append(FleetLab(a, b, prefix, rootfs))
            labs[-1].up()
        for fl in labs:
            probe_all(fl)
        make_fleet({"bookworm": labs[0].lab.uri("a"), "trixie": labs[0].lab.uri("b"), "sid": labs[1].lab.uri("a")})
        for fl in labs:
            run_cases(fl, kinds)
        for fl in labs:
            fl.down()
        timings["labs bookworm+trixie, sid+bookworm"] = round(time.monotonic() - t0, 1)
        labs = []
        with_lab("trixie", "sid", "abgf3", lambda fl: run_cases(fl, kinds))
    finally:
        for fl in labs:
            fl.down()
        shutil.rmtree(SHARED, ignore_errors=True)

    # what each VM's guest read of IA32_ARCH_CAPABILITIES on its boot host (the MSR itself:
    # the guest tries rdmsr 0x10a whatever CPUID says)
    reads = {f"{c['vm']} on {c['source']}": guest_reads(c["before"]["cpuid"]) for c in cases
             if c.get("before") and c["before"].get("cpuid")}
    # CPUID dumps are shared between cases: keep each distinct dump once
    dumps: dict[str, dict[str, list[str]]] = {}
    for case in cases:
        for side in ("before", "after"):
            snap = case.get(side)
            if snap and snap.get("cpuid"):
                d = cpuid_digest(snap["cpuid"])
                dumps[d] = snap["cpuid"]
                snap["cpuid"] = d
    order = {v: i for i, v in enumerate(VERSIONS)}
    cases.sort(key=lambda c: (c["vm"], order[c["source"]], order[c["dest"]]))
    versions = {v: {"libvirt": profiles[v]["stack"]["libvirt"]["version"],
                    "qemu": profiles[v]["stack"]["qemu"]["version"],
                    "qemu_package": profiles[v]["stack"]["qemu"].get("package"),
                    "profile": f"profiles/{v}.json", "digest": profiles[v]["digest"]} for v in VERSIONS}
    doc = {"format": "abiguard-x86-fleet-groundtruth", "version": 1,
           "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"kernel": os.uname().release, "cpu": _cpu_name()},
           "versions": versions, "unpinned_cpu": unpinned_cpu, "fleet": "fleet.json",
           "guest": "multiboot CPUID dumper (tests/lab/x86fleet.py CPUID_ASM), 1 vCPU, 64 MiB",
           "timings": dict(timings, total=round(time.monotonic() - t_all, 1)),
           "guest_reads": dict(sorted(reads.items())), "cases": cases, "cpuid_dumps": dumps}
    (out / "groundtruth.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    log(f"fleet recorded in {time.monotonic() - t_all:.1f} s -> {out}")
    return doc


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


# ---------------------------------------------------------------------------- the verdict
def load_profiles(data: Path = DATA) -> dict[str, Any]:
    sys.path.insert(0, str(PLUGIN))
    from abiguard.model import profile as profile_mod

    return {v: profile_mod.load(str(data / "profiles" / f"{v}.json")).with_label(v) for v in VERSIONS}


def case_contract(case: dict[str, Any], profiles: dict[str, Any]) -> Any:
    """The contract the case's VM has, as abiguard makes it.

    pinned: the one ``abiguard pin --baseline`` wrote into the domain (read back from its
    <metadata>). unpinned: what ``abiguard pin VM`` would pin on its boot host for a
    host-model VM (``contract.from_profile`` with the VM's machine type), with the VM's own
    explicit <feature> overrides (arch-capabilities disabled where plain host-model cannot
    start on this machine)."""
    sys.path.insert(0, str(PLUGIN))
    from abiguard.model import contract
    from abiguard.xml import contract as contract_xml, domain as domxml

    if case["vm"] == "pinned":
        facts = domxml.parse(case["domain_xml"].encode(), f"domain {case['name']}")
        sealed = contract_xml.from_element(facts.contract, f"contract of {case['name']}")
        assert sealed is not None
        return sealed
    sealed = contract.from_profile(profiles[case["source"]], machine_type=case["machine"])
    if case["cpu"] == "host-model-noarchcap":
        features = dict(sealed.body.features, **{"arch-capabilities": "disable"})
        sealed = sealed.replace(body=sealed.body.replace(features=features, arch_capabilities=0))
    return sealed


def verdicts(doc: dict[str, Any], profiles: dict[str, Any]) -> dict[tuple[str, str, str], Any]:
    """(vm, source, dest) -> abiguard's Verdict for every recorded case with a running VM."""
    sys.path.insert(0, str(PLUGIN))
    from abiguard.engine import verdict

    out = {}
    for case in doc["cases"]:
        if case.get("migrate") is None:
            continue
        out[(case["vm"], case["source"], case["dest"])] = verdict.check(case_contract(case, profiles),
                                                                         profiles[case["dest"]])
    return out


def matrix(doc: dict[str, Any], verdicts: dict[tuple[str, str, str], str] | None = None) -> str:
    """The 3x3 table: real outcome (and abiguard's verdict) per ordered pair."""
    lines = []
    for kind in ("unpinned", "host-model", "pinned"):
        lines.append(f"{kind}: source \\ dest".ljust(24) + "".join(v.ljust(34) for v in VERSIONS))
        for s in VERSIONS:
            row = s.ljust(24)
            for d in VERSIONS:
                if s == d:
                    row += "-".ljust(34)
                    continue
                c = next((c for c in doc["cases"] if c["vm"] == kind and c["source"] == s and c["dest"] == d), None)
                cell = c["outcome"] if c else "?"
                if verdicts:
                    cell += " / " + verdicts.get((kind, s, d), "?")
                row += cell[:33].ljust(34)
            lines.append(row)
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--out", type=Path, default=DATA)
    args = ap.parse_args()
    if args.cmd == "record":
        d = record(args.out)
        v = verdicts(d, load_profiles(args.out))
        print(matrix(d, {k: ("allow" if x.allow else "refuse:" + x.problems[0].register + ":"
                             + (x.problems[0].field or x.problems[0].source or ""))
                         for k, x in v.items()}))
