#!/usr/bin/env python3
"""Time of ``check`` for one pair and of ``baseline`` for fleets of 10, 1,000 and 10,000
host profiles (drawn from the bundled real arm64 profiles).

    .venv/bin/python tests/bench/bench_verdict.py

Reports the engine on profiles already in memory (what the goal "10,000 in under 1 s"
measures) and, separately, the whole command with every profile read from its own file.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time

from benchutil import HERE, median_ms  # noqa: E402  (puts the checkout on sys.path)

from abiguard.builtin import builtin_profiles  # noqa: E402
from abiguard.engine import baseline, verdict  # noqa: E402
from abiguard.model import contract, profile  # noqa: E402


def fleet_files(tmp: str, n: int, docs: list) -> list[str]:
    """n files, each a host that probed itself: same content per kind of host, own meta."""
    rng = random.Random(n)
    paths = []
    for i in range(n):
        doc = dict(rng.choice(docs).doc)
        doc["meta"] = dict(doc["meta"], hostname=f"host{i:05d}")
        path = os.path.join(tmp, f"host{i:05d}.json")
        with open(path, "w") as f:
            f.write(profile.render(doc))
        paths.append(path)
    return paths


def main() -> int:
    paths = [p for p in builtin_profiles() if p.endswith("-arm64.json")]   # the four kernels, -cpu max
    docs = [profile.load(p) for p in paths]
    src, dst = docs[1], docs[3]                                          # 6.1 -> 7.2
    sealed = contract.from_profile(src)
    print(f"check one pair (6.1 -> 7.2, engine):        {median_ms(lambda: verdict.check(sealed, dst), 200):8.2f} ms")
    cli = [sys.executable, "-m", "abiguard"]
    env = dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "..", "plugin"))
    t = median_ms(lambda: subprocess.run(cli + ["check", "--from", paths[1], "--to", paths[3]],
                                         capture_output=True, env=env, timeout=60), 10)
    print(f"abiguard check one pair (whole command):    {t:8.2f} ms")
    rng = random.Random(1)
    for n in (10, 1000, 10000):
        fleet = [rng.choice(docs) for _ in range(n)]
        t = median_ms(lambda fleet=fleet: baseline.compute(fleet), 3)
        print(f"baseline over {n:>6} profiles (engine):      {t:8.2f} ms")
    with tempfile.TemporaryDirectory(prefix="abiguard-bench-") as tmp:
        for n in (10, 1000):
            files = fleet_files(tmp, n, docs)
            t0 = time.perf_counter()
            cp = subprocess.run(cli + ["baseline", *files, "-o", os.path.join(tmp, "fleet.json")],
                                capture_output=True, env=env, timeout=3600)
            assert cp.returncode == 0, cp.stderr
            print(f"abiguard baseline, {n:>6} files (whole command): {(time.perf_counter() - t0) * 1000:8.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
