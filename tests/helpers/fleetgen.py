"""Synthetic fleets made of real profiles: many hosts pointing at a few digests.

Distinct profiles beyond the bundled ones are real profiles rebuilt: the same document
with another ``host.kernel_version`` (a distribution kernel rebuilt with the same
configuration) and its digest made anew, so every one passes the same validation a probed
profile does and the engine judges real register data.
"""
from __future__ import annotations

import glob
import json
import os

from abiguard.builtin import builtin_profiles
from abiguard.fleet.record import HostRecord
from abiguard.fleet.store import Store
from abiguard.model import profile

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X86 = sorted(glob.glob(os.path.join(TESTS, "data", "x86", "profiles", "*.json")))
ARM64 = builtin_profiles()


def real_docs(paths: list[str] | None = None) -> list[dict]:
    return [profile.load(p).doc for p in (paths if paths is not None else ARM64 + X86)]


def rebuilt(doc: dict, n: int) -> dict:
    """The same host profile with another kernel build string (and so another digest)."""
    if n == 0:
        return doc
    new = json.loads(json.dumps(doc))
    new["host"]["kernel_version"] = f"{doc['host'].get('kernel_version', '')} (rebuild {n})"
    new["digest"] = profile.digest_of(new)
    return new


def distinct(count: int, paths: list[str] | None = None) -> list[dict]:
    """``count`` distinct profile documents, cycling through the real ones."""
    docs = real_docs(paths)
    return [rebuilt(docs[i % len(docs)], i // len(docs)) for i in range(count)]


def make_fleet(root: str, hosts: int, docs: list[dict], uri: str | None = None) -> list[str]:
    """``hosts`` hosts (host00000, ...) over ``docs``, round robin. The first host of each
    profile publishes it the way a host does (Store.publish); the rest get their records
    written directly, which is what their own publish would write (the same profile)."""
    store = Store(root)
    names = [f"host{i:05d}" for i in range(hosts)]
    for i, name in enumerate(names):
        doc = docs[i % len(docs)]
        if i < len(docs):
            store.publish(doc, f"doc {i}", name, uri)
        else:
            rec = HostRecord(name, doc["digest"], None, "2026-12-01T00:00:00Z", uri, "publish")
            with open(store.record_path(name), "w") as f:
                f.write(rec.render())
    return names
