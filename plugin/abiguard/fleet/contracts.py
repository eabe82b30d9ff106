"""The fleet's contracts, and which hosts realise each now.

The contracts that matter to a scheduler are the ones VMs are pinned to (read through the
hosts' libvirt, :mod:`abiguard.fleet.vms`) and the ones an operator is about to pin
(``--contract FILE``: a contract or a ``baseline`` file). A host *realises* a contract
when ``abiguard check`` allows a VM of it, carrying the contract's own register stream,
to come there: the question the hook answers at ``migrate begin``, and what a freshly
booted VM asks. (After hops an arm64 VM carries another host's stream; the hook judges
that one again when it arrives.)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model.contract import Contract
    from ..model.profile import Profile
    from .judge import Judge
    from .record import HostRecord
    from .vms import FleetVm


class FleetContract:
    """A contract and where the fleet has it from (files, VMs)."""

    __slots__ = ("contract", "sources")

    def __init__(self, contract: Contract, sources: list[str]) -> None:
        self.contract = contract
        self.sources = sources


def gather(files: list[str], vms: list[FleetVm]) -> dict[str, FleetContract]:
    """digest -> contract, from contract/baseline files and from pinned VMs."""
    from ..engine.baseline import load_contract_or_profile

    out: dict[str, FleetContract] = {}
    for path in files:
        c = load_contract_or_profile(path)
        out.setdefault(c.digest, FleetContract(c, [])).sources.append(path)
    for vm in vms:
        if vm.contract is not None:
            out.setdefault(vm.contract.digest, FleetContract(vm.contract, [])).sources.append(
                f"VM {vm.name} on {vm.host}")
    return out


def realised(records: list[HostRecord], profiles: dict[str, Profile], contracts: dict[str, FleetContract],
             judge: Judge) -> dict[str, list[str]]:
    """host name -> the digests of the contracts it realises now (sorted)."""
    by_profile = {d: sorted(c for c, fc in contracts.items() if judge.judge(fc.contract, p).allow)
                  for d, p in profiles.items()}
    return {rec.name: by_profile[rec.profile] for rec in records}
