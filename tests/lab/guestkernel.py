"""Tiny guest "kernels" for the twohost lab.

The aarch64 guest needs no firmware: QEMU's `virt` machine jumps straight into the image
given as ``<os><kernel>`` (loaded as a raw binary at the start of RAM). Eight bytes are
enough for a vCPU that idles forever::

    wfi          d503207f
    b .-4        17ffffff   (back to the wfi)

The x86 guest of the lab needs no kernel at all (SeaBIOS finds no boot device and idles).
"""
from __future__ import annotations

import os
from pathlib import Path

WFI_AARCH64 = bytes.fromhex("7f2003d5ffffff17")  # little-endian: wfi ; b .-4


def build_wfi_aarch64(path: str | os.PathLike) -> Path:
    """Write the 8-byte idle aarch64 image to *path* (mode 0644) and return it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(WFI_AARCH64)
    tmp.chmod(0o644)
    tmp.replace(p)
    return p


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(build_wfi_aarch64(sys.argv[1] if len(sys.argv) > 1 else "wfi-aarch64.bin"))
