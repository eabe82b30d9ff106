"""Compare the verdict engine with what real arm64 kernels did (the lab's replay matrix)."""
from __future__ import annotations

import glob
import json
import os
from typing import Any, NamedTuple

from abiguard.engine import verdict
from abiguard.model import contract
from abiguard.model.profile import Profile


def _view_json(view: Any) -> dict[str, Any]:
    return {"registers": {hex(k): hex(v) for k, v in view.registers.items()},
            "firmware": {k: hex(v) for k, v in view.firmware.items()},
            "faults": {(hex(k) if isinstance(k, int) else k): hex(v) for k, v in view.faults.items()}}


class PairResult(NamedTuple):
    source: str
    destination: str
    config: str
    real_fails_on: frozenset[str]   #: register ids (or "init"/"sve_vls") real KVM/QEMU failed on
    engine_allows: bool
    engine_names: frozenset[str]    #: register ids (or "config") the engine refused on
    widens: bool                    #: the engine saw registers the destination adds

    @property
    def real_ok(self) -> bool:
        return not self.real_fails_on

    @property
    def agrees(self) -> bool:
        if self.real_ok:
            return self.engine_allows
        return not self.engine_allows and bool(self.engine_names & self.real_fails_on)


def load_dir(path: str) -> dict[str, Any]:
    out = {}
    for f in sorted(glob.glob(os.path.join(path, "*.json"))):
        with open(f) as fh:
            out[os.path.basename(f)[:-5]] = json.load(fh)
    return out


def real_failures(replay: dict[str, Any], source_view: dict[str, Any] | None = None) -> frozenset[str]:
    """What real KVM failed on, and -- where it took the whole stream and its guest ran
    after (``guest_view``) -- every register and firmware call the guest now reads
    otherwise than the source's guest did (``source_view``): a move is real only if the
    guest keeps its view."""
    if replay.get("init") != "ok":
        return frozenset({"config"})
    fails = set(replay.get("unknown_on_destination", [])) | set(replay.get("writes_refused", {}))
    if replay.get("sve_vls") not in (None, "accepted"):
        fails.add("0x606000000015ffff")
    if "guest_view" in replay and not fails:
        after = replay["guest_view"]
        if after is None or source_view is None:
            fails.add("guest view")
        else:
            fails |= guest_view_changes(source_view, after)
    return frozenset(fails)


def guest_view_changes(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    """The register ids and call keys whose answer (a value or a trap) differs."""
    out = set()
    for part in ("registers", "firmware", "faults"):
        a, b = before.get(part, {}), after.get(part, {})
        out |= {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
    return out


def compare(profiles: dict[str, Any], groundtruth: dict[str, Any]) -> list[PairResult]:
    """``profiles``: name -> Profile, or the profile's JSON document."""
    profiles = {n: p if isinstance(p, Profile) else Profile.from_json(p, n) for n, p in profiles.items()}
    results = []
    for dest_name, gt in sorted(groundtruth.items()):
        dest = profiles[dest_name]
        for src_name, rep in sorted(gt["replays"].items()):
            for config, replay in sorted(rep["configs"].items()):
                c = contract.from_profile(profiles[src_name], config)
                v = verdict.check(c, dest, verdict.Policy(allow_widening=True))
                strict = verdict.check(c, dest, verdict.Policy(allow_widening=False))
                # the replay writes the stream and runs the guest with no pin: what only a pin
                # keeps (the guest's CTR_EL0 shown apart from the stream) is a problem for it
                names = frozenset("config" if p.register == "vCPU configuration"
                                  else (f"{p.reg_id:#x}" if p.reg_id is not None else p.register)
                                  for p in v.problems + v.unpinned)
                view = profiles[src_name].arch_section().configs[config].guest  # type: ignore[union-attr]
                seen = None if view is None else _view_json(view)
                results.append(PairResult(src_name, dest_name, config, real_failures(replay, seen),
                                          v.allow and not v.unpinned, names,
                                          any(p.kind == "widen" for p in strict.problems)))
    return results
