"""The interface every architecture plugin implements (see :mod:`abiguard.arch`).

The engine is generic: :mod:`abiguard.engine.verdict` dispatches a contract to its arch's
:meth:`Arch.check`, :mod:`abiguard.engine.baseline` to :meth:`Arch.baseline`, the probe to
:meth:`Arch.probe`; the models, one layer below, read the arch's profile section and
contract body through the ``section_*`` and ``body_*`` methods (their table of plugins:
:mod:`abiguard.model.arches`). An arch keeps its knowledge as table rows (registers,
fields, rule kinds, features) used by these few methods.
"""
from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

    from ..model.contract import Body, Contract
    from ..model.fields import Reader
    from ..model.pins import Pin
    from ..model.problem import Policy, Verdict
    from ..model.profile import KvmSection, Profile
    from ..uapi.kvm import KvmSystem, Missing


class XmlShape:
    """How an arch's contract body is written in the contract XML, for the one table
    that both renders and parses it (:mod:`abiguard.xml.contract`).

    :param element: the body's element (``arm64``, ``x86``)
    :param attrs: (XML attribute, JSON member) pairs of the body element
    :param lists: (child element, JSON member): a list of words as the child's text
    :param maps: (child element, JSON member, key attribute, value attribute): a JSON
        object as repeated children
    :param records: (child element, JSON member, (XML attribute, JSON key) pairs): an
        optional JSON list of objects as repeated children, in order (absent: no children)
    """

    __slots__ = ("element", "attrs", "lists", "maps", "records")

    def __init__(self, element: str, attrs: tuple[tuple[str, str], ...],
                 lists: tuple[tuple[str, str], ...] = (),
                 maps: tuple[tuple[str, str, str, str], ...] = (),
                 records: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = ()) -> None:
        self.element, self.attrs, self.lists, self.maps = element, attrs, lists, maps
        self.records = records


class Arch:
    """One architecture. Subclasses override every method the engine calls."""

    #: the host machine name (``uname -m``)
    name = ""
    #: the machine type family contracts pin (``virt``, ``pc-q35``)
    machine_family = ""
    #: the contract XML shape of the body
    xml: XmlShape
    #: the QEMU binary that runs this arch's guests
    qemu_binary = ""
    #: QEMU migrates a register list that is the host's, not the contract's: each hop's
    #: stamp carries it and the next hop is judged with it
    carries_register_stream = False
    #: the baseline's CPU is libvirt's answer (baselineHypervisorCPU over the hosts), so
    #: ``baseline`` opens a libvirt connection per host when a profile is of this arch
    baseline_asks_libvirt = False

    # -- models ---------------------------------------------------------------------------
    def section_from_json(self, r: Reader, doc: dict[str, Any], where: str) -> KvmSection:
        raise NotImplementedError

    def section_to_view(self, section: KvmSection) -> Any:
        raise NotImplementedError

    def section_from_view(self, view: Any) -> KvmSection:
        raise NotImplementedError

    def body_from_json(self, r: Reader, doc: dict[str, Any], where: str) -> Body:
        raise NotImplementedError

    def contract_body(self, profile: Profile, config: str | None) -> Body:
        """What a VM booted on that host with libvirt's defaults has."""
        raise NotImplementedError

    # -- the engine -------------------------------------------------------------------------
    def check(self, contract: Contract, dest: Profile, policy: Policy, stream: tuple[int, ...] | None,
              incoming: bool) -> Verdict:
        raise NotImplementedError

    def check_pair(self, source: Profile, dest: Profile, policy: Policy) -> Verdict:
        """A VM booted on the source with defaults, moving to the destination (both of
        this arch: :func:`abiguard.engine.verdict.check_pair` asks only then)."""
        from ..model import contract

        return self.check(contract.from_profile(source), dest, policy, None, True)

    def realise(self, contract: Contract, profile: Profile) -> Verdict:
        """A plain start of the contract on this host: what stands in the way, and the
        pins (``boot_pins``) that realise it."""
        raise NotImplementedError

    #: whether VMs of this arch need the preload library for some pins (ABIGUARD_PINS)
    uses_preload = False

    def plan_pins(self, contract: Contract, profile: Profile, verdict: Verdict, explicit: bool = False,
                  stream: tuple[int, ...] | None = None) -> list[Pin]:
        """The pins that realise ``verdict`` on ``profile``'s host (none by default)."""
        return []

    def baseline(self, profiles: list[Profile], config: str | None,
                 hypervisors: list[Any] | None = None) -> tuple[Body, list[str]]:
        """The richest body every profile's host provides, and the conflicts. ``hypervisors``:
        the fleet's libvirts, where the arch asks libvirt itself (x86: HypervisorCpu)."""
        raise NotImplementedError

    def verify_pin(self, conn: Any, label: str, contract: Contract) -> str | None:
        """Why the libvirt at ``conn`` cannot run a VM pinned to this contract (None: it can,
        or the arch has nothing to ask)."""
        return None

    def verify_on(self, contract: Contract, hypervisors: list[Any]) -> dict[str, Any]:
        """What each given libvirt says of the contract (x86: compareHypervisorCPU), by label."""
        return {}

    def cpu_text(self, profile: Profile) -> str | None:
        """The host's CPU model as texts that tell hosts apart name it (None: not known)."""
        return None

    def host_report(self, contract: Contract, profile: Profile) -> dict[str, Any]:
        return {}

    def show_cpu(self, contract: Contract, cpu: str, profiles: list[Profile]) -> Contract:
        """``--cpu``: the contract re-sealed showing the guest that CPU, one of those the
        contract tells it (*profiles*: hosts a label may name)."""
        from ..errors import UsageError

        raise UsageError(f"--cpu chooses the CPU an arm64 guest is shown; this contract is {self.name}")

    def cpu_notes(self, contract: Contract) -> dict[str, Any]:
        """What ``pin``, ``baseline`` and ``status`` say of the CPU a guest is shown:
        ``cpu`` (a line) and ``older_guests`` (lines), where the arch has something to say."""
        return {}

    def common_config(self, profiles: list[Profile]) -> str | None:
        """The vCPU configuration every host offers, where the arch has such a notion."""
        return None

    def qemu_rules(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, first QEMU version) of each released QEMU behaviour that changes a verdict
        when a profile does not name its QEMU (what ``matrix`` tabulates separately)."""
        return []

    def stamp_stream(self, contract: Contract, profile: Profile) -> tuple[int, ...] | None:
        """The register stream a VM of this contract carries from this host on."""
        return None

    def boot_stream(self, contract: Contract, profile: Profile) -> tuple[int, ...] | None:
        """The register stream a VM of this contract carries when it is started on this host
        (what ``pin`` stamps and ``prepare`` expects); None: the contract's own."""
        return None

    def domain_contract(self, root: Any, host: Profile) -> Contract:
        """The contract of what a domain definition (lxml root) asks for on this host: the
        host's defaults, on the domain's own machine type (made concrete by this host's
        QEMU: 'q35' or 'virt' name whichever version it has now)."""
        from ..model import contract

        sealed = contract.from_profile(host)
        machine = domain_machine(root, host)
        return sealed.replace(machine_type=machine) if machine else sealed

    def edit_definition(self, root: Any, contract: Contract, notes: list[str], cannot: list[str],
                        profile: Profile | None) -> None:
        """Write what realises the contract into a definition (lxml root), beyond its machine
        type and metadata; say what cannot be pinned."""
        raise NotImplementedError

    # -- the probe --------------------------------------------------------------------------
    def probe(self, system: KvmSystem, caps: dict[str, int], missing: Missing) -> dict[str, Any]:
        raise NotImplementedError

    #: a named CPU model whose QEMU expansion the probe records (what QEMU gives any named
    #: model beyond its own features, such as x86's KVM PV defaults); None: none
    qemu_named_model: str | None = None

    def probe_libvirt(self, conn: Any, domcaps: Any, unavailable: list[dict[str, Any]]) -> dict[str, Any]:
        """What libvirt knows about this arch's CPUs, beyond domcapabilities (``conn``: an open
        libvirt connection; ``domcaps``: its domcapabilities, lxml); nothing by default."""
        return {}


def domain_machine(root: Any, host: Profile) -> str | None:
    """The machine type a domain definition (lxml root) names, an alias resolved by the
    host's QEMU."""
    os_type = root.find("os/type")
    name = os_type.get("machine") if os_type is not None else None
    if not name:
        return None
    return host.qemu.resolve_machine(name) if host.qemu is not None else name

