"""Cold caches filled while the pure tests run (issue 20).

On a fresh machine the labs first download and build what they boot: the arm64 kernels
(armlab.sh fetch), the three arm64 libvirt hosts' base images (armfleet/rootfs.py), the
nested lab's two arm64 QEMU builds (nested/fetch_qemu.sh) and the x86 labs' Debian root
filesystems (rootfs.sh, debhosts.py) -- about a quarter of a cold run, all of it downloads,
dpkg-deb and mkfs, none of it needing the test process. tests/conftest.py runs the pure
tests first and starts these builds beside them, in two chains (the arm64 one and the x86
one), so the machine's second core and the network work while the first core runs the pure
tier. Each lab module calls :func:`wait` for what it needs before its own "ensure" step,
which then finds the cache filled; a build that failed here is simply built again there and
fails there with its own message (nothing is hidden: the chain's log is named).

Every job is the same command a person runs by hand (see tests/lab/README.md); their output
goes to $ABIGUARD_WARMUP_LOGS (default /var/tmp/abiguard-lab/warmup/NAME.log).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

LAB = Path(__file__).resolve().parent
TESTS = LAB.parent
REPO = TESTS.parent
LOGS = Path(os.environ.get("ABIGUARD_WARMUP_LOGS", "/var/tmp/abiguard-lab/warmup"))

#: job -> (the test modules that need it, the commands it runs in order)
JOBS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]] = {
    "armlab-kernels": (("test_armlab.py", "test_nested_lab.py", "test_armfleet_lab.py", "test_armfleet_crosscpu.py"),
                       ((str(LAB / "armlab.sh"), "fetch"),)),
    "armfleet-bases": (("test_armfleet_lab.py", "test_armfleet_crosscpu.py"),
                       ((sys.executable, "-m", "lab.armfleet.rootfs", "build", "bookworm", "trixie", "sid"),)),
    "nested-qemu": (("test_nested_lab.py",),
                    ((str(LAB / "nested/fetch_qemu.sh"), "bookworm"), (str(LAB / "nested/fetch_qemu.sh"), "sid"))),
    "x86-rootfs": (("test_fleet_lab.py", "test_x86_fleet.py", "test_packaging_e2e.py"),
                   ((str(LAB / "rootfs.sh"), "build", "trixie", "sid"),
                    (sys.executable, "-c", "from lab import debhosts; debhosts.ensure_rootfs()"))),
}
#: the chains: each runs its jobs one after another (a job's inputs come from the one before)
CHAINS = (("armlab-kernels", "armfleet-bases", "nested-qemu"), ("x86-rootfs",))

_done: dict[str, threading.Event] = {}
_result: dict[str, dict] = {}
_running: set[subprocess.Popen] = set()
_stopping = threading.Event()


def _run(name: str) -> None:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    t0 = time.monotonic()
    rc = 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO / "plugin")]))
    with open(log, "w") as out:
        for cmd in JOBS[name][1]:
            if _stopping.is_set():
                rc = -1
                break
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            try:
                # a session of its own, so stop() ends the whole build (and only it)
                p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=TESTS,
                                     env=env, start_new_session=True)
            except OSError as e:
                out.write(f"{e}\n")
                rc = -1
                break
            _running.add(p)
            try:
                rc = p.wait(timeout=1800)
            except subprocess.TimeoutExpired:
                _kill(p)
                rc = -1
            finally:
                _running.discard(p)
            if rc != 0:
                break
    _result[name] = {"rc": rc, "seconds": round(time.monotonic() - t0, 1), "log": str(log)}


def _chain(names: tuple[str, ...]) -> None:
    for n in names:
        try:
            _run(n)
        finally:
            _done[n].set()


def needed(modules: set[str]) -> list[str]:
    """the jobs the selected test modules (file names) need"""
    return [n for n, (users, _) in JOBS.items() if modules & set(users)]


def start(modules: set[str]) -> list[str]:
    """Start the jobs *modules* need, in the background; returns their names. Nothing starts
    when this process cannot run the labs at all (not root): their own gate says so."""
    if os.geteuid() != 0 or os.environ.get("ABIGUARD_WARMUP") == "0":
        return []
    names = needed(modules)
    for n in names:
        _done[n] = threading.Event()
    for chain in CHAINS:
        mine = tuple(n for n in chain if n in names)
        if mine:
            threading.Thread(target=_chain, args=(mine,), name=f"warmup:{mine[0]}", daemon=True).start()
    return names


def wait(*names: str) -> None:
    """Block until the named jobs (if started) have finished, however they ended: the caller's
    own build step runs next and either finds the cache or builds and reports itself."""
    from helpers.timing import phase

    pending = [n for n in names if n in _done and not _done[n].is_set()]
    if not pending:
        return
    with phase(f"waiting for the cold caches: {', '.join(pending)}"):
        for n in pending:
            _done[n].wait()


def _kill(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)       # the group we created: the build and its children
        p.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def stop() -> None:
    """End whatever is still building (the session is over): by the pids we started."""
    _stopping.set()
    for p in list(_running):
        _kill(p)


def results() -> dict[str, dict]:
    return dict(_result)
