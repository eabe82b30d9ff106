"""A VM's own claims, read from its domain XML and checked the way the hook trusts them: its
contract, its hop stamp, and that the domain still matches the contract. The hook's judged
operations (:mod:`abiguard.hook`) and the fleet's view of VMs (:mod:`abiguard.fleet.vms`)
read VMs through these, so both give the same answer; a failure is one ``abiguard:`` line
(:class:`~abiguard.errors.Refusal`)."""
from __future__ import annotations

from ..errors import ContractError, Refusal

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from ..model.contract import Contract
    from ..model.stamp import HopStamp
    from .domain import DomainFacts


def contract_of(facts: DomainFacts, dom: str) -> Contract | None:
    from . import contract

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


def seen_note(facts: DomainFacts, sealed: Contract) -> str:
    """How status says an unpinned VM abiguard saw boot (:mod:`abiguard.hook.seen`): where
    it booted, and the move that changed its guest ABI when one did."""
    from ..errors import printable

    kernel = sealed.origin.hosts[0].kernel if sealed.origin.hosts else "?"
    changed = facts.stamp.get("abi-changed") if facts.stamp is not None else None
    return (f"booted on {printable(kernel, 64)} (seen by abiguard, {sealed.digest[:19]})"
            + (f"; its guest ABI changed {printable(changed, 200)}" if changed else "; guest ABI unchanged"))
