"""abiguard_pin.so, the arm64 register-pinning preload library: where it lives and how it
is built. What it pins is planned by :mod:`abiguard.model.pins`; the C source beside this
file is the library itself (``abiguard_pin.c``)."""
from __future__ import annotations

import os

#: the variable the library reads its pins from (``0xID=0xVALUE,...``)
ENV_PINS = "ABIGUARD_PINS"
LIBRARY_NAME = "abiguard_pin.so"
LIBRARY_DIR = "/usr/lib/abiguard"
LIBRARY_PATH = f"{LIBRARY_DIR}/{LIBRARY_NAME}"
SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "abiguard_pin.c")
#: what the library writes into $HOME (libvirt: the domain's private directory,
#: /var/lib/libvirt/qemu/domain-ID-NAME) so the started hook can see the pins took effect
RECORD_NAME = "abiguard-pin.record"
#: the library's own limits (MAX_PINS, 4096 characters)
MAX_PINS = 64
MAX_ENV_CHARS = 4096


def build_library(out: str, cc: str | None = None, source: str = SOURCE_PATH) -> str:
    """Compile the library with the system (or a cross) compiler: ``abiguard install``,
    the Debian and RPM packages."""
    import subprocess

    from ..errors import AbiguardError

    cc = cc or os.environ.get("CC", "cc")
    cmd = [cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-D_FORTIFY_SOURCE=2",
           "-fstack-protector-strong", "-shared", "-fPIC", "-Wl,-z,relro,-z,now", "-o", out, source, "-ldl"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise AbiguardError(f"building {LIBRARY_NAME} failed ({' '.join(cmd)}): {r.stderr.strip()}")
    return out
