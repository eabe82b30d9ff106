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
import time
from pathlib import Path

from . import guest, migration
from .common import LabError, log
from .fleet import Lab

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
    """Define, pin (to *baseline*, when given), start paused, attach the console, resume, and
    read the guest kernel's CPU story; the domain is destroyed after. Returns
    :func:`parse_boot`'s record plus timings, or ``error`` where the start failed."""
    xml = guest.domain_xml(dom, memory_mib=memory_mib, image=image, cmdline=CMDLINE)
    path = lab.dir / "domains" / f"{dom}.xml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(xml)
    migration.cleanup_domain(lab, dom, [host])
    rec: dict = {"host": host, "domain": dom, "image": image, "pinned": baseline is not None}
    try:
        lab.virsh(host, "define", str(path))
        if baseline is not None:
            pinned = migration.pin(lab, host, dom, baseline)
            rec["pin_rc"] = pinned["rc"]
            if pinned["rc"] != 0:
                rec["error"] = "abiguard pin failed: " + " | ".join(pinned["output"][-3:])
                return rec
        t0 = time.monotonic()
        p = lab.virsh(host, "start", "--paused", dom, check=False, timeout=900)
        rec["start_s"] = round(time.monotonic() - t0, 1)
        if p.returncode != 0:
            rec["error"] = migration.libvirt_error(p.stderr)
            rec["qemu_log_tail"] = lab.sh(host, f"tail -n 8 /var/log/libvirt/qemu/{dom}.log", check=False,
                                          quiet=True).stdout.splitlines()
            return rec
        con = lab.console(host, dom)
        try:
            con.wait_attached()
            lab.virsh(host, "resume", dom)
            t1 = time.monotonic()
            text = ""
            while time.monotonic() - t1 < timeout:
                text = con.text()
                if DONE.search(text) or FAILED.search(text):
                    break
                time.sleep(2)
            rec["boot_s"] = round(time.monotonic() - t1, 1)
            rec.update(parse_boot(text))
            rec["console"] = str(con.path)
            if not rec["complete"]:
                raise LabError(f"{dom}@{host}: the guest kernel did not reach 'SMP: Total of' in {timeout} s "
                               f"(console {con.path}):\n{text[-1500:]}")
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
