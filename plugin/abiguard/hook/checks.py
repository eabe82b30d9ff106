"""What the hook's judged operations share: this host's profile, the unpinned policy, and
the one refusal line (the VM's contract and stamp, read from its XML as the hook trusts
them: :mod:`abiguard.xml.vm`)."""
from __future__ import annotations

import os
import sys

from .. import state
from ..errors import ProfileError, Refusal

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..model.config import Config
    from ..model.problem import Problem, Verdict
    from ..model.profile import Profile


def load_profile() -> Profile:
    from ..model import profile

    try:
        return profile.load_for_hook(state.PROFILE)
    except ProfileError as e:
        raise Refusal(f"{e} (refresh it: 'abiguard probe -o {state.PROFILE}', or restart libvirtd)") from None


def judge(fn: Callable[[Profile], Verdict]) -> tuple[Profile, Verdict]:
    """``fn`` (a judgement) over this host's profile. The hook view is trusted no further
    than the JSON (issue 22): a judgement that fails on what the view held (a crafted or
    damaged member the view's checks let through, decoded late) is made again over the
    validated JSON, never answered with an internal error or a laxer profile."""
    from ..errors import AbiguardError
    from ..model import profile as profiles

    p = load_profile()
    try:
        return p, fn(p)
    except AbiguardError:
        raise
    except Exception:   # noqa: BLE001 -- any doubt about the view: the JSON
        if p.doc is not None:
            raise
        state.log(f"the hook view of {state.PROFILE} failed a judgement: reading the JSON")
    try:
        p = profiles.load(state.PROFILE)
    except ProfileError as e:
        raise Refusal(f"{e} (refresh it: 'abiguard probe -o {state.PROFILE}', or restart libvirtd)") from None
    return p, fn(p)


def left_contract(dom: str, op: str, uuid: str | None, fleet_dir: str | None = None) -> None:
    """A VM without a contract that this host (or, with ``[fleet] dir``, any host of the
    fleet) allowed under one: refused under every policy until re-pinned or released
    (issue 22). One bounded read here, one in the fleet directory when there is none here."""
    present, digest, path = state.read_pinned(uuid)
    if not present and fleet_dir:
        present, digest, path = state.read_pinned(uuid, fleet_dir)
    if not present:
        return
    if digest is None:
        state.log(f"{op} {dom}: REFUSE, no contract and a malformed pinned record {path}")
        raise Refusal(f"abiguard: VM '{dom}' has no guest ABI contract and its pinned record {path} is not one "
                      f"abiguard writes: refusing it; re-pin it (abiguard pin {dom}) or release it "
                      f"(abiguard release {dom})")
    state.log(f"{op} {dom}: REFUSE, contract {digest} removed ({path})")
    raise Refusal(f"abiguard: VM '{dom}' was pinned to contract {digest} and has lost it ({path}); "
                  f"re-pin it (abiguard pin {dom}) or release it (abiguard release {dom})")


def same_contract_as_fleet(dom: str, op: str, uuid: str | None, digest: str, fleet_dir: str | None) -> None:
    """With ``[fleet] dir``, an arriving VM must carry the contract the fleet last recorded
    for it (issue 22): a contract is changed by ``abiguard pin`` and takes effect at a start,
    which records it there, so a migration or restore that brings another contract (another
    VM's, or one rewritten with its digest recomputed) is refused. Without a fleet directory
    a host's own record may be stale (the VM re-pinned and started elsewhere), so it is not
    used for this; README, Security. One bounded read of one small file."""
    if not fleet_dir:
        return
    present, recorded, path = state.read_pinned(uuid, fleet_dir)
    if not present or recorded == digest:
        return
    if recorded is None:
        state.log(f"{op} {dom}: REFUSE, malformed fleet record {path}")
        raise Refusal(f"abiguard: VM '{dom}' has a fleet record {path} abiguard did not write: refusing it; "
                      f"release it (abiguard release {dom}) and start it once under its contract")
    state.log(f"{op} {dom}: REFUSE, contract {digest[:19]} is not the fleet's {recorded[:19]} ({path})")
    raise Refusal(f"abiguard: VM '{dom}' arrives with contract {digest} but the fleet recorded it under "
                  f"{recorded} ({path}): a contract changes only by a start under it; if it was re-pinned "
                  f"on purpose, start it once, or release it (abiguard release {dom})")


def record_pinned(dom: str, op: str, uuid: str | None, digest: str, fleet_dir: str | None = None) -> None:
    """Remember a VM judged and allowed under its contract, here and in the fleet directory
    when one is configured; a failure is logged, never an answer (the VM was allowed)."""
    if not uuid:
        state.log(f"{op} {dom}: pinned record not written: the domain XML has no <uuid>")
        return
    for base in (None, fleet_dir) if fleet_dir else (None,):
        try:
            state.record_pinned(uuid, digest, base)
        except Exception as e:  # noqa: BLE001 -- recording must never turn an allow into a failure
            state.log(f"{op} {dom}: pinned record not written{' to the fleet directory' if base else ''}: {e}")


def unpinned(config: Config, dom: str, op: str, uuid: str | None = None, quiet: bool = False) -> int:
    left_contract(dom, op, uuid, config.fleet_dir)
    if quiet and config.unpinned != "refuse":
        return 0
    if config.unpinned == "refuse":
        state.log(f"{op} {dom}: REFUSE, no contract (policy refuse)")
        raise Refusal(f"abiguard: VM '{dom}' has no guest ABI contract and this host refuses unpinned "
                      f"VMs ({state.CONFIG}); pin it first: abiguard pin {dom}")
    state.log(f"{op} {dom}: ALLOW, no contract (policy {config.unpinned})")
    if config.unpinned == "warn":
        print(f"abiguard: warning: VM '{dom}' has no guest ABI contract; its ABI is not checked", file=sys.stderr)
    return 0


def refuse(what: str, problems: list[Problem], log_prefix: str) -> None:
    """Raise the one refusal line: the first reason, every register it holds for, and the
    registers of the other reasons (engine.report)."""
    from ..engine.report import group, refusal_line

    state.log(f"{log_prefix}: REFUSE " + " | ".join(g.line() for g in group(problems)))
    raise Refusal(refusal_line(what, problems))


def library_present() -> bool:
    from ..preload import LIBRARY_PATH

    return os.path.exists(state.rooted(LIBRARY_PATH))
