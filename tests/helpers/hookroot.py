"""A fake root with abiguard's installed qemu hook shim, as both hook test modules use it:
``var/lib/abiguard``, an (empty) preload library where the hook looks for it, the shim
``install`` writes, and a runner that saves a bundled profile and abiguard.toml there first
and runs the shim with ``ABIGUARD_ROOT`` pointing at the root."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from abiguard import install
from abiguard.builtin import builtin_profiles
from abiguard.model import profile

PROFILES = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}


def hook_root(root: Path, default_profile: str, timeout: float) -> Callable[..., subprocess.CompletedProcess]:
    os.makedirs(root / "var/lib/abiguard")
    # the register-pinning library abiguard install builds (its presence is all the hook checks)
    os.makedirs(root / "usr/lib/abiguard")
    (root / "usr/lib/abiguard/abiguard_pin.so").write_bytes(b"")
    shim = root / "hook"
    shim.write_text(install.render("qemu", sys.executable))
    shim.chmod(0o755)

    def run(*args: str, xml: bytes = b"", profile_name: str | None = default_profile, config: str | None = None,
            shim_path: str | None = None) -> subprocess.CompletedProcess:
        if profile_name:
            profile.save(profile.load(PROFILES[profile_name]).doc, str(root / "var/lib/abiguard/host-profile.json"))
        if config is not None:
            os.makedirs(root / "etc/abiguard", exist_ok=True)
            (root / "etc/abiguard/abiguard.toml").write_text(config)
        return subprocess.run([shim_path or str(shim), *args], input=xml, capture_output=True, timeout=timeout,
                              env={"ABIGUARD_ROOT": str(root), "PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    runner: Any = run
    runner.root = root
    return runner
