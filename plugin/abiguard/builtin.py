"""The real host profiles shipped with abiguard (measured by its arm64 lab): the main
job's default input (``abiguard matrix``) and the tests' fixtures."""
from __future__ import annotations

import os

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def builtin_profiles() -> list[str]:
    """Paths of the bundled arm64 profiles, sorted."""
    here = os.path.join(DATA, "arm64")
    return sorted(os.path.join(here, f) for f in os.listdir(here) if f.endswith(".json"))
