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
