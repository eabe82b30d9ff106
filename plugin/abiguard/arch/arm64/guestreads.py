"""What a guest reads where it is not what KVM_GET_ONE_REG reports, and which of those reads a
host can pin apart from the register stream.

One place answers what a host's guest sees (:func:`guest_view`): the guest view the probe
recorded in the profile (issue 23's one-page guest, ``kvm.aarch64.configs.<cfg>.guest_view``,
:class:`.section.GuestView`), and, only where a profile has none (probed by an abiguard
before guest views, or the guest run failed), the arm64 lab's observation bundled in
``data/guest-reads/arm64.json`` -- a partial view (the registers it names), said so in
``GuestView.partial``.

CTR_EL0 before Linux 6.3 is the case this exists for: KVM sets HCR_EL2.TID2 only since
"KVM: arm64: Normalize cache configuration", so an older guest reads the CPU's own
register while ONE_REG gives the sanitised one (IDC set). A host that traps the read and
takes a written CTR_EL0 (Linux >= 6.11) shows a VM born on the older kernel the value its
guest read, while QEMU's stream keeps the one the older kernel's KVM insists on at restore
(abiguard_pin.so translates: ``0xID=0xG/0xS``)."""
from __future__ import annotations

from . import regs

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

    from ...model.profile import Profile
    from .section import GuestView

#: the registers a guest may read apart from ONE_REG, and from which kernel on KVM traps the
#: read and gives the VM's own value
TRAPPED_SINCE: dict[int, tuple[int, ...]] = {regs.CTR_EL0_ID: regs.CACHE_WRITABLE_SINCE}
#: the registers whose guest value a host that traps the read may pin apart from the
#: stream's value (the library's G/S form; the arm64 lab's seed case showed it for CTR_EL0)
PINNED_APART = frozenset(TRAPPED_SINCE)
_records: list[Any] = []


def _bundled() -> list[Any]:
    if not _records:
        import json
        import os

        path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "data", "guest-reads", "arm64.json")
        with open(path, "rb") as f:
            _records.extend(json.loads(f.read())["records"])
    return _records


def guest_view(profile: Profile, config: str) -> GuestView | None:
    """What a guest of this configuration sees on this host: the profile's guest view;
    where it has none, the bundled lab record for this kernel, CPU and ONE_REG values (a
    partial view of the registers this kernel does not trap, ``partial`` saying so); None
    where neither knows."""
    from .judge import section_of
    from .section import GuestView

    section = section_of(profile)
    probed = section.usable(config) if section is not None else None
    if probed is None or probed.registers is None:
        return None
    if probed.guest is not None:
        return probed.guest
    registers = probed.registers
    kernel = regs.kernel_version(profile.kernel_release)
    untrapped = {rid for rid, since in TRAPPED_SINCE.items() if kernel < since and rid in registers}
    if not untrapped:
        return None
    midr = registers.get(regs.MIDR_EL1_ID)
    seen: dict[int, int] = {}
    for rec in _bundled():
        if rec["kernel_release"] != profile.kernel_release or midr is None or int(rec["midr"], 16) != midr:
            continue
        if any(registers.get(int(k, 16)) != int(v, 16) for k, v in rec["one_reg"].items()):
            continue
        seen.update({int(k, 16): int(v, 16) for k, v in rec["guest"].items() if int(k, 16) in untrapped})
    if not seen:
        return None
    names = ", ".join(regs.reg_name(r) for r in sorted(seen))
    return GuestView(seen, {}, {}, 0, partial=f"{names} from the arm64 lab's record of {profile.kernel_release} "
                     "(data/guest-reads/arm64.json): its profile has no guest view")


def passes(view: GuestView, registers: dict[int, int | None], key: int | str) -> bool:
    """This host gives the guest its ONE_REG value for the register: its guest read that
    value; or, for a CCSIDR of a cache this host's own CLIDR does not describe (its guest
    had no reason to read it), the guest read every CCSIDR it did read as ONE_REG says --
    this KVM gives the guest the VM's cache description (it traps the reads, Linux >= 6.3),
    so a contract's CLIDR that describes the cache shows the guest the stream's CCSIDR."""
    if not isinstance(key, int) or key in view.faults:
        return False
    own = registers.get(key)
    if own is None:
        return False
    if key in view.registers:
        return view.registers[key] == own
    if regs.kind_of(key) != "ccsidr" or view.partial:
        return False
    read = [k for k in view.registers if regs.kind_of(k) == "ccsidr"]
    return bool(read) and all(view.registers[k] == registers.get(k) for k in read)
