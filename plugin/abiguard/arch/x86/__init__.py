"""The x86_64 plugin: CPU models and features as libvirt and QEMU name them, KVM PV
features, machine types."""
from __future__ import annotations

from ..base import Arch, XmlShape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ...engine.problem import Policy, Verdict
    from ...model.contract import Contract
    from ...model.fields import Reader
    from ...model.profile import Profile
    from ...probe.host import Missing
    from ...probe.kvm import KvmSystem
    from .body import X86Body
    from .section import X86Kvm


class X86(Arch):
    name = "x86_64"
    machine_family = "pc-q35"
    qemu_binary = "qemu-system-x86_64"
    xml = XmlShape("x86", (("cpu-model", "cpu_model"), ("pv-features", "pv_features")),
                   maps=(("feature", "features", "name", "policy"),))

    def section_from_json(self, r: Reader, doc: dict[str, Any], where: str) -> X86Kvm:
        from . import section

        return section.from_json(r, doc, where)

    def section_to_view(self, s: Any) -> Any:
        from . import section

        return section.to_view(s)

    def section_from_view(self, view: Any) -> X86Kvm:
        from . import section

        return section.from_view(view)

    def body_from_json(self, r: Reader, doc: dict[str, Any], where: str) -> X86Body:
        from . import body

        return body.from_json(r, doc, where)

    def contract_body(self, profile: Profile, config: str | None) -> X86Body:
        from .judge import contract_body

        return contract_body(profile)

    def check(self, contract: Contract, dest: Profile, policy: Policy, stream: tuple[int, ...] | None,
              incoming: bool) -> Verdict:
        from . import judge

        return judge.check(contract, dest, policy, incoming)

    def realise(self, contract: Contract, profile: Profile) -> Verdict:
        """QEMU realises the pinned CPU model and features itself (libvirt passes them on the
        command line), so a start is judged like an arrival, minus libvirt's incoming drops."""
        from ...engine.problem import Policy
        from . import judge

        return judge.check(contract, profile, Policy(), incoming=False)

    def baseline(self, profiles: list[Profile], config: str | None) -> tuple[X86Body, list[str]]:
        from .baseline import baseline

        return baseline(profiles)

    def domain_contract(self, root: Any, host: Profile) -> Contract:
        from .definition import domain_contract

        return domain_contract(root, host)

    def edit_definition(self, root: Any, contract: Contract, notes: list[str], cannot: list[str],
                        profile: Profile | None) -> None:
        from .definition import edit

        edit(root, contract, notes)

    def probe(self, system: KvmSystem, caps: dict[str, int], missing: Missing) -> dict[str, Any]:
        from . import probe

        return probe.probe(system, caps, missing)


ARCH = X86()
