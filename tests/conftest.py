"""Shared pytest configuration for abiguard's tests."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

# tests/ on sys.path: the lab drivers (tests/lab) and helpers import as packages
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(REPO, "plugin")
if PLUGIN not in sys.path:
    sys.path.insert(0, PLUGIN)

# progress lines per module and lab phase while the suite runs, and the time table at the end
pytest_plugins = ["helpers.timing"]


#: the test that compares the host's abiguard state and the run's temporary directory with
#: how the run found them; it runs after everything else
HOST_UNTOUCHED = "test_host_untouched.py"


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "lab: needs real parts (root, /dev/kvm, libvirtd/virsh/qemu, the arm64 kernel lab); "
        "skips loudly when unavailable, fails instead when CI=true",
    )
    from helpers import hoststate

    # before any test runs: the host's own abiguard state, and a temporary directory of the
    # run's own for this process (pytest's tmp_path roots stay where pytest keeps them)
    config.stash[hoststate.BEFORE] = hoststate.snapshot()
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is not None:
        factory.getbasetemp()
    tempfile.tempdir = None
    run_tmp = tempfile.mkdtemp(prefix="abiguard-tests-")
    tempfile.tempdir = run_tmp
    config.stash[hoststate.RUN_TMP] = run_tmp


def pytest_collection_modifyitems(session, config, items):
    """The pure tests first, the labs after them (each keeping its order): on a cold machine
    the labs' downloads and image builds (tests/lab/warmup.py) run beside the pure tier.
    Last of all the check that the run left the host as it found it."""
    items.sort(key=lambda item: (os.path.basename(str(item.path)) == HOST_UNTOUCHED,
                                 item.get_closest_marker("lab") is not None))


def pytest_collection_finish(session):
    from lab import warmup

    modules = {os.path.basename(str(item.path)) for item in session.items if item.get_closest_marker("lab")}
    started = warmup.start(modules)
    if started:
        from helpers.timing import say

        say(f"building cold caches in the background: {', '.join(started)} (logs: {warmup.LOGS})")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """The host's own abiguard state compared with the snapshot taken at the start, after
    every fixture was torn down (runner's sessionfinish tears down session-scoped labs,
    which may hold mount points there while they are up): a change fails the run."""
    from helpers import hoststate

    before = session.config.stash.get(hoststate.BEFORE, None)
    if before is None or not session.items:
        return
    changed = hoststate.differences(before, hoststate.snapshot())
    if changed:
        session.config.stash[hoststate.CHANGED] = changed
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    from helpers import hoststate
    from lab import warmup

    changed = terminalreporter.config.stash.get(hoststate.CHANGED, None)
    if changed:
        terminalreporter.write_line("FAILED (host state): the test run changed the host's own abiguard state:",
                                    red=True)
        for line in changed[:40]:
            terminalreporter.write_line(f"  {line}")

    for name, r in warmup.results().items():
        terminalreporter.write_line(f"warm-up {name}: rc {r['rc']} in {r['seconds']} s ({r['log']})")


def pytest_unconfigure(config):
    from lab import warmup

    warmup.stop()
    from helpers import hoststate

    run_tmp = config.stash.get(hoststate.RUN_TMP, None)
    if run_tmp is not None:
        tempfile.tempdir = None
        shutil.rmtree(run_tmp, ignore_errors=True)
