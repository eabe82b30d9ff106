"""The libvirt qemu hook: veto or stamp incoming migrations and restores, refuse to boot a
VM whose contract this host cannot realise.

libvirt runs ``/etc/libvirt/hooks/qemu.d/abiguard DOMAIN OP SUBOP EXTRA`` with the domain
XML on stdin (docs/hooks.rst). ``migrate begin`` and ``restore begin`` run on the
destination before QEMU starts and before any RAM moves; their stdout replaces the XML
(empty output keeps it). A non-zero exit aborts the operation and libvirt hands our
stderr to the ``virsh`` user, so a refusal is one line starting ``abiguard:``.

Modules: :mod:`.protocol` (argv, stdin, HANDLERS), :mod:`.incoming` (migrate/restore begin),
:mod:`.prepare` (prepare begin), :mod:`.started` (started begin), :mod:`.checks` (what they
share), :mod:`.daemon` (the daemon hook's profile refresh). What the fleet shares with the
hook sits below both: abiguard.toml (:mod:`abiguard.model.config`), paths, log and markers
(:mod:`abiguard.state`), a VM's contract and stamp as the hook trusts them
(:mod:`abiguard.xml.vm`).
"""
from __future__ import annotations


def main(argv: list[str]) -> int:
    from .protocol import main as _main

    return _main(argv)


def daemon_main(argv: list[str]) -> int:
    from .daemon import daemon_main as _daemon_main

    return _daemon_main(argv)
