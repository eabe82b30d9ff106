"""The x86_64 plugin: CPU models and features as libvirt and QEMU name them, KVM PV
features, machine types."""
from __future__ import annotations

from ..base import Arch, XmlShape

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

    from ...model.contract import Contract
    from ...model.fields import Reader
    from ...model.problem import Policy, Verdict
    from ...model.profile import Profile
    from ...uapi.kvm import KvmSystem, Missing
    from .body import X86Body
    from .section import X86Kvm


class X86(Arch):
    name = "x86_64"
    machine_family = "pc-q35"
    qemu_binary = "qemu-system-x86_64"
    baseline_asks_libvirt = True
    xml = XmlShape("x86", (("cpu-model", "cpu_model"), ("pv-features", "pv_features"),
                           ("arch-capabilities", "arch_capabilities")),
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
        from ...model.problem import Policy
        from . import judge

        return judge.check(contract, profile, Policy(), incoming=False)

    def baseline(self, profiles: list[Profile], config: str | None,
                 hypervisors: list[Any] | None = None) -> tuple[X86Body, list[str]]:
        from .baseline import baseline

        return baseline(profiles, hypervisors)

    def host_report(self, contract: Contract, profile: Profile) -> dict[str, Any]:
        from .baseline import host_report

        return host_report(contract, profile)

    def verify_pin(self, conn: Any, label: str, contract: Contract) -> str | None:
        from .hypervisor_cpu import HypervisorCpu

        got = self.verify_on(contract, [HypervisorCpu(conn, label)])[label]
        if got["compare"] in ("identical", "superset"):
            return None
        return f"libvirt {got['libvirt']} says this host cannot run the contract's CPU ({got.get('reason')})"

    def verify_on(self, contract: Contract, hypervisors: list[Any]) -> dict[str, Any]:
        from .hypervisor_cpu import cpu_xml

        body: X86Body = contract.body  # type: ignore[assignment]
        xml = cpu_xml(body.cpu_model, body.features)
        out = {}
        for h in hypervisors:
            verdict, reason = h.compare(xml)
            out[h.label] = {"libvirt": ".".join(map(str, h.version())), "compare": verdict,
                            **({"reason": reason} if reason else {})}
        return out

    def domain_contract(self, root: Any, host: Profile) -> Contract:
        from .definition import domain_contract

        return domain_contract(root, host)

    def edit_definition(self, root: Any, contract: Contract, notes: list[str], cannot: list[str],
                        profile: Profile | None) -> None:
        from .definition import edit

        edit(root, contract, notes, cannot, profile)

    def probe(self, system: KvmSystem, caps: dict[str, int], missing: Missing) -> dict[str, Any]:
        from . import probe

        return probe.probe(system, caps, missing)

    #: any named model gets QEMU's KVM PV defaults: the probe records qemu64's expansion
    qemu_named_model = "qemu64"

    def probe_libvirt(self, conn: Any, domcaps: Any, unavailable: list[dict[str, Any]]) -> dict[str, Any]:
        from . import probe

        return probe.probe_libvirt(conn, domcaps, unavailable)


ARCH = X86()
