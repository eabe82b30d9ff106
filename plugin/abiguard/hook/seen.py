"""Unpinned VMs under ``[policy] unpinned = "warn"`` (issue 27): what abiguard saw a VM boot
with, so that a move QEMU or KVM would fail after copying the RAM is refused before it.

A VM without a contract carries nothing of the host it booted on, and the destination's
hook reads only the domain XML. So when an unpinned KVM VM has started here (not arrived),
the ``started`` hook leaves a detached child behind that, once libvirt has finished the
start, writes into the VM's *live* definition (never the persistent one) the contract of
this host's defaults for it -- origin ``seen``: a record, not a pin -- and its boot stamp
(the register stream it carries). The hook cannot do it itself: libvirt waits for the hook
and a hook must not call back into it.

On arrival (``migrate/restore begin``) a seen VM is judged like a pinned one, with two
differences: only what QEMU or KVM would refuse refuses (a register the destination cannot
load or a value its KVM does not take: the VM would fail at the end of the move anyway);
what would load but change the guest's ABI (registers the destination adds) is allowed,
logged, and written into the new stamp as ``abi-changed``, where ``status`` and ``fleet
status`` show it. No pins, no pinned record: the VM stays unpinned. Only arches whose
register stream moves with the VM (arm64) are seen; elsewhere an unpinned VM is not judged.
"""
from __future__ import annotations

import os
import time

from .. import state
from ..errors import Refusal

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

    from ..model.config import Config
    from ..model.contract import Contract
    from ..model.profile import Profile
    from ..xml.domain import DomainFacts

#: the marker migrate/restore begin leave for an unpinned arrival: its started hook must not
#: record this host's defaults as what the VM booted with
ARRIVED = "unpinned"
#: how long the child waits for libvirt to finish the start before it gives up
WAIT = 120.0
#: the libvirt the child writes through (the hook's own host)
URI = "qemu:///system"


def elements(data: bytes, profile: Profile) -> tuple[str, bytes] | None:
    """The seen contract (XML text) and its boot stamp for a VM started here with this
    domain XML; None where nothing is seen (an arch whose stream does not move with the VM,
    another arch than this host's)."""
    from lxml import etree

    from ..arch import get
    from ..model.contract import SEEN, Origin
    from ..xml.contract import to_xml_text
    from ..xml.edit import boot_stamp, parser

    arch = get(profile.machine)
    if not arch.carries_register_stream:
        return None
    root = etree.fromstring(data, parser())
    os_type = root.find("os/type")
    if os_type is None or os_type.get("arch") not in (None, profile.machine):
        return None
    sealed = arch.domain_contract(root, profile)
    sealed = sealed.replace(origin=Origin(SEEN, sealed.origin.hosts))
    return to_xml_text(sealed), boot_stamp(sealed, stream=arch.boot_stream(sealed, profile))


def observe(dom: str, facts: DomainFacts, data: bytes) -> None:
    """From the started hook of an unpinned VM: leave the child that records what it booted
    with, unless it arrived here (its values are its source's) or is not a KVM VM."""
    from ..arch import NAMES, get

    if facts.domain_type != "kvm" or not facts.uuid or facts.arch not in NAMES \
            or not get(facts.arch).carries_register_stream:
        return
    if state.was_incoming(facts.uuid, ARRIVED):
        state.log(f"started {dom}: unpinned, arrived: not seen here")
        return
    if state.ROOT != "/":
        return      # a test's private root: no libvirt of its own to write to
    if os.fork():
        return
    # the child: its own session, nothing of libvirt's pipes (libvirt reads the hook's
    # stdout/stderr until they close), and never back into the hook's return path
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        _record(dom, facts.uuid, data)
    except BaseException as e:  # noqa: BLE001 -- a record is an extra: the VM runs either way
        state.log(f"started {dom}: not seen: {type(e).__name__}: {e}")
    os._exit(0)


def _record(dom: str, uuid: str, data: bytes) -> None:
    import libvirt

    from ..model import profile as profiles

    got = elements(data, profiles.load(state.PROFILE))
    if got is None:
        return
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open(URI)
    try:
        write_live(conn.lookupByUUIDString(uuid), got[0], got[1].decode(), time.monotonic() + WAIT)
        state.log(f"started {dom}: unpinned, seen booted here (contract {_digest(got[0])[:19]} in its live "
                  "definition)")
    finally:
        conn.close()


def unprefixed(xml: str, prefix: str, ns: str) -> str:
    """The element with its namespace as the default one: libvirt's setMetadata gives the
    element's root the namespace it is passed and refuses a second declaration of the same
    prefix ("failed to create a new XML namespace"), so the children must not need one."""
    return (xml.replace(f'<{prefix}:', "<").replace(f"</{prefix}:", "</")
            .replace(f' xmlns:{prefix}="{ns}"', f' xmlns="{ns}"', 1))


def write_live(vm: Any, contract_xml: str, stamp_xml: str, until: float) -> None:
    """Both elements into the running domain's live definition (libvirt's virDomain), the
    stamp first: a contract without its stamp would refuse the next move."""
    import libvirt

    from ..model.names import CONTRACT_NS, CONTRACT_PREFIX, STAMP_NS, STAMP_PREFIX

    for xml, prefix, ns in ((stamp_xml, STAMP_PREFIX, STAMP_NS), (contract_xml, CONTRACT_PREFIX, CONTRACT_NS)):
        while True:
            try:
                vm.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, unprefixed(xml, prefix, ns), prefix, ns,
                               libvirt.VIR_DOMAIN_AFFECT_LIVE)
                break
            except libvirt.libvirtError:
                # the start job still holds the domain (libvirt waits 30 s, then says so)
                if time.monotonic() > until or not vm.isActive():
                    raise
                time.sleep(1.0)


def _digest(contract_xml: str) -> str:
    at = contract_xml.find(' digest="')
    return contract_xml[at + 9:contract_xml.find('"', at + 9)] if at >= 0 else "?"


def arrival(dom: str, op: str, data: bytes, facts: DomainFacts, sealed: Contract, config: Config) -> int:
    """An unpinned VM abiguard saw boot arrives (``migrate/restore begin``)."""
    import sys

    from ..engine import verdict
    from ..engine.report import group, refusal_line
    from ..model.problem import Policy
    from ..xml import domain, vm
    from . import checks
    from .incoming import new_stamp

    if config.unpinned == "refuse":
        return checks.unpinned(config, dom, op, facts.uuid)
    # a VM this host (or the fleet) allowed under a real contract is refused whatever it
    # carries now: a seen record is no way out of a pin
    checks.left_contract(dom, op, facts.uuid, config.fleet_dir)
    try:
        stamp = vm.stamp_of(facts, sealed, dom)
    except Refusal as e:
        # what it carries is not known (as if nothing had been seen): judged as unpinned
        state.log(f"{op} {dom}: unpinned, its seen record is not usable ({e})")
        return unseen(dom, op, facts, config)
    stream = stamp.stream if stamp is not None else None
    # widening reported, never allowed by the policy: it is what gets recorded
    profile, v = checks.judge(lambda p: verdict.check(sealed, p, Policy(allow_widening=False), stream))
    fails = [p for p in v.problems if p.kind != "widen"]
    # what only a pin keeps (the guest's CTR_EL0 shown apart from the stream) changes for a
    # VM with no pins: its guest's ABI changes here, as with a widening
    widen = [p for p in v.problems if p.kind == "widen"] + v.unpinned
    if fails and config.unpinned == "warn":
        what = (f"refusing {op} of '{dom}' to this host (an unpinned VM: QEMU or KVM here would fail it after "
                f"copying its RAM; pin it to a contract both hosts realise, abiguard baseline + pin)")
        state.log(f"{op} {dom}: REFUSE unpinned, would fail: " + " | ".join(g.line() for g in group(fails)))
        raise Refusal(refusal_line(what, fails))
    # a change recorded by an earlier hop stays recorded (the seen contract is still what
    # the VM booted with, not what it sees now)
    changed = stamp.get("abi-changed") if stamp is not None else None
    if fails:       # policy allow: not refused, and QEMU or KVM will say so
        state.log(f"{op} {dom}: ALLOW unpinned (policy allow), would fail: "
                  + " | ".join(g.line() for g in group(fails)))
    if widen:
        first = group(widen)[0]
        names = ", ".join(first.names[:3]) + (", ..." if len(first.names) > 3 else "")
        changed = f"on {profile.kernel_release[:40]}: {names}"
        state.log(f"{op} {dom}: ALLOW unpinned (policy {config.unpinned}), the guest ABI changes: "
                  + " | ".join(g.line() for g in group(widen)))
        print(f"abiguard: warning: VM '{dom}' has no guest ABI contract and its ABI changes on this host "
              f"({changed})", file=sys.stderr)
    elif not fails:
        state.log(f"{op} {dom}: ALLOW unpinned (policy {config.unpinned}), seen boot contract "
                  f"{sealed.digest[:19]} keeps its ABI here")
    nonce = os.urandom(8).hex()
    state.mark_incoming(facts.uuid, nonce)
    out = domain.with_stamp(data, facts, new_stamp(profile, sealed, nonce, changed), None)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return 0


def unseen(dom: str, op: str, facts: DomainFacts, config: Config) -> int:
    from . import checks

    rc = checks.unpinned(config, dom, op, facts.uuid)
    if op in ("migrate", "restore") and facts.uuid:
        state.mark_incoming(facts.uuid, ARRIVED)
    return rc
