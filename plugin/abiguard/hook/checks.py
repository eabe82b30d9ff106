"""What the hook's judged operations share: the VM's contract and stamp read from its XML,
this host's profile, the unpinned policy, and the one refusal line."""
from __future__ import annotations

import os
import sys

from ..errors import ContractError, ProfileError, Refusal
from . import state

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from ..engine.problem import Problem
    from ..model.contract import Contract
    from ..model.profile import Profile
    from ..model.stamp import HopStamp
    from ..xml.domain import DomainFacts
    from .config import Config


def load_profile() -> Profile:
    from ..model import profile

    try:
        return profile.load_for_hook(state.PROFILE)
    except ProfileError as e:
        raise Refusal(f"{e} (refresh it: 'abiguard probe -o {state.PROFILE}', or restart libvirtd)") from None


def unpinned(config: Config, dom: str, op: str) -> int:
    if config.unpinned == "refuse":
        state.log(f"{op} {dom}: REFUSE, no contract (policy refuse)")
        raise Refusal(f"abiguard: VM '{dom}' has no guest ABI contract and this host refuses unpinned "
                      f"VMs ({state.CONFIG}); pin it first: abiguard pin {dom}")
    state.log(f"{op} {dom}: ALLOW, no contract (policy {config.unpinned})")
    if config.unpinned == "warn":
        print(f"abiguard: warning: VM '{dom}' has no guest ABI contract; its ABI is not checked", file=sys.stderr)
    return 0


def contract_of(facts: DomainFacts, dom: str) -> Contract | None:
    from ..xml import contract

    if facts.contract is None:
        return None
    try:
        return contract.from_element(facts.contract, f"contract of '{dom}'")
    except ContractError as e:
        raise Refusal(f"{e}: the VM's metadata is not a contract abiguard can trust; re-pin it on the "
                      "source (abiguard pin)") from None


def stamp_of(facts: DomainFacts, sealed: Contract, dom: str) -> HopStamp | None:
    """The stamp of the VM's last hop (or the boot stamp ``abiguard pin`` wrote), checked
    against the contract. On an arch whose register stream moves with the VM a missing,
    foreign or altered stamp refuses: the stream the VM carries would be unknown, and a
    guess would be the favourable one."""
    from ..arch import get
    from ..model.stamp import HopStamp

    needs_stream = get(sealed.arch).carries_register_stream
    if facts.stamp is None:
        if needs_stream:
            raise Refusal(f"abiguard: VM '{dom}' has a contract but no hop stamp, so the register stream it "
                          f"carries is unknown; pin it with abiguard pin {dom} (which writes the stamp) and "
                          "restart it")
        return None
    try:
        stamp = HopStamp.from_element(facts.stamp)
    except ValueError:
        raise Refusal(f"abiguard: VM '{dom}': its hop stamp lists an invalid register stream") from None
    problem = stamp.problem(sealed, needs_stream)
    if problem is not None:
        raise Refusal(f"abiguard: VM '{dom}': {problem}; re-pin the VM on its source (abiguard pin {dom})")
    return stamp


def check_domain_matches(facts: DomainFacts, sealed: Contract, dom: str) -> None:
    if facts.arch and facts.arch != sealed.arch:
        raise Refusal(f"abiguard: VM '{dom}' is {facts.arch} but its contract is for {sealed.arch}")
    want = sealed.machine_type
    if want and facts.machine and facts.machine != want:
        raise Refusal(f"abiguard: VM '{dom}' runs machine type {facts.machine} but its contract pins {want}; "
                      "re-pin it (abiguard pin) before moving it")
    model = getattr(sealed.body, "cpu_model", None)
    if model and facts.cpu_model != model:
        raise Refusal(f"abiguard: VM '{dom}' runs CPU model {facts.cpu_model or facts.cpu_mode} but its contract "
                      f"pins {model}; re-pin it (abiguard pin) before moving it")


def refuse(what: str, problems: list[Problem], log_prefix: str) -> None:
    """Raise the one refusal line: the first reason, every register it holds for, and the
    registers of the other reasons (engine.report)."""
    from ..engine.report import group, refusal_line

    state.log(f"{log_prefix}: REFUSE " + " | ".join(g.line() for g in group(problems)))
    raise Refusal(refusal_line(what, problems))


def library_present() -> bool:
    from ..preload import LIBRARY_PATH

    return os.path.exists(state.rooted(LIBRARY_PATH))
