"""pytest fixtures for abiguard's two-host libvirt lab (tests/lab/twohost.sh).

Use from a test module::

    from lab.conftest_twohost import twohost            # noqa: F401  (session-scoped lab)
    from lab.conftest_twohost import make_twohost_fixture
    lab_with_hook = make_twohost_fixture(name="lab_with_hook", prefix="abgh",
                                         prestart="python3 -m abiguard install", scope="module")

Each fixture brings its lab up once (for its scope) and always tears it down: on success,
on test failure, when ``up`` itself fails half-way, on Ctrl-C (pytest runs fixture
teardown on KeyboardInterrupt; SIGTERM is turned into KeyboardInterrupt while a lab is up),
and as a last resort from an atexit handler.

Missing prerequisites (not root, no /dev/kvm, missing libvirtd/virtlogd/virsh/ip/unshare/
nsenter/qemu) SKIP with a loud reason - except when CI=true, where they FAIL the test.
Labs that are up at the same time need different prefixes.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import warnings
from collections.abc import Callable, Iterator

import pytest

try:
    from .twohost import TwoHost
except ImportError:  # pragma: no cover - imported as a top-level module
    from twohost import TwoHost  # type: ignore[no-redef]

REQUIRED_TOOLS = ("libvirtd", "virtlogd", "virsh", "ip", "unshare", "nsenter", "setsid",
                  "qemu-system-x86_64", "qemu-system-aarch64")


def lab_problems() -> list[str]:
    """Why the lab cannot run on this machine ([] if it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append(f"not root (euid {os.geteuid()}); the lab needs namespaces, cgroups, netns")
    if not os.path.exists("/dev/kvm"):
        problems.append("no /dev/kvm (the x86 guest is KVM)")
    elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
        problems.append("/dev/kvm not accessible read-write")
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [t for t in REQUIRED_TOOLS if not shutil.which(t, path=path)]
    if missing:
        problems.append("missing: " + ", ".join(missing))
    return problems


def require_lab() -> None:
    """Skip (or, with CI=true, fail) loudly if the lab cannot run here."""
    problems = lab_problems()
    if not problems:
        return
    msg = "TWO-HOST LIBVIRT LAB NOT AVAILABLE: " + "; ".join(problems)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + "  (CI=true: refusing to skip)", pytrace=False)
    sys.stderr.write(f"\n*** {msg} - SKIPPING ***\n")
    warnings.warn(msg, stacklevel=2)
    pytest.skip(msg)


# labs that are up and not yet torn down (for the atexit / SIGTERM safety nets)
_LIVE: list[TwoHost] = []


def _down_all_live() -> None:
    for lab in list(_LIVE):
        try:
            lab.down()
        except Exception as e:  # pragma: no cover
            sys.stderr.write(f"twohost: emergency down of prefix {lab.prefix} failed: {e}\n")
        finally:
            if lab in _LIVE:
                _LIVE.remove(lab)


atexit.register(_down_all_live)


def _sigterm_to_keyboardinterrupt(signum, frame):  # pragma: no cover
    raise KeyboardInterrupt(f"signal {signum}")


def make_twohost_fixture(*, name: str = "twohost", prefix: str = "abg",
                         prestart: str | None = None, scope: str = "session",
                         ) -> Callable[..., Iterator[TwoHost]]:
    """Build a pytest fixture named *name* that yields an up TwoHost lab.

    prefix: netns/veth/cgroup prefix (distinct per lab that may be up at the same time).
    prestart: command run inside each host before its daemons start (TWOHOST_PRESTART).
    """

    @pytest.fixture(scope=scope, name=name)
    def _twohost_fixture() -> Iterator[TwoHost]:
        require_lab()
        lab = TwoHost(prefix=prefix)
        _LIVE.append(lab)
        old_term = None
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            old_term = signal.signal(signal.SIGTERM, _sigterm_to_keyboardinterrupt)
        try:
            lab.up(prestart=prestart)
            yield lab
        finally:
            try:
                lab.down()
            finally:
                if lab in _LIVE:
                    _LIVE.remove(lab)
                if old_term is not None:
                    signal.signal(signal.SIGTERM, old_term)
                if lab.timings:
                    sys.stderr.write(f"\ntwohost[{prefix}] timings:\n{lab.format_timings()}\n")

    return _twohost_fixture


# the default lab: session-scoped, no prestart
twohost = make_twohost_fixture()
