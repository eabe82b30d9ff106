"""The suite leaves the host as it found it (issue 27): no test reads or writes the host's
own abiguard state -- a test that ran the hook without a private root appended to the real
/var/log/abiguard/hook.log -- and nothing a test made stays in the run's temporary
directory (the fuzz campaigns' fake roots did). The snapshot is taken when pytest starts
(tests/conftest.py); this module runs last, after the labs."""
from __future__ import annotations

from helpers import hoststate


def test_host_abiguard_state_untouched(pytestconfig) -> None:
    changed = hoststate.differences(pytestconfig.stash[hoststate.BEFORE], hoststate.snapshot())
    assert not changed, "the test run changed the host's own abiguard state:\n" + "\n".join(changed[:40])


def test_no_files_left_in_the_runs_temporary_directory(pytestconfig) -> None:
    left = hoststate.leftovers(pytestconfig.stash[hoststate.RUN_TMP])
    assert not left, "the test run left files behind in its temporary directory:\n" + "\n".join(left[:40])
