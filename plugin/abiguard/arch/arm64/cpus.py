"""The CPU a guest is shown under a contract of several CPU models, chosen by the operator
(``abiguard baseline --cpu``, ``abiguard pin --cpu``): one of the contract's
``impl_cpus``, given as a MIDR (hex), a CPU model name Linux knows (``cortex-a57``) or a
label the caller knows (a host's profile); the contract re-sealed with that CPU's MIDR,
REVIDR and AIDR, its ``impl_cpus`` list unchanged (the guest is still told every one)."""
from __future__ import annotations

from ...errors import UsageError, printable
from . import errata, regs

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from ...model.contract import Contract
    from ...model.profile import Profile
    from .body import Arm64Body

Cpu = tuple[int, int, int]


def _body(contract: Contract) -> Arm64Body:
    return contract.body  # type: ignore[return-value]   # an arm64 contract's (the plugin calls here)


def choices(contract: Contract) -> tuple[Cpu, ...]:
    """The CPUs the guest may be shown: the contract's impl_cpus, or its own CPU alone."""
    body = _body(contract)
    if body.impl_cpus:
        return body.impl_cpus
    own = body.own_cpu()
    return () if None in own else (own,)  # type: ignore[return-value]


def _listed(cpus: tuple[Cpu, ...], labels: dict[str, Cpu]) -> str:
    names = {c: [k for k, v in labels.items() if v == c] for c in cpus}
    return "; ".join(f"{errata.describe(c[0])}" + (f" = {', '.join(printable(n, 160) for n in names[c])}"
                                                   if names[c] else "") for c in cpus)


def choose(contract: Contract, text: str, labels: dict[str, Cpu] | None = None) -> Cpu:
    """The contract's CPU that *text* names: a MIDR (0x...), a model name, or a key of
    *labels* (e.g. a profile's label -> that host's CPU). Exit 2 naming the choices when it
    names none, or several."""
    labels = labels or {}
    cpus = choices(contract)
    if not cpus:
        raise UsageError("--cpu: the contract gives the guest no MIDR_EL1/REVIDR_EL1/AIDR_EL1 to choose from")
    shown = printable(text, 60)
    if text in labels:
        found = [c for c in cpus if c == labels[text]]
        what = f"the CPU of {shown}"
    elif text.lower().startswith("0x"):
        try:
            midr = int(text, 16)
        except ValueError:
            raise UsageError(f"--cpu {shown}: not a hex MIDR") from None
        found = [c for c in cpus if c[0] == midr]
        what = f"MIDR {midr:#x}"
    else:
        ids = errata.model_ids(text)
        if ids is None:
            raise UsageError(f"--cpu {shown}: neither a MIDR (0x...), a CPU model Linux names (e.g. cortex-a57) "
                             f"nor one of {', '.join(printable(k, 60) for k in labels) or 'the given hosts'}; "
                             f"choose one of: {_listed(cpus, labels)}")
        found = [c for c in cpus if (c[0] >> 24 & 0xFF, c[0] >> 4 & 0xFFF) == ids]
        what = f"a {text.lower()}"
    if len(found) != 1:
        why = ("is not one of the CPUs the contract tells the guest" if not found else
               "matches several of the contract's CPUs: give the MIDR")
        extra = "" if _body(contract).impl_cpus else " (one CPU model: the contract tells the guest no other)"
        raise UsageError(f"--cpu {shown}: {what} {why}{extra}; choose one of: {_listed(cpus, labels)}")
    return found[0]


def show(contract: Contract, cpu: Cpu) -> Contract:
    """The contract re-sealed showing the guest *cpu* (its impl_cpus unchanged)."""
    body = _body(contract)
    if body.own_cpu() == cpu:
        return contract
    values = dict(body.values)
    for rid, value in zip(regs.IMPLEMENTATION_IDS, cpu):
        values[rid] = value
    return contract.replace(body=body.replace(values=values))


def shown(contract: Contract) -> str | None:
    """What ``status`` says of an arm64 contract's CPU: the one shown, the ones told."""
    body = _body(contract)
    midr = body.own_cpu()[0]
    if midr is None:
        return None
    told = (f"; told {len(body.impl_cpus)} CPUs: " + ", ".join(errata.describe(c[0]) for c in body.impl_cpus)
            if body.impl_cpus else "")
    return f"shown {errata.describe(midr)}{told}"


def profile_cpu(profile: Profile, config: str) -> Cpu | None:
    """The (MIDR, REVIDR, AIDR) a VM of vCPU configuration *config* has on that host."""
    from .judge import section_of

    s = section_of(profile)
    probed = s.usable(config) if s is not None else None
    if probed is None or probed.registers is None:
        return None
    cpu = regs.cpu_of(probed.registers)
    return None if None in cpu else cpu  # type: ignore[return-value]


def labels(profiles: list[Profile], contract: Contract) -> dict[str, Cpu]:
    """label -> CPU of each profile (for --cpu LABEL)."""
    out = {}
    for p in profiles:
        cpu = profile_cpu(p, _body(contract).config)
        if cpu is not None:
            out[p.label] = cpu
    return out


def older_guests(contract: Contract) -> list[str]:
    """:func:`.errata.older_guest_note` for an arm64 contract (empty otherwise)."""
    if not _body(contract).impl_cpus:
        return []
    midr, revidr, _aidr = _body(contract).own_cpu()
    if midr is None:
        return []
    return errata.older_guest_note(_body(contract).impl_cpus, (midr, revidr or 0))


def name(midr: int) -> str:
    """``cortex-a72 (MIDR 0x410fd083)`` for the texts that tell hosts apart (``fleet
    matrix``), by Linux's own model table (:mod:`.errata`); the MIDR alone for a model it
    does not name (QEMU's ``-cpu max`` under TCG)."""
    model = errata.model_name(midr)
    return f"{model} (MIDR {midr:#x})" if model else f"MIDR {midr:#x}"
