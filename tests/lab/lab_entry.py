"""Program run inside the arm64 lab's initramfs (see armlab.sh), on a real arm64 kernel.

/init runs ``python3.11 -I -S -u /opt/abiguard/lab_entry.py MODE``; the result is one JSON
object printed between the markers in 1000-character lines.

Modes:

``probe``
    this kernel's host profile (``abiguard probe --kvm-only``).
``replay``
    ground truth for the verdict engine: this kernel's own profile, and for every source
    profile in /inputs and each of its vCPU configurations, what this kernel's KVM does
    when QEMU's incoming migration replays the source's register stream on a fresh VM:
    QEMU sends every register of KVM_GET_REG_LIST except core and SVE registers, fails on
    a stream register its own list lacks, then writes every value with KVM_SET_ONE_REG in
    ascending id order (its cpreg list is sorted) and fails if any write failed. Where
    every write of another host's stream was taken, the guest then runs on that vCPU
    (``guest_view``: what a guest migrated in reads, :mod:`abiguard.arch.arm64.guest`).
"""
import glob
import json
import os
import sys

BEGIN, END = "=====ARMLAB-JSON-BEGIN=====", "=====ARMLAB-JSON-END====="
sys.path.insert(0, "/opt/abiguard")

from abiguard.arch.arm64 import (
    guest,  # noqa: E402
    regs as arm64,  # noqa: E402
)
from abiguard.probe import host as probe  # noqa: E402
from abiguard.uapi import kvm  # noqa: E402


def emit(obj):
    text = json.dumps(obj, sort_keys=True)
    print(BEGIN)
    for i in range(0, len(text), 1000):
        print(text[i:i + 1000])
    print(END)


def replay_config(system, target, source_config, offered, other_host=True):
    features = source_config["features"]
    result = {"features": features}
    lacking = [f for f in features if f not in offered]
    if lacking:
        result["init"] = "feature not offered: " + ",".join(lacking)
        return result
    stream = sorted(int(r, 16) for r in source_config.get("registers", {}))
    with system.create_vm(0) as vm, vm.create_vcpu(0) as vcpu:
        try:
            vcpu.arm_init(target, features)
        except OSError as e:
            result["init"] = kvm.errno_name(e.errno)
            return result
        result["init"] = "ok"
        if "SVE" in features:
            try:
                vcpu.set_one_reg(kvm.ARM_SVE_VLS, int(source_config["sve_vls"], 16))
                result["sve_vls"] = "accepted"
            except (OSError, KeyError) as e:
                result["sve_vls"] = kvm.errno_name(e.errno) if isinstance(e, OSError) else "absent"
            vcpu.arm_finalize()
        own = vcpu.reg_list()
        own_set = set(own)
        result["unknown_on_destination"] = ["%#x" % r for r in stream if r not in own_set]
        stream_set = set(stream)
        result["missing_from_stream"] = {
            "%#x" % r: ("%#x" % vcpu.get_one_reg(r)) if r not in arm64.VOLATILE_REGS else None
            for r in own if r not in stream_set and kvm.arm64_coproc(r) not in arm64.NOT_MIGRATED_COPROCS}
        refused = {}
        accepted = 0
        values = source_config["registers"]
        for reg_id in stream:
            if reg_id not in own_set:
                continue
            recorded = values["%#x" % reg_id]
            # null: a value that moves with time; any current one is as good
            value = vcpu.get_one_reg(reg_id) if recorded is None else int(recorded, 16)
            try:
                vcpu.set_one_reg(reg_id, value)
                accepted += 1
            except OSError as e:
                refused["%#x" % reg_id] = kvm.errno_name(e.errno)
        result["writes_accepted"] = accepted
        result["writes_refused"] = refused
        if other_host and not refused and not result["unknown_on_destination"]:
            # the move real KVM takes: what its guest reads now is the move's other half
            try:
                result["guest_view"] = guest.run(system, vm, vcpu, features)
            except (OSError, kvm.GuestStop) as e:
                result["guest_view"] = None
                result["guest_error"] = str(e)
    return result


def replay(inputs="/inputs"):
    own = probe.probe_host(with_stack=False)
    out = {"profile": own, "replays": {}}
    caps = (own.get("kvm") or {}).get("caps", {})
    offered = [f for f, cap in kvm.ARM_FEATURE_CAP.items() if caps.get(cap)]
    with kvm.KvmSystem() as system:
        with system.create_vm(0) as vm:
            target = vm.arm_preferred_target()
        for path in sorted(glob.glob(os.path.join(inputs, "*.json"))):
            name = os.path.basename(path)[:-len(".json")]
            with open(path) as f:
                source = json.load(f)
            configs = source["kvm"]["aarch64"].get("configs", {})
            out["replays"][name] = {
                "source_digest": source["digest"],
                "configs": {c: replay_config(system, target, configs[c], offered,
                                             source["digest"] != own["digest"]) for c in sorted(configs)},
            }
    return out


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "probe"
    if mode == "probe":
        emit(probe.probe_host(with_stack=False))
    elif mode == "replay":
        emit(replay())
    else:
        emit({"error": "unknown mode %r" % mode})
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
