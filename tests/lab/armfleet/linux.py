"""A Linux guest in the lab: the hosts' own Debian kernel booted as the nested KVM guest,
read from its serial console up to the point where it has decided its CPU errata.

What a guest kernel says about the CPUs it runs on is the proof that matters for a VM that
moves between CPU models: the MIDR it was shown ("Booting Linux on physical CPU ...
[0xMIDR]"), how many implementation CPUs its errata discovery found ("smccc: KVM: Number of
target implementation CPUs is N", Linux >= 6.16 with VENDOR_HYP_BMAP_2 offered), and the
errata workarounds it enabled ("CPU features: detected: ARM erratum ...", printed while the
boot CPU's capabilities are set up, before "SMP: Total of N processors activated"). No
root filesystem is needed for any of that: the kernel panics afterwards (panic=0 keeps it
there) and the domain is destroyed.

Measured under TCG (sid 7.2 host, cortex-a57 and cortex-a72): the console reaches "SMP:
Total of" 35-45 s after resume."""
from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

from . import guest, machine, migration
from .common import log
from .fleet import Console, Lab

#: where the hosts keep the guest kernel (gzip: QEMU unpacks an arm64 Image itself)
IMAGE_DIR = "/var/lib/libvirt/images"
CMDLINE = "console=ttyAMA0 panic=0"
#: the guest has decided its CPU capabilities (errata included) once this is printed
DONE = re.compile(r"SMP: Total of \d+ processors? activated")
FAILED = re.compile(r"Kernel panic|Internal error|Unable to handle kernel")


def image_on_host(suite: str) -> str:
    return f"{IMAGE_DIR}/linux-{suite}.gz"


def install_kernel(lab: Lab, host: str, kernel: Path, suite: str) -> str:
    """Copy *kernel* (an arm64 Image, a lab base's) into *host*, gzipped once per run."""
    packed = lab.dir / f"linux-{suite}.gz"
    if not packed.exists():
        tmp = packed.with_suffix(".part")
        with open(kernel, "rb") as src, gzip.open(tmp, "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tmp.rename(packed)
    remote = image_on_host(suite)
    lab.copy_in(host, packed, remote)
    return remote


def parse_boot(text: str) -> dict:
    """What the guest kernel said about its CPUs (see the module docstring)."""
    text = text.replace("\r", "")
    m = re.search(r"Booting Linux on physical CPU 0x[0-9a-f]+ \[0x([0-9a-f]+)\]", text)
    n = re.search(r"smccc: KVM: Number of target implementation CPUs is (\d+)", text)
    services = re.search(r"smccc: KVM: hypervisor services detected \(([^)]*)\)", text)
    version = re.search(r"Linux version (\S+)", text)
    errata = sorted({e.strip() for e in re.findall(r"CPU features: detected: (ARM errat[^\n]*)", text)})
    return {"kernel": version.group(1) if version else None,
            "midr": int(m.group(1), 16) if m else None,
            "impl_cpus": int(n.group(1)) if n else None,
            "hyp_services": services.group(1) if services else None,
            "errata": errata,
            "complete": bool(DONE.search(text))}


def boot(lab: Lab, host: str, dom: str, image: str, *, baseline: str | Path | None = None,
         memory_mib: int = 192, timeout: float = 420) -> dict:
    """Start the guest kernel as :func:`.migration.start_domain` starts the payload (pinned
    to *baseline*, when given) and read its CPU story; the domain is destroyed after.
    Returns :func:`parse_boot`'s record plus timings, or ``error`` where the start failed."""
    xml = guest.domain_xml(dom, memory_mib=memory_mib, image=image, cmdline=CMDLINE)
    rec: dict = {"image": image, "pinned": baseline is not None}
    try:
        st = migration.start_domain(lab, host, xml, baseline=baseline, view=False)
        rec.update({k: v for k, v in st.items() if k != "console"})
        con = st.get("console")
        if con is None:
            return rec
        try:
            _m, waited = machine.wait_console(con.path, DONE.pattern, timeout=timeout, fail=FAILED.pattern)
            rec["boot_s"] = round(waited, 1)
            rec.update(parse_boot(con.text()))
            rec["console"] = str(con.path)
        finally:
            con.close()
        if baseline is not None:
            # the library's own record of what it answered (HOME = the domain's directory)
            rec["library_record"] = lab.sh(host, f"cat /var/lib/libvirt/qemu/domain-*-{dom}/abiguard-pin.record",
                                           check=False, quiet=True).stdout.splitlines()
        shown = "?" if rec["midr"] is None else f"{rec['midr']:#x}"
        log(f"{dom}@{host}: Linux {rec['kernel']} shown MIDR {shown}, told {rec['impl_cpus']} CPU(s), "
            f"{len(rec['errata'])} errata workaround(s), in {rec['boot_s']} s")
        return rec
    finally:
        migration.cleanup_domain(lab, dom, [host])


# --- a Linux guest that keeps running (issue 28): linuxinit.c as its initramfs' /init ---

INIT_SOURCE = Path(__file__).resolve().parent / "linuxinit.c"
#: the kernel hands the console to /init: no "panic=0" wait, the guest stays up; /init
#: writes through /dev/kmsg, which must not be rate-limited (10 lines per 5 s otherwise)
RUNNING_CMDLINE = "console=ttyAMA0 printk.devkmsg=on"
#: the kernel's stamp before each line it prints ("[   12.345678] ")
STAMP = re.compile(r"^\[\s*\d+\.\d+\] ", re.M)
REPORT = re.compile(r"AGI-REPORT-BEGIN boot=(\S+) r=(\d+) n=([0-9a-f]+)\r?\n(.*?)AGI-REPORT-END boot=\1 r=\2\r?\n",
                    re.S)


def build_initramfs(out: Path) -> Path:
    """linuxinit.c, static for aarch64, as /init of a gzip cpio (lab/mkcpio.py) at *out*."""
    import subprocess
    import sys
    import tempfile

    from .common import CROSS, LAB, run

    if out.exists() and out.stat().st_mtime >= INIT_SOURCE.stat().st_mtime:
        return out
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "root"
        root.mkdir()
        (root / "dev").mkdir()
        run([f"{CROSS}gcc", "-static", "-Os", "-Wall", "-o", str(root / "init"), str(INIT_SOURCE)], quiet=True)
        run([f"{CROSS}strip", str(root / "init")], quiet=True)
        tmp = out.with_suffix(".part")
        subprocess.run([sys.executable, str(LAB / "mkcpio.py"), str(root), str(tmp)], check=True,
                       capture_output=True)
        tmp.rename(out)
    return out


def install_initramfs(lab: Lab, host: str) -> str:
    """The initramfs in *host*, beside the kernel images (the same path on every host: a
    migrated or restored QEMU loads it again at a guest reboot)."""
    local = build_initramfs(lab.dir / "linuxinit.cpio.gz")
    remote = f"{IMAGE_DIR}/linuxinit.cpio.gz"
    lab.copy_in(host, local, remote)
    return remote


def reports(text: str) -> list[dict[str, str]]:
    """Every complete report linuxinit printed, in order, as a view (guest.diff compares
    them: ``n`` and ``boot`` are the volatile keys, the rest is the CPU story)."""
    out = []
    for m in REPORT.finditer(STAMP.sub("", text.replace("\r", ""))):
        story = parse_boot("\n".join(ln[len("AGI-K "):] for ln in m.group(4).splitlines()
                                     if ln.startswith("AGI-K ")))
        out.append({"n": m.group(3), "boot": m.group(1), "kernel": str(story["kernel"]),
                    "midr": "?" if story["midr"] is None else f"{story['midr']:#x}",
                    "impl_cpus": str(story["impl_cpus"]), "hyp_services": str(story["hyp_services"]),
                    "errata": "; ".join(story["errata"]), "complete": str(story["complete"])})
    return out


def _wait_report(con: Console, pred, timeout: float, ask: str | None = None) -> dict[str, str]:
    import time

    from .common import LabError

    seen = len(reports(con.text()))
    if ask:
        con.send(ask)
    t0 = last = time.monotonic()
    reopened = False
    while time.monotonic() - t0 < timeout:
        new = [r for r in reports(con.text())[seen:] if pred(r)]
        if new:
            return new[0]
        if not reopened and time.monotonic() - t0 > 30 and not con.text().replace("[console attached]", "").strip():
            # not a byte in 30 s, heartbeats included: a silent stream, not a silent guest
            log(f"{con.dom}@{con.host}: console silent for 30 s, opening it again")
            con.reopen()
            reopened, seen = True, 0
            if ask:
                con.send(ask)
        if ask == "P" and time.monotonic() - last > 10:    # a byte lost in a migration: ask again
            con.send(ask)
            last = time.monotonic()
        time.sleep(0.5)
    state = con.lab.domstate(con.host, con.dom)
    raise LabError(f"{con.dom}@{con.host} ({state}): no report from the Linux guest within {timeout:.0f} s "
                   f"(console {con.path}{', opened twice' if reopened else ''}):\n{con.text()[-1500:]}")


def first_report(con: Console, timeout: float = 300) -> dict[str, str]:
    """The report /init prints at boot (the console was attached before the guest ran)."""
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        found = reports(con.text())
        if found:
            return found[0]
        if FAILED.search(con.text()):
            break
        time.sleep(0.5)
    from .common import LabError

    raise LabError(f"{con.dom}@{con.host}: the Linux guest printed no report within {timeout:.0f} s "
                   f"(console {con.path}):\n{con.text()[-1500:]}")


def beats(text: str, boot: str) -> list[int]:
    """The heartbeat counts linuxinit printed in boot *boot* (``AGI-HB n=XXXX boot=ID``)."""
    return [int(n, 16) for n, b in re.findall(r"AGI-HB n=([0-9a-f]{4}) boot=(\S+)\r?\n", text) if b == boot]


def wait_beat(con: Console, boot: str, past: int, timeout: float = 60) -> int:
    """The first heartbeat of boot *boot* with a count above *past*: the same boot running on."""
    import time

    from .common import LabError

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        later = [n for n in beats(con.text(), boot) if n > past]
        if later:
            return later[0]
        time.sleep(0.5)
    raise LabError(f"{con.dom}@{con.host}: no heartbeat of boot {boot} past n={past} within {timeout:.0f} s "
                   f"(console {con.path}):\n{con.text()[-800:]}")


#: how migration.py reads this guest (its payload's reader, for a Linux guest)
class Reader:
    @staticmethod
    def fresh(con: Console) -> dict[str, str]:
        return _wait_report(con, lambda r: True, 120, ask="P")

    @staticmethod
    def rebooted(con: Console, after: dict[str, str]) -> dict[str, str]:
        return _wait_report(con, lambda r: r["boot"] != after["boot"], 420, ask="R")


def start_running(lab: Lab, host: str, dom: str, image: str, initrd: str, *, baseline: str | Path | None = None,
                  pin_args: tuple[str, ...] = (), memory_mib: int = 192) -> dict:
    """Start the Linux guest with linuxinit on *host* (pinned to *baseline*, ``abiguard pin``
    given *pin_args* too) and read its first report; the domain keeps running (the caller
    cleans up). Returns the start's record with ``console`` and ``view`` (the report)."""
    import time

    xml = guest.domain_xml(dom, memory_mib=memory_mib, image=image, cmdline=RUNNING_CMDLINE, initrd=initrd)
    st = migration.start_domain(lab, host, xml, baseline=baseline, view=False, pin_args=pin_args)
    if "error" in st:
        return st
    t0 = time.monotonic()
    st["view"] = first_report(st["console"])
    st["first_report_s"] = round(time.monotonic() - t0, 1)
    # one heartbeat after it: a move from here on is seen to keep the count going
    machine.wait_console(st["console"].path, r"AGI-HB n=0001 ", timeout=60, fail=FAILED.pattern)
    log(f"{dom}@{host}: Linux {st['view']['kernel']} shown MIDR {st['view']['midr']}, told "
        f"{st['view']['impl_cpus']} CPU(s), errata: {st['view']['errata']} ({st['first_report_s']} s)")
    return st
