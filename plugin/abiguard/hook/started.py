"""``started begin``: QEMU is up (for an incoming migration: before any RAM arrives) and
libvirt stops the start when this fails. For a KVM VM that carries abiguard's register
pins, the preload library's record must show it loaded the very pins the definition names
and wrote them on every vCPU; otherwise the VM would run under a contract it does not
honour (the library never loaded: AppArmor denied it, the file is missing or unreadable),
and the start is refused with one line. Everything else exits 0: a VM without pins, a
TCG VM (no KVM, nothing to pin), a definition this cannot read.
"""
from __future__ import annotations

import os

from .. import state
from ..errors import Refusal

#: where libvirt keeps a running domain's private directory (QEMU's HOME): domain-ID-NAME
LIBVIRT_QEMU_LIB = "/var/lib/libvirt/qemu"
#: a record larger than this is not one the library wrote
MAX_RECORD = 64 * 1024


def started(dom: str, op: str, data: bytes, deadline: float | None = None) -> int:
    from ..model.names import CONTRACT_NS
    from ..preload import ENV_PINS
    from .protocol import PINNED_MARK

    if PINNED_MARK not in data:
        if CONTRACT_NS.encode() not in data:
            # an unpinned VM: what it booted with, recorded for its moves (abiguard.hook.seen)
            from ..xml import domain
            from .seen import observe

            observe(dom, domain.parse(data, f"domain XML of '{dom}'", deadline), data)
        return 0                 # no pins in the definition: nothing of abiguard's to check
    from ..errors import InputError
    from ..xml import domain

    try:
        facts = domain.parse(data, f"domain XML of '{dom}'", deadline)
    except InputError as e:
        state.log(f"{op} {dom}: not checked, the live XML does not parse ({e})")
        return 0
    pins = facts.qemu_env.get(ENV_PINS)
    if pins is None or not pins[0] or facts.domain_type != "kvm":
        return 0
    expected = pins[0]
    vcpus = _vcpus(facts)
    record, where = read_record(facts.domain_id)
    problem = record_problem(record, expected, vcpus)
    if problem is not None:
        state.log(f"{op} {dom}: REFUSE pins not in effect: {problem} ({where})")
        raise Refusal(f"abiguard: refusing to run '{dom}': its register pins did not take effect in QEMU "
                      f"({problem}); the guest would not see its contract's values. See the domain's log "
                      f"in /var/log/libvirt/qemu and {state.LOG}")
    state.log(f"{op} {dom}: ALLOW, pins in effect on {vcpus} vCPU(s) ({where})")
    return 0


def _vcpus(facts: object) -> int:
    """The vCPUs QEMU starts with: <vcpu current='N'> if given, else the <vcpu> count."""
    for text in (getattr(facts, "vcpu_current", None), getattr(facts, "vcpu", None)):
        if text is not None and text.isdigit() and 0 < int(text) <= 4096:
            return int(text)
    return 1


def read_record(domain_id: str | None) -> tuple[str | None, str]:
    """The library's record for the running domain ``domain_id``: (text or None, where)."""
    from ..preload import RECORD_NAME

    base = state.rooted(LIBVIRT_QEMU_LIB)
    if domain_id is None or not domain_id.isdigit():
        return None, "no domain id in the live XML"
    prefix = f"domain-{domain_id}-"
    try:
        dirs = [d for d in os.listdir(base) if d.startswith(prefix)]
    except OSError as e:
        return None, f"{base}: {e.strerror}"
    if len(dirs) != 1:
        return None, f"{base}/{prefix}*: {len(dirs)} directories"
    path = os.path.join(base, dirs[0], RECORD_NAME)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECORD + 1)
    except OSError as e:
        return None, f"{path}: {e.strerror}"
    if len(data) > MAX_RECORD:
        return None, f"{path}: larger than {MAX_RECORD} bytes"
    return data.decode("utf-8", "replace"), path


def record_problem(record: str | None, expected: str, vcpus: int) -> str | None:
    """Why the record does not show ``expected`` pinned on ``vcpus`` vCPUs (None: it does)."""
    if record is None:
        return "the pinning library left no record: it did not load"
    lines = [ln for ln in record.split("\n") if ln]
    head = lines[0].split(" ", 5) if lines else []
    if len(head) != 6 or head[:3] != ["abiguard-pin", "1", "pid"] or head[4] != "loaded":
        return "the pinning library's record is not one it writes"
    count, _, loaded = head[5].partition(": ")
    if loaded != expected:
        return "the pinning library loaded other pins than the definition names"
    fds: set[str] = set()
    shaped: set[str] = set()
    for line in lines[1:]:
        words = line.split()
        # vcpu fd F reg_list K of N hidden H: the register list QEMU was given (hide= items)
        if len(words) == 9 and words[:2] == ["vcpu", "fd"] and words[3] == "reg_list" and words[5] == "of" \
                and words[7] == "hidden" and all(w.isdigit() for w in (words[2], words[4], words[6], words[8])):
            shaped.add(words[2])
            continue
        # vcpu fd F pinned K kept E of N
        if len(words) != 9 or words[0] != "vcpu" or words[3] != "pinned" or words[5] != "kept" or words[7] != "of":
            return "the pinning library's record is not one it writes"
        if not all(w.isdigit() for w in (words[4], words[6], words[8])) or words[8] != count \
                or int(words[4]) + int(words[6]) != int(words[8]):
            return f"a vCPU has {words[4]} of {words[8]} pins written"
        fds.add(words[2])          # QEMU inits each vCPU again at every reset: count vCPUs, not lines
    if len(fds) < vcpus:
        return f"pins written on {len(fds)} of {vcpus} vCPU(s)"
    if "hide=" in expected and len(shaped & fds) < vcpus:
        return f"the register list was shaped on {len(shaped & fds)} of {vcpus} vCPU(s)"
    return None
