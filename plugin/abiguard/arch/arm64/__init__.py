"""The arm64 (aarch64) plugin: firmware pseudo-registers and ID registers as table rows
(:mod:`.regs`, :mod:`.idregs`), the rule kinds that judge them (:mod:`.rules`), how QEMU
loads a register stream (:mod:`.cpreg`), and the pins abiguard_pin.so writes
(:mod:`.pins`). Submodules load when a method first needs them."""
from __future__ import annotations

from ..base import Arch, XmlShape

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

    from ...model.contract import Contract
    from ...model.fields import Reader
    from ...model.pins import Pin
    from ...model.problem import Policy, Verdict
    from ...model.profile import Profile
    from ...uapi.kvm import KvmSystem, Missing
    from .body import Arm64Body
    from .section import Arm64Kvm


class Arm64(Arch):
    name = "aarch64"
    machine_family = "virt"
    uses_preload = True
    qemu_binary = "qemu-system-aarch64"
    carries_register_stream = True
    xml = XmlShape("arm64", (("config", "config"), ("sve-vls", "sve_vls")),
                   lists=(("stream", "stream"),),
                   maps=(("reg", "values", "id", "value"), ("guest", "guest", "key", "saw")),
                   records=(("cpu", "impl_cpus", (("midr", "midr"), ("revidr", "revidr"), ("aidr", "aidr"))),))

    def section_from_json(self, r: Reader, doc: dict[str, Any], where: str) -> Arm64Kvm:
        from . import section

        return section.from_json(r, doc, where)

    def section_to_view(self, s: Any) -> Any:
        from . import section

        return section.to_view(s)

    def section_from_view(self, view: Any) -> Arm64Kvm:
        from . import section

        return section.from_view(view)

    def body_from_json(self, r: Reader, doc: dict[str, Any], where: str) -> Arm64Body:
        from . import body

        return body.from_json(r, doc, where)

    def contract_body(self, profile: Profile, config: str | None) -> Arm64Body:
        from ...errors import ContractError
        from . import regs
        from .body import Arm64Body
        from .judge import section_of

        section = section_of(profile)
        if section is None or not section.configs:
            raise ContractError("profile", "it has no arm64 vCPU configuration: the probe could not create "
                                "a vCPU there")
        config = config or section.default_config()
        probed = section.usable(config)
        if probed is None or probed.registers is None:
            raise ContractError("profile", f"vCPU configuration {config!r} was not probed there "
                                f"(it has: {', '.join(section.configs)})")
        from .body import guest_items
        from .guestreads import guest_view

        values = {r: v for r, v in sorted(probed.registers.items()) if v is not None and regs.carries_abi_value(r)}
        # what this host's guest saw where ONE_REG does not say it (CTR_EL0 before Linux 6.3,
        # DCZID_EL0, firmware answers), from the profile's guest view or the lab's record
        view = guest_view(profile, config)
        return Arm64Body(config, probed.sve_vls, tuple(sorted(probed.registers)), values, (),
                         {} if view is None else guest_items(view, values))

    def check(self, contract: Contract, dest: Profile, policy: Policy, stream: tuple[int, ...] | None,
              incoming: bool) -> Verdict:
        from . import judge

        return judge.check(contract, dest, policy, stream)

    def check_pair(self, source: Profile, dest: Profile, policy: Policy) -> Verdict:
        from . import judge

        return judge.check_pair(source, dest, policy)

    def realise(self, contract: Contract, profile: Profile) -> Verdict:
        from . import judge

        return judge.realise(contract, profile)

    def boot_values(self, contract: Contract, profile: Profile) -> Verdict:
        from . import judge

        return judge.boot_values(contract, profile)

    def plan_pins(self, contract: Contract, profile: Profile, verdict: Verdict, explicit: bool = False,
                  stream: tuple[int, ...] | None = None) -> list[Pin]:
        from . import pins

        return pins.plan(contract, profile, verdict, explicit, stream)

    def baseline(self, profiles: list[Profile], config: str | None,
                 hypervisors: list[Any] | None = None) -> tuple[Arm64Body, list[str]]:
        from . import baseline

        return baseline.baseline(profiles, config)

    def cpu_text(self, profile: Profile) -> str | None:
        from ...model.contract import from_profile
        from .cpus import name

        midr = from_profile(profile).body.own_cpu()[0]   # type: ignore[union-attr]
        return None if midr is None else name(midr)

    def host_report(self, contract: Contract, profile: Profile) -> dict[str, Any]:
        from . import baseline

        return baseline.host_report(contract, profile)

    def show_cpu(self, contract: Contract, cpu: str, profiles: list[Profile]) -> Contract:
        from . import cpus

        return cpus.show(contract, cpus.choose(contract, cpu, cpus.labels(profiles, contract)))

    def cpu_notes(self, contract: Contract) -> dict[str, Any]:
        from . import cpus

        shown = cpus.shown(contract)
        return ({"cpu": shown} if shown else {}) | {"older_guests": cpus.older_guests(contract)}

    def common_config(self, profiles: list[Profile]) -> str | None:
        from .judge import common_config

        return common_config(profiles)

    def qemu_rules(self) -> list[tuple[str, tuple[int, ...]]]:
        from . import cpreg

        return [(r.name, r.since) for r in cpreg.RELEASED]

    def stamp_stream(self, contract: Contract, profile: Profile) -> tuple[int, ...] | None:
        from .judge import stamp_stream

        return stamp_stream(contract, profile)

    def boot_stream(self, contract: Contract, profile: Profile) -> tuple[int, ...] | None:
        from .judge import boot_stream

        return boot_stream(contract, profile)

    def edit_definition(self, root: Any, contract: Contract, notes: list[str], cannot: list[str],
                        profile: Profile | None) -> None:
        from .definition import edit

        edit(root, contract, notes, cannot, profile)

    def probe(self, system: KvmSystem, caps: dict[str, int], missing: Missing) -> dict[str, Any]:
        from . import probe

        return probe.probe(system, caps, missing)


ARCH = Arm64()
