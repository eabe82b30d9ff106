"""The verdict: can a VM with this contract move to (or start on) that host with its guest
ABI unchanged? One generic engine: the contract's arch plugin judges
(:meth:`abiguard.arch.base.Arch.check`), this module dispatches and handles what every
arch shares (a guest never changes architecture)."""
from __future__ import annotations

from ..model.problem import Policy, Problem, Verdict

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from ..model.contract import Contract
    from ..model.profile import Profile


def _wrong_arch(arch: str, dest: Profile) -> Verdict:
    return Verdict([Problem("architecture", None, None, arch, f"is {dest.machine}",
                            "a guest cannot change architecture", "migrate within one architecture")], [])


def check(contract: Contract, dest: Profile, policy: Policy | None = None,
          stream: tuple[int, ...] | None = None, incoming: bool = True, per_qemu: bool = False) -> Verdict:
    """An incoming migration or restore of a VM with this contract.

    :param stream: the register stream the VM carries now (arm64: its last hop's, from
        the stamp); default the contract's
    :param per_qemu: where the destination's QEMU version is not known, judge on each
        released QEMU behaviour (what a report shows); otherwise on the strict model, which
        fails wherever any QEMU could (what the hook and the engine use)
    """
    from ..arch import get

    if dest.machine != contract.arch:
        return _wrong_arch(contract.arch, dest)
    policy = policy or Policy()
    arch = get(contract.arch)
    rules = arch.qemu_rules()
    if not per_qemu or not rules or policy.qemu is not None or dest.qemu_version() is not None:
        return arch.check(contract, dest, policy, stream, incoming)
    # the destination's QEMU is not known (a KVM-only profile): the answer on each released
    # QEMU behaviour, one story where they agree
    return by_qemu([(name, arch.check(contract, dest, Policy(policy.allow_widening, since), stream, incoming))
                    for name, since in rules])


def by_qemu(verdicts: list[tuple[str, Verdict]]) -> Verdict:
    """One verdict from a verdict per destination QEMU version: allowed only where every
    one allows; its problems and notes those of any; ``by_qemu`` set where they differ."""
    first = verdicts[0][1]
    lines = [[p.line() for p in v.problems] + v.notes for _label, v in verdicts]
    if all(x == lines[0] for x in lines):
        return first
    problems: list[Problem] = []
    seen: set[str] = set()
    notes: list[str] = []
    for _label, v in verdicts:
        for p in v.problems:
            if p.line() not in seen:
                seen.add(p.line())
                problems.append(p)
        notes += [n for n in v.notes if n not in notes]
    out = Verdict(problems, notes, first.boot_pins, first.keep_off)
    out.by_qemu = verdicts
    for _label, v in verdicts:
        out.unpinned += [p for p in v.unpinned if p.line() not in {u.line() for u in out.unpinned}]
    return out


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
