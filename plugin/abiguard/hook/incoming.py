"""``migrate begin`` and ``restore begin``: on the destination, before QEMU starts and
before any RAM moves, allow (and stamp) the VM or refuse it."""
from __future__ import annotations

import os
import sys
import time

from .. import state
from ..errors import EnforceError, Refusal
from . import checks

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from ..model.contract import Contract
    from ..model.profile import Profile


def new_stamp(profile: Profile, sealed: Contract, nonce: str, abi_changed: str | None = None) -> bytes:
    """This hop's stamp: this host, its profile, and the stream the VM carries from here
    (and, for an unpinned VM abiguard saw boot, the move that changed its ABI)."""
    from ..arch import get
    from ..errors import printable
    from ..model.stamp import HopStamp, safe_attr

    host = os.uname().nodename[:64]
    attrs = {"host": host if safe_attr(host) else "?", "kernel": profile.kernel_release[:64],
             "profile": profile.digest, "nonce": nonce, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if profile.qemu is not None and profile.qemu.version_text and safe_attr(profile.qemu.version_text):
        attrs["qemu"] = profile.qemu.version_text
    if abi_changed:
        changed = printable(abi_changed, 160)
        if safe_attr(changed):
            attrs["abi-changed"] = changed
    return HopStamp.made(attrs, sealed.digest, get(sealed.arch).stamp_stream(sealed, profile)).to_xml()


def incoming(dom: str, op: str, data: bytes, deadline: float | None = None) -> int:
    from ..arch import get
    from ..engine import verdict
    from ..model.config import Config
    from ..model.contract import SEEN
    from ..model.pins import env_value
    from ..model.problem import Policy
    from ..xml import domain, vm
    from . import seen

    facts = domain.parse(data, f"domain XML of '{dom}'", deadline)
    config = Config.load()
    sealed = vm.contract_of(facts, dom)
    if sealed is None:
        return seen.unseen(dom, op, facts, config)
    if sealed.origin.kind == SEEN:
        return seen.arrival(dom, op, data, facts, sealed, config)
    vm.check_domain_matches(facts, sealed, dom)
    checks.same_contract_as_fleet(dom, op, facts.uuid, sealed.digest, config.fleet_dir)
    stamp = vm.stamp_of(facts, sealed, dom)
    arch = get(sealed.arch)
    stream = stamp.stream if stamp is not None and arch.carries_register_stream else None
    policy = Policy(allow_widening=config.allow_widening)
    profile, v = checks.judge(lambda p: verdict.check(sealed, p, policy, stream))
    # registers this host adds and the stream lacks widen the ABI unless they are pinned off
    # here; anything else refuses at once
    widen = [p for p in v.problems if p.kind == "widen"]
    hard = [p for p in v.problems if p.kind != "widen"]
    what = f"refusing {op} of '{dom}' to this host"
    if hard:
        checks.refuse(what, hard + widen, f"{op} {dom}")
    pins = None
    if arch.uses_preload:
        # pin what this host has and the incoming stream lacks (kept off), and the contract's
        # values so that every reset here re-applies them (abiguard_pin.so)
        try:
            planned = arch.plan_pins(sealed, profile, v)
        except EnforceError as e:
            state.log(f"{op} {dom}: REFUSE " + " | ".join(e.problems))
            raise Refusal(f"abiguard: {what}: {e.problems[0]}"
                          + (f" (+{len(e.problems) - 1} more)" if len(e.problems) > 1 else "")) from None
        pinned = {p.id for p in planned}
        widen = [p for p in widen if p.reg_id not in pinned]
        pins = env_value(planned)
        if pins and not checks.library_present():
            from ..preload import LIBRARY_PATH

            raise Refusal(f"abiguard: {what}: its contract needs register pins and {LIBRARY_PATH} is missing "
                          "(reinstall the abiguard package, or run abiguard install)")
    if widen:
        checks.refuse(what, widen, f"{op} {dom}")
    nonce = os.urandom(8).hex()
    state.mark_incoming(facts.uuid, nonce)
    out = domain.with_stamp(data, facts, new_stamp(profile, sealed, nonce), pins)
    checks.record_pinned(dom, op, facts.uuid, sealed.digest, config.fleet_dir)
    state.log(f"{op} {dom}: ALLOW, contract {sealed.digest[:19]}, notes: {'; '.join(v.notes) or '-'}")
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return 0
