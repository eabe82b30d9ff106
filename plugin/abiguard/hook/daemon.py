"""/etc/libvirt/hooks/daemon.d/abiguard: refresh the host profile when libvirtd starts.

The probe asks libvirt for domain capabilities, which would deadlock while the daemon
waits for this hook, so the refresh runs detached and waits for the daemon to answer.
With ``[fleet] dir`` configured the fresh profile is published there too
(:mod:`abiguard.fleet.publish`, imported only then); a fleet directory that cannot be
written is logged and changes nothing else.
"""
from __future__ import annotations

import os
import time

from .. import state


def daemon_main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[2] not in ("start", "reload"):
        return 0
    pid = os.fork()
    if pid:
        return 0
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        from ..model import profile
        from ..probe.host import probe_host

        time.sleep(2.0)  # let the daemon finish starting before it is asked for capabilities
        doc = probe_host(with_stack=True)
        os.makedirs(state.STATE, mode=0o755, exist_ok=True)
        profile.save(doc, state.PROFILE)
        state.log(f"daemon {argv[2]}: host profile refreshed ({doc['digest'][:19]})")
    except Exception as e:  # a failed refresh leaves the previous profile in place
        state.log(f"daemon {argv[2]}: profile refresh failed: {e}")
        os._exit(0)
    try:
        from ..fleet.publish import publish_configured

        line = publish_configured(doc, state.PROFILE, "daemon")
        if line is not None:
            state.log(f"daemon {argv[2]}: {line}")
    except Exception as e:  # publishing is an extra: the refreshed profile stands
        state.log(f"daemon {argv[2]}: not published to the fleet directory: {e}")
    os._exit(0)
