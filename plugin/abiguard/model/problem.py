"""What the engine answers: problems, a verdict, and the policy it judged under (the arch
plugins build them, the engine and the hook read them).

Plain classes with ``__slots__`` (not dataclasses or NamedTuples: ``typing`` and
``dataclasses`` cost the hook milliseconds it does not have).
"""
from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any


class Problem:
    """One reason a move (or a start) cannot keep the guest ABI.

    :param register: register, feature or item name
    :param reg_id: the raw register id, when it is a register
    :param field: the ID-register field or feature, when one is to blame
    :param source: what the VM has
    :param destination: what the destination can accept
    :param why: why the destination cannot take it
    :param fix: what to do
    :param kind: ``refuse`` (KVM/QEMU would fail) or ``widen`` (the guest would gain)
    :param pinnable: pinning the VM to a contract both hosts realise removes it
    :param pin: a value that, written on the destination at every vCPU init
        (abiguard_pin.so), removes the problem there (a register the destination adds,
        kept off)
    """

    __slots__ = ("register", "reg_id", "field", "source", "destination", "why", "fix", "kind",
                 "pinnable", "pin")

    def __init__(self, register: str, reg_id: int | None, field: str | None, source: str,
                 destination: str, why: str, fix: str, kind: str = "refuse", pinnable: bool = False,
                 pin: int | None = None) -> None:
        self.register = register
        self.reg_id = reg_id
        self.field = field
        self.source = source
        self.destination = destination
        self.why = why
        self.fix = fix
        self.kind = kind
        self.pinnable = pinnable
        self.pin = pin

    def line(self) -> str:
        what = self.register + (f" ({self.reg_id:#x})" if self.reg_id is not None else "")
        if self.field:
            what += f" field {self.field}"
        return f"{what}: VM has {self.source}, destination {self.destination}: {self.why}; {self.fix}"

    def to_json(self) -> dict[str, Any]:
        return {"register": self.register, "reg_id": None if self.reg_id is None else f"{self.reg_id:#x}",
                "field": self.field, "source": self.source, "destination": self.destination,
                "why": self.why, "fix": self.fix, "kind": self.kind, "pinnable": self.pinnable,
                "message": self.line()}

    def __repr__(self) -> str:
        return f"Problem({self.line()!r}, kind={self.kind!r})"


class Policy:
    """How strictly to judge.

    :param allow_widening: accept a destination that adds guest-visible registers the
        VM's stream lacks (the guest would see more than it was given)
    :param qemu: the destination's QEMU version when its profile does not say (a
        KVM-only profile from the arm64 lab), such as ``(7, 2)``
    """

    __slots__ = ("allow_widening", "qemu")

    def __init__(self, allow_widening: bool = False, qemu: tuple[int, ...] | None = None) -> None:
        self.allow_widening = allow_widening
        self.qemu = qemu


class Verdict:
    """The answer for one contract on one host.

    :param problems: why not (empty: allowed)
    :param notes: what is worth knowing either way
    :param boot_pins: register id -> value the destination must write at every vCPU init
        for the guest to see the contract's value there (the host defaults differ; the
        host accepts the value): what abiguard_pin.so realises
    :param keep_off: register id -> neutral value for registers the destination adds and
        the VM never had, which a pin keeps off there whatever the widening policy
    :param hidden: registers the destination lists that abiguard_pin.so hides from QEMU's
        KVM_GET_REG_LIST, so that the VM's register stream stays its contract's (arm64)
    :param stream_values: register id -> the value QEMU reads and writes for a pin of
        ``boot_pins`` whose guest value is not the stream's (arm64 CTR_EL0: the guest is
        shown what an older kernel's guest read, the stream keeps what that kernel's KVM
        insists on); abiguard_pin.so translates between the two
    :param unpinned: what a VM with no pins (an unpinned VM, which abiguard_pin.so does not
        touch) meets besides ``problems``: the changes those pins of ``boot_pins`` prevent
        that no stream carries (arm64 CTR_EL0 shown apart from the stream)
    :param pin_notes: those of ``notes`` that say what the pins of ``unpinned`` do: true of a
        pinned VM only, so dropped with them for a VM with no pins
    """

    __slots__ = ("problems", "notes", "boot_pins", "keep_off", "by_qemu", "hidden", "stream_values", "unpinned",
                 "pin_notes")

    def __init__(self, problems: list[Problem], notes: list[str], boot_pins: dict[int, int] | None = None,
                 keep_off: dict[int, int] | None = None) -> None:
        self.problems = problems
        self.notes = notes
        self.boot_pins = boot_pins if boot_pins is not None else {}
        self.keep_off = keep_off if keep_off is not None else {}
        #: where the destination's QEMU version is unknown and the answer depends on it:
        #: (QEMU versions, the verdict there) for each released QEMU behaviour
        self.by_qemu: list[tuple[str, Verdict]] = []
        self.hidden: tuple[int, ...] = ()
        self.stream_values: dict[int, int] = {}
        self.unpinned: list[Problem] = []
        self.pin_notes: list[str] = []

    @property
    def allow(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"allow": self.allow, "verdict": "allow" if self.allow else "refuse",
                               "problems": [p.to_json() for p in self.problems], "notes": self.notes}
        if self.unpinned:     # absent where a VM with no pins meets nothing more
            doc["unpinned"] = [p.to_json() for p in self.unpinned]
        if self.by_qemu:
            doc["by_qemu"] = [{"qemu": label, **v.to_json()} for label, v in self.by_qemu]
        return doc
