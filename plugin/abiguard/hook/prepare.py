"""``prepare begin``: a plain start must realise the contract exactly on this host (an
incoming start was judged at migrate/restore begin)."""
from __future__ import annotations

from .. import state
from ..errors import Refusal, printable
from . import checks


def prepare(dom: str, op: str, data: bytes, deadline: float | None = None) -> int:
    from ..arch import get
    from ..engine import verdict
    from ..model.config import Config
    from ..model.contract import SEEN
    from ..model.pins import env_value
    from ..preload import ENV_PINS, LIBRARY_PATH
    from ..xml import domain, vm

    facts = domain.parse(data, f"domain XML of '{dom}'", deadline)
    config = Config.load()
    sealed = vm.contract_of(facts, dom)
    nonce = facts.stamp.get("nonce") if facts.stamp is not None else None
    if sealed is None or sealed.origin.kind == SEEN:
        if sealed is not None:      # what abiguard saw it boot with: still an unpinned VM
            state.was_incoming(facts.uuid, nonce)
        return checks.unpinned(config, dom, op, facts.uuid, quiet=True)
    if state.was_incoming(facts.uuid, nonce):
        # judged, and its pinned record written, at migrate/restore begin on this host
        state.log(f"{op} {dom}: ALLOW, an incoming VM (judged at migrate/restore begin)")
        return 0
    vm.check_domain_matches(facts, sealed, dom)
    arch = get(sealed.arch)
    stamp = vm.stamp_of(facts, sealed, dom)
    profile, v = checks.judge(lambda p: verdict.realise(sealed, p))
    what = f"this host cannot start '{dom}' with its contract"
    if v.problems:
        checks.refuse(what, v.problems, f"{op} {dom}: start")
    here = arch.boot_stream(sealed, profile) or getattr(sealed.body, "stream", None)
    if arch.carries_register_stream and stamp is not None and stamp.stream != here:
        # started here, the VM carries this host's list (realise lets it exceed the contract's
        # stream only by bitmaps kept at 0); a stamp from an earlier hop, or one pinned
        # elsewhere, would lie about it from now on
        raise Refusal(f"abiguard: '{dom}' carries the hop stamp of another host "
                      f"({printable(stamp.get('kernel') or '?', 64)}); a plain start here gives it the "
                      f"contract's register stream: run abiguard pin {dom} (it resets the stamp), then start it")
    if arch.uses_preload:
        want = env_value(arch.plan_pins(sealed, profile, v))
        have = facts.qemu_env.get(ENV_PINS, ("", None))[0]
        if want and (have != want or facts.qemu_env.get("LD_PRELOAD", ("", None))[0] != LIBRARY_PATH):
            raise Refusal(f"abiguard: '{dom}' needs {ENV_PINS}={want} on this host and its definition "
                          f"has {have or 'none'}: run abiguard pin {dom} here")
        if want and not checks.library_present():
            raise Refusal(f"abiguard: '{dom}' needs register pins and {LIBRARY_PATH} is missing "
                          "(reinstall the abiguard package, or run abiguard install)")
    state.log(f"{op} {dom}: ALLOW, this host realises contract {sealed.digest[:19]}")
    checks.record_pinned(dom, op, facts.uuid, sealed.digest, config.fleet_dir)
    return 0
