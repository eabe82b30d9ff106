"""The suite leaves the host as it found it (issue 27): no test reads or writes the host's
own abiguard state -- a test that ran the hook without a private root appended to the real
/var/log/abiguard/hook.log -- and nothing a test made stays in the run's temporary
directory (the fuzz campaigns' fake roots did). The snapshot is taken when pytest starts
(tests/conftest.py) and compared after the session's own fixtures were torn down
(conftest's pytest_sessionfinish: a two-host lab holds mount points over /etc/abiguard and
/var/lib/abiguard while it is up, so a test, even the last one, would see them); a change
fails the run. This module runs last, after the labs."""
from __future__ import annotations

from helpers import hoststate


def test_no_files_left_in_the_runs_temporary_directory(pytestconfig) -> None:
    left = hoststate.leftovers(pytestconfig.stash[hoststate.RUN_TMP])
    assert not left, "the test run left files behind in its temporary directory:\n" + "\n".join(left[:40])
