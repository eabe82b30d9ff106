"""Python driver for abiguard's two-host libvirt lab (tests/lab/twohost.sh).

Every call into the lab runs as a subprocess with a timeout. A subprocess that times out
is killed together with its process group (we start each one in a new session, so that
is exactly the group we made; lab daemons run in sessions of their own and are cleaned
up by ``down``).

    lab = TwoHost()
    lab.up(prestart="python3 -m abiguard install --root /")   # optional
    lab.define_guest("a", "x86", "g1"); lab.start_guest("a", "g1")
    lab.migrate("a", "b", "g1", "--persistent", "--undefinesource")
    lab.down()
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

try:  # imported as lab.twohost (tests) or as a top-level module
    from .guestkernel import build_wfi_aarch64
except ImportError:  # pragma: no cover
    from guestkernel import build_wfi_aarch64  # type: ignore[no-redef]

LAB_DIR = Path(__file__).resolve().parent
SCRIPT = LAB_DIR / "twohost.sh"
DOMAINS_DIR = LAB_DIR / "domains"
STATE_ROOT = Path("/var/tmp/abiguard-twohost")
HOSTS = ("a", "b")

# kind -> (template, default substitutions)
KINDS: dict[str, tuple[str, dict[str, str]]] = {
    "x86": ("x86-kvm.xml", {"cpu": "host-model-noarchcap"}),
    "aarch64": ("aarch64-tcg.xml", {"cpu": "max"}),
    "aarch64-a57": ("aarch64-tcg.xml", {"cpu": "cortex-a57"}),
}
KINDS["x86-kvm"] = KINDS["x86"]
KINDS["aarch64-max"] = KINDS["aarch64"]

DEFAULT_TIMEOUT = 60.0


class LabError(RuntimeError):
    """A lab command failed or timed out."""


def cpu_xml(cpu: str) -> str:
    """Turn a short CPU spec into a libvirt <cpu> element.

    ``host-model`` / ``host-passthrough`` / ``max`` (= ``maximum``) / a model name
    (custom, exact, fallback forbidden) / raw XML starting with ``<`` / ``""`` (no <cpu>) /
    ``host-model-noarchcap`` (the x86 default): host-model with arch-capabilities disabled.
    On some KVM hosts (seen: AMD EPYC under a nested hypervisor, kernel 6.18) QEMU 7.2 aborts
    any guest whose CPU has arch-capabilities: "failed to set MSR 0x10a to 0x69 ...
    kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed" (also plain
    ``-cpu host``). Disabling the feature avoids that and is harmless for the lab."""
    if not cpu or cpu.lstrip().startswith("<"):
        return cpu
    if cpu == "host-model-noarchcap":
        return "<cpu mode='host-model'><feature policy='disable' name='arch-capabilities'/></cpu>"
    if cpu in ("host-model", "host-passthrough"):
        return f"<cpu mode='{cpu}'/>"
    if cpu in ("max", "maximum"):
        return "<cpu mode='maximum'/>"
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", cpu):
        raise ValueError(f"bad cpu model {cpu!r}")
    return f"<cpu mode='custom' match='exact'><model fallback='forbid'>{cpu}</model></cpu>"


def run(cmd: Sequence[str], *, timeout: float, check: bool = True, env: dict | None = None,
        input: str | None = None, shield: bool = False) -> subprocess.CompletedProcess:
    """subprocess.run with a hard timeout that kills the whole process group we started.

    shield=True: a KeyboardInterrupt while waiting does not kill the child (used for
    ``down``, which must be allowed to finish); we keep waiting up to the timeout and
    re-raise the interrupt afterwards."""
    cmd = [str(c) for c in cmd]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    interrupted: BaseException | None = None
    while True:
        try:
            out, err = proc.communicate(input, timeout=max(0.01, deadline - time.monotonic()))
            break
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            raise LabError(f"timeout after {timeout:.0f}s: {' '.join(cmd)}\n"
                           f"--- stdout:\n{out}\n--- stderr:\n{err}") from None
        except KeyboardInterrupt as e:
            if not shield:
                _kill_group(proc)
                proc.communicate()
                raise
            interrupted = e
            input = None  # already (partly) sent
    cp = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if interrupted is not None:
        raise interrupted
    if check and cp.returncode != 0:
        raise LabError(f"rc={cp.returncode}: {' '.join(cmd)}\n--- stdout:\n{out}\n--- stderr:\n{err}")
    return cp


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group/session we created for this child
    except ProcessLookupError:
        pass


class TwoHost:
    """Two libvirt hosts "a" and "b" on this machine (see twohost.sh for what each one is)."""

    def __init__(self, prefix: str = "abg", state: str | os.PathLike | None = None,
                 script: str | os.PathLike = SCRIPT, timeout: float = DEFAULT_TIMEOUT,
                 rootfs: dict[str, str | os.PathLike | None] | None = None,
                 chroot_binds: Sequence[str] = ()):
        """rootfs: per host ("a"/"b") a root filesystem (tests/lab/rootfs.sh) whose
        libvirtd/virtlogd/QEMU that host runs chrooted into (TWOHOST_ROOTFS_A/B); None or
        missing: this machine's own. chroot_binds: "SRC:DST" directories bound read-only
        into every chrooted host, "SRC:DST:rw" writable (TWOHOST_CHROOT_BINDS)."""
        self.prefix = prefix
        self.rootfs = {h: str(p) for h, p in (rootfs or {}).items() if p}
        for h in self.rootfs:
            self._host(h)
        for b in chroot_binds:
            if not re.fullmatch(r"/[^\s:]*:/[^\s:]*(:rw)?", b):
                raise ValueError(f"chroot bind must be SRC:DST or SRC:DST:rw (absolute, no blanks): {b!r}")
        self.chroot_binds = list(chroot_binds)
        self.state: Path | None = Path(state) if state else None
        self.script = Path(script)
        self.timeout = timeout
        self.timings: list[tuple[str, float]] = []
        self.is_up = False
        self._needs_down = False
        self.up_log = ""
        self.down_log = ""

    # ------------------------------------------------------------------ plumbing
    def _env(self, prestart: str | None = None) -> dict:
        env = dict(os.environ)
        env["TWOHOST_PREFIX"] = self.prefix
        if self.state is not None:
            env["TWOHOST_STATE"] = str(self.state)
        env.pop("TWOHOST_PRESTART", None)
        if prestart:
            env["TWOHOST_PRESTART"] = prestart
        for h in HOSTS:  # only what this TwoHost was given, never the caller's environment
            env.pop(f"TWOHOST_ROOTFS_{h.upper()}", None)
            if h in self.rootfs:
                env[f"TWOHOST_ROOTFS_{h.upper()}"] = self.rootfs[h]
        env.pop("TWOHOST_CHROOT_BINDS", None)
        if self.chroot_binds:
            env["TWOHOST_CHROOT_BINDS"] = " ".join(self.chroot_binds)
        return env

    def _timed(self, label: str, t0: float) -> float:
        dt = time.monotonic() - t0
        self.timings.append((label, dt))
        return dt

    def sh(self, *args: str, timeout: float | None = None, check: bool = True,
           prestart: str | None = None, shield: bool = False,
           input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``twohost.sh ARGS...`` for this lab."""
        return run([str(self.script), *args], timeout=timeout or self.timeout, check=check,
                   env=self._env(prestart), shield=shield, input=input)

    def _need_up(self) -> Path:
        if not self.is_up or self.state is None:
            raise LabError("lab is not up")
        return self.state

    @staticmethod
    def _host(host: str) -> str:
        if host not in HOSTS:
            raise ValueError(f"host must be 'a' or 'b', not {host!r}")
        return host

    # ------------------------------------------------------------------ lifecycle
    def up(self, prestart: str | None = None, timeout: float = 180) -> None:
        """Bring both hosts up. *prestart* runs (sh -c) inside each host's namespaces before
        its daemons start, with TWOHOST_HOST=a|b (see twohost.sh)."""
        if self.is_up:
            raise LabError("already up")
        if self.state is None:
            STATE_ROOT.mkdir(parents=True, exist_ok=True)
            self.state = Path(tempfile.mkdtemp(prefix=f"{self.prefix}.", dir=STATE_ROOT))
        self._needs_down = True  # from now on down() has something to do, even if up fails
        t0 = time.monotonic()
        cp = self.sh("up", timeout=timeout, prestart=prestart, check=False)
        self.up_log = cp.stderr
        if cp.returncode != 0:
            raise LabError(f"twohost.sh up failed (rc={cp.returncode}):\n{cp.stderr}{cp.stdout}")
        self._timed("up", t0)
        self.is_up = True
        build_wfi_aarch64(self.state / "guests" / "wfi-aarch64.bin")

    def down(self, timeout: float = 120) -> None:
        """Tear everything down (idempotent). Not interruptible by Ctrl-C half-way."""
        if not self._needs_down:
            return
        t0 = time.monotonic()
        cp = self.sh("down", timeout=timeout, shield=True, check=False)
        self.down_log = cp.stderr
        if cp.returncode != 0:
            raise LabError(f"twohost.sh down failed (rc={cp.returncode}):\n{cp.stderr}{cp.stdout}")
        self._timed("down", t0)
        self.is_up = False
        self._needs_down = False

    def restart(self, host: str, timeout: float = 60) -> None:
        """Restart host's libvirtd (libvirt only picks up hook scripts at daemon start)."""
        self._need_up()
        t0 = time.monotonic()
        self.sh("restart", self._host(host), timeout=timeout)
        self._timed(f"restart {host}", t0)

    # ------------------------------------------------------------------ access
    def host_state(self, host: str) -> Path:
        return self._need_up() / self._host(host)

    def uri(self, host: str) -> str:
        """qemu+unix URI of host's libvirtd, usable from the root namespace."""
        return f"qemu+unix:///system?socket={self.host_state(host)}/run/libvirt-sock"

    def tcp_uri(self, host: str) -> str:
        """qemu+tcp URI of host's libvirtd (reachable only from inside the two netns)."""
        return self.sh("tcp-uri", self._host(host)).stdout.strip()

    def virsh(self, host: str, *args: str, check: bool = True,
              timeout: float | None = None) -> subprocess.CompletedProcess:
        return run(["virsh", "-q", "-c", self.uri(host), *args], timeout=timeout or self.timeout,
                   check=check)

    def chrooted(self, host: str) -> bool:
        """Does host run another userspace (rootfs) chrooted?"""
        return self._host(host) in self.rootfs

    def exec(self, host: str, *cmd: str, check: bool = True, timeout: float | None = None,
             input: str | None = None) -> subprocess.CompletedProcess:
        """Run *cmd* inside host's namespaces (net, mount, UTS, cgroup; caller's env, cwd /);
        for a chrooted host inside its chroot."""
        self._need_up()
        if not cmd:
            raise ValueError("exec: no command")
        return self.sh("exec", self._host(host), *cmd, timeout=timeout, check=check, input=input)

    # ------------------------------------------------------------------ guests
    def render_guest(self, kind: str, name: str, **subst: object) -> str:
        """Domain XML for a lab guest. kind: x86 | aarch64 (cpu max) | aarch64-a57.
        subst (lower-case) fills @UPPER@ placeholders: memory_mib, vcpus, cpu (see cpu_xml),
        kernel, metadata, extra_devices."""
        if kind not in KINDS:
            raise ValueError(f"unknown guest kind {kind!r} (known: {', '.join(sorted(KINDS))})")
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise ValueError(f"bad domain name {name!r}")
        template, defaults = KINDS[kind]
        values: dict[str, str] = {"name": name, "memory_mib": "64", "vcpus": "1", "metadata": "",
                                  "extra_devices": "", **defaults}
        if self.state is not None:
            values["kernel"] = str(self.state / "guests" / "wfi-aarch64.bin")
        values.update({k: str(v) for k, v in subst.items()})
        values["cpu"] = cpu_xml(values["cpu"])
        xml = (DOMAINS_DIR / template).read_text()
        used = set(re.findall(r"@([A-Z0-9_]+)@", xml))
        unknown = {k for k in values if k.upper() not in used} - {"kernel"}
        if unknown:
            raise ValueError(f"template {template} has no placeholder(s) for {sorted(unknown)}")
        for k, v in values.items():
            xml = xml.replace(f"@{k.upper()}@", v)
        left = re.findall(r"@[A-Z0-9_]+@", xml)
        if left:
            raise ValueError(f"unfilled placeholders in {template}: {left}")
        return xml

    def _write_guest(self, kind: str, name: str, subst: dict) -> Path:
        path = self._need_up() / "guests" / f"{name}.xml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render_guest(kind, name, **subst))
        return path

    def define_guest(self, host: str, kind: str, name: str, **subst: object) -> Path:
        """virsh define a lab guest on host; returns the XML file."""
        path = self._write_guest(kind, name, subst)
        self.virsh(host, "define", str(path))
        return path

    def create_guest(self, host: str, kind: str, name: str, **subst: object) -> Path:
        """virsh create (transient + started) a lab guest on host; returns the XML file."""
        path = self._write_guest(kind, name, subst)
        t0 = time.monotonic()
        self.virsh(host, "create", str(path))
        self._timed(f"create {name} on {host}", t0)
        return path

    def start_guest(self, host: str, name: str) -> None:
        t0 = time.monotonic()
        self.virsh(host, "start", name)
        self._timed(f"start {name} on {host}", t0)

    def destroy_guest(self, host: str, name: str, undefine: bool = True) -> None:
        if self.domstate(host, name) == "running":
            self.virsh(host, "destroy", name, check=False)
        if undefine:
            self.virsh(host, "undefine", name, check=False)

    def domains(self, host: str, all: bool = True) -> list[str]:
        args = ["list", "--name"] + (["--all"] if all else [])
        return [x for x in self.virsh(host, *args).stdout.split() if x]

    def domstate(self, host: str, name: str) -> str | None:
        cp = self.virsh(host, "domstate", name, check=False)
        return cp.stdout.strip().splitlines()[0] if cp.returncode == 0 and cp.stdout.strip() else None

    def qemu_pid(self, host: str, name: str) -> int | None:
        """PID of the running qemu of domain *name* on host (from the host's private
        /run/libvirt/qemu/NAME.pid), or None if there is none / it is gone."""
        f = self.host_state(host) / "run" / "qemu" / f"{name}.pid"
        try:
            pid = int(f.read_text().strip())
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        return None if stat.rsplit(")", 1)[1].split()[0] == "Z" else pid

    def migrate(self, src: str, dst: str, name: str, *extra: str, live: bool = True,
                p2p: bool = False, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess:
        """``virsh migrate [--live] EXTRA... NAME DEST`` run from the root namespaces against
        src's unix socket; the migration stream itself goes over the veth.
        p2p=False: client-driven, DEST = dst's unix URI.
        p2p=True:  --p2p, src's libvirtd connects to DEST = dst's qemu+tcp URI over the veth.
        EXTRA e.g. "--persistent", "--undefinesource". The CompletedProcess gets .seconds."""
        dest = self.tcp_uri(dst) if p2p else self.uri(dst)
        args = (["migrate"] + (["--live"] if live else []) + (["--p2p"] if p2p else [])
                + list(extra) + [name, dest])
        t0 = time.monotonic()
        cp = self.virsh(src, *args, check=check, timeout=timeout)
        dt = self._timed(f"migrate {name} {src}->{dst}{' p2p' if p2p else ''}", t0)
        cp.seconds = dt  # type: ignore[attr-defined]
        return cp

    def format_timings(self) -> str:
        return "\n".join(f"  {label:<32} {secs:6.2f} s" for label, secs in self.timings)
