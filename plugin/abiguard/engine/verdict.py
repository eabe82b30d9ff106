"""The verdict: can a VM with this contract move to (or start on) that host with its guest
ABI unchanged? One generic engine: the contract's arch plugin judges
(:meth:`abiguard.arch.base.Arch.check`), this module dispatches and handles what every
arch shares (a guest never changes architecture)."""
from __future__ import annotations

from .problem import Policy, Problem, Verdict

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..model.contract import Contract
    from ..model.profile import Profile


def _wrong_arch(arch: str, dest: Profile) -> Verdict:
    return Verdict([Problem("architecture", None, None, arch, f"is {dest.machine}",
                            "a guest cannot change architecture", "migrate within one architecture")], [])


def check(contract: Contract, dest: Profile, policy: Policy | None = None,
          stream: tuple[int, ...] | None = None, incoming: bool = True) -> Verdict:
    """An incoming migration or restore of a VM with this contract.

    :param stream: the register stream the VM carries now (arm64: its last hop's, from
        the stamp); default the contract's
    """
    from ..arch import get

    if dest.machine != contract.arch:
        return _wrong_arch(contract.arch, dest)
    return get(contract.arch).check(contract, dest, policy or Policy(), stream, incoming)


def check_pair(source: Profile, dest: Profile, policy: Policy | None = None) -> Verdict:
    """A VM booted on the source with defaults, moving to the destination."""
    from ..arch import get
    from ..model import contract

    if source.machine != dest.machine:
        return check(contract.from_profile(source), dest, policy)
    return get(source.machine).check_pair(source, dest, policy or Policy())


def realise(contract: Contract, profile: Profile) -> Verdict:
    """A plain start on this host: what stands between it and exactly this contract, and
    the pins (``boot_pins``) that realise it."""
    from ..arch import get

    if profile.machine != contract.arch:
        return _wrong_arch(contract.arch, profile)
    return get(contract.arch).realise(contract, profile)
