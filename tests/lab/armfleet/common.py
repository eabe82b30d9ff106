"""Shared plumbing of the armfleet lab: paths, logging, subprocesses, locks, pids."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent          # tests/lab/armfleet
LAB = HERE.parent                               # tests/lab
REPO = LAB.parent.parent
FILES = HERE / "files"
CACHE = Path(os.environ.get("ARMFLEET_CACHE", "/var/cache/abiguard-lab/armfleet"))
RUNS = Path(os.environ.get("ARMFLEET_RUNS", "/var/tmp/abiguard-lab"))
ARMLAB_CACHE = Path(os.environ.get("ARMLAB_CACHE", "/var/cache/abiguard-lab/armlab"))
OUTER_QEMU = os.environ.get("QEMU", "qemu-system-aarch64")
CROSS = os.environ.get("ARMFLEET_CROSS", "aarch64-linux-gnu-")

_T0 = time.monotonic()
_logfile: IO[str] | None = None


class LabError(RuntimeError):
    """Something in the lab failed; the message says what and where its log is."""


#: long-running children (QEMU) of this process, killed by terminate_children() when a
#: signal ends us before the code that owns them can clean up
CHILDREN: set[subprocess.Popen] = set()


def terminate_children() -> None:
    for p in list(CHILDREN):
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()


def exit_on_sigterm() -> None:
    """SIGTERM/SIGHUP: kill our QEMU children, then unwind as for Ctrl-C (finally blocks and
    atexit handlers run, which is where the lab's cleanup lives)."""
    def handler(signum: int, _frame: object) -> None:
        terminate_children()
        raise KeyboardInterrupt(f"signal {signum}")
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def set_logfile(path: Path | None) -> None:
    """Also append every log line to *path* (the run's or the build's log)."""
    global _logfile
    if _logfile is not None:
        _logfile.close()
    _logfile = open(path, "a", buffering=1) if path else None


def log(msg: str) -> None:
    line = f"[armfleet {time.monotonic() - _T0:7.1f}s] {msg}"
    print(line, file=sys.stderr, flush=True)
    if _logfile is not None:
        _logfile.write(time.strftime("%H:%M:%S ") + line + "\n")


def run(cmd: Sequence[str], *, timeout: float = 600, check: bool = True, input: str | bytes | None = None,
        capture: bool = True, env: dict[str, str] | None = None, cwd: str | Path | None = None,
        quiet: bool = False) -> subprocess.CompletedProcess:
    """Run *cmd* in a session of its own; on timeout kill that whole session (only what we
    started) and raise. Output is captured as text unless capture=False."""
    if not quiet:
        log("$ " + " ".join(str(c) for c in cmd)[:400])
    text = not isinstance(input, bytes)
    p = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                         stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None,
                         text=text, env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = p.communicate(input, timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise
    cp = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    if check and p.returncode != 0:
        raise LabError(f"command failed (rc {p.returncode}): {' '.join(map(str, cmd))[:300]}\n"
                       f"{(err or '')[-3000:] if capture else ''}")
    return cp


@contextlib.contextmanager
def flocked(path: Path, shared: bool = False, blocking: bool = True) -> Iterator[int]:
    """flock(2) on *path* (created if needed) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        op = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        fcntl.flock(fd, op)
        yield fd
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_json(path: Path, obj: object) -> None:
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: with the pid it identifies one process for its lifetime."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def same_process(pid: int, starttime: int | None) -> bool:
    """pid still names the process that had *starttime* and it has not exited (a zombie
    waiting for its parent counts as gone)."""
    return starttime is not None and proc_starttime(pid) == starttime and not is_zombie(pid)


def kill_recorded(pid: int, starttime: int | None, what: str, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, the process we started -- only if pid still names that very
    process (same start time), never anything that merely reused the pid."""
    if not same_process(pid, starttime):
        return
    log(f"stopping {what} (pid {pid})")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and same_process(pid, starttime):
        _reap(pid)
        time.sleep(0.1)
    if same_process(pid, starttime):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(50):
            _reap(pid)
            if not same_process(pid, starttime):
                break
            time.sleep(0.1)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
