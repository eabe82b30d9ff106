"""Put abiguard where libvirt looks for hooks, and take it away again.

Files written (under ``root``, ``/`` on a real host): the qemu hook
``etc/libvirt/hooks/qemu.d/abiguard``, the daemon hook ``etc/libvirt/hooks/daemon.d/abiguard``,
``etc/abiguard/abiguard.toml`` (only if missing), ``var/lib/abiguard/host-profile.json``.
A hook file carries :data:`HOOK_ID`; uninstall removes only files that carry it, and
install never overwrites a file that does not.
"""
from __future__ import annotations

import os
import sys

HOOK_ID = "abiguard-hook-id: 7b1d0c52"
#: kind -> (path under root, entry point)
HOOKS: dict[str, tuple[str, str]] = {
    "qemu": ("etc/libvirt/hooks/qemu.d/abiguard", "main"),
    "daemon": ("etc/libvirt/hooks/daemon.d/abiguard", "daemon_main"),
}
_PURPOSE = {
    "qemu": "# abiguard libvirt qemu hook; installed as /etc/libvirt/hooks/qemu.d/abiguard.",
    "daemon": "# abiguard libvirt daemon hook: refreshes the cached host profile when libvirtd starts;\n"
              "# installed as /etc/libvirt/hooks/daemon.d/abiguard.",
}
DEFAULT_CONFIG = """\
# abiguard host configuration (read by the libvirt hook on every migration, restore and start)
[policy]
# a VM without a guest ABI contract: allow | warn (allow, and say so) | refuse
unpinned = "warn"
# accept a destination whose kernel adds guest-visible registers the VM's stream lacks
# (the guest would see more than it was given)
allow_widening = false
"""
RESTART_NOTE = ("libvirt notices hook scripts only when the daemon starts: restart it now "
                "(systemctl restart libvirtd, or virtqemud on modular daemons)")


def package_parent() -> str:
    """The directory abiguard is imported from (site-packages, dist-packages, a checkout)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def render(kind: str, python: str, path: str | None = None) -> str:
    """The hook shim: a few lines that hand over to :mod:`abiguard.hook`.

    ``-IS`` (one shebang argument): no environment, no site: the shim names the one
    directory it needs. The qemu shim decides from argv before anything can fail: an
    operation abiguard does not judge exits 0 at once, without reading the domain XML or
    importing abiguard, because libvirt kills a VM whose ``reconnect`` hook fails and
    aborts a start whose ``started`` hook fails; an operation it judges refuses with one
    ``abiguard:`` line when abiguard itself cannot be loaded.
    """
    _path, _entry = HOOKS[kind]
    path = path or package_parent()
    head = f"#!{python} {'-IS' if kind == 'qemu' else '-I'}\n{_PURPOSE[kind]}\n# {HOOK_ID}-{kind}\nimport sys\n\n"
    if kind == "qemu":
        from .hook.protocol import JUDGED

        return head + (
            "# an operation abiguard does not judge: exit 0 before anything can fail\n"
            f"if tuple(sys.argv[2:4]) not in {tuple(sorted(JUDGED))!r}:\n"
            "    sys.exit(0)\n"
            f"sys.path.insert(0, {path!r})\n"
            "try:\n"
            "    from abiguard.hook.protocol import main\n"
            "except BaseException as e:  # missing or half-installed: what abiguard judges fails closed\n"
            "    if sys.argv[2] == 'started' and b'ABIGUARD_PINS' not in sys.stdin.buffer.read():\n"
            "        sys.exit(0)   # judged only for VMs that carry abiguard's pins\n"
            "    sys.stderr.write('abiguard: cannot load abiguard (%s); refusing %s: reinstall abiguard\\n'\n"
            "                     % (type(e).__name__, sys.argv[2]))\n"
            "    sys.exit(1)\n"
            "sys.exit(main(sys.argv))\n")
    # the daemon hook's profile refresh needs site-packages (qemu.qmp, libvirt, lxml); libvirt
    # ignores what a daemon hook returns, and a refresh that cannot run leaves the old profile
    return head + (
        "if sys.argv[2:3] not in (['start'], ['reload']):\n"
        "    sys.exit(0)\n"
        "try:\n"
        f"    sys.path.insert(0, {path!r})\n"
        "    from abiguard.hook.daemon import daemon_main\n"
        "except BaseException:\n"
        "    sys.exit(0)\n"
        "sys.exit(daemon_main(sys.argv))\n")


def is_ours(path: str) -> bool:
    try:
        with open(path, errors="replace") as f:
            return HOOK_ID in f.read(4096)
    except FileNotFoundError:
        return False


def _write(path: str, text: str, mode: int) -> None:
    from .model.profile import atomic_write

    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, text, mode)


def install(root: str = "/", python: str | None = None, probe: bool = True) -> list[str]:
    from .errors import UsageError

    python = python or sys.executable
    done = []
    for kind, (rel, _entry) in HOOKS.items():
        path = os.path.join(root, rel)
        if os.path.exists(path) and not is_ours(path):
            raise UsageError(f"{path} exists and is not abiguard's: move it away or remove it first")
        _write(path, render(kind, python), 0o755)
        done.append(path)
    config = os.path.join(root, "etc/abiguard/abiguard.toml")
    if not os.path.exists(config):
        _write(config, DEFAULT_CONFIG, 0o644)
        done.append(config)
    for d in ("var/lib/abiguard", "var/log/abiguard"):
        os.makedirs(os.path.join(root, d), mode=0o750, exist_ok=True)
    stale = os.path.join(root, "var/lib/abiguard/hook.bundle")   # an earlier abiguard's precompiled hook
    if os.path.exists(stale):
        os.unlink(stale)
    # arm64 register enforcement: the preload library, built with this host's compiler
    # unless the distribution package shipped it already
    from . import preload

    lib = os.path.join(root, preload.LIBRARY_PATH.lstrip("/"))
    if not os.path.exists(lib) or os.path.getmtime(lib) < os.path.getmtime(preload.SOURCE_PATH):
        import shutil

        if shutil.which(os.environ.get("CC", "cc")) is None:
            print(f"abiguard: warning: no C compiler: {preload.LIBRARY_PATH} not built; arm64 VMs whose "
                  "contract needs register pins will be refused at start", file=sys.stderr)
        else:
            os.makedirs(os.path.dirname(lib), exist_ok=True)
            preload.build_library(lib + ".tmp")
            os.replace(lib + ".tmp", lib)
            done.append(lib)
    if probe:
        from .model import profile
        from .probe.host import probe_host

        target = os.path.join(root, "var/lib/abiguard/host-profile.json")
        profile.save(probe_host(with_stack=True), target)
        done.append(target)
    return done


def _is_our_library(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return b"abiguard-pin:" in f.read(1 << 20)
    except FileNotFoundError:
        return False


def uninstall(root: str = "/", purge: bool = False) -> list[str]:
    from . import preload

    removed = []
    for rel, _entry in HOOKS.values():
        path = os.path.join(root, rel)
        if is_ours(path):
            os.unlink(path)
            removed.append(path)
    lib = os.path.join(root, preload.LIBRARY_PATH.lstrip("/"))
    if _is_our_library(lib):
        os.unlink(lib)
        removed.append(lib)
        try:
            os.rmdir(os.path.dirname(lib))
        except OSError:
            pass  # not empty: someone else's files stay
    if purge:
        import shutil

        for rel in ("etc/abiguard", "var/lib/abiguard", "var/log/abiguard"):
            path = os.path.join(root, rel)
            if os.path.isdir(path):
                shutil.rmtree(path)
                removed.append(path)
    return removed
