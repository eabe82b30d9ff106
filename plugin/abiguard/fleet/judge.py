"""One verdict per distinct (contract, register stream, profile): the fleet's answers grow
with what differs between hosts and VMs, not with how many there are.

10,000 VMs on 1,000 hosts are typically a handful of contracts over a few dozen distinct
profiles: every VM x host question is answered from this cache, and the engine
(:func:`abiguard.engine.verdict.check`, exactly what ``abiguard check`` runs) sees each
pair once. ``checks`` counts the engine calls, so tests and the benchmark can hold the
cache to that promise.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model.contract import Contract
    from ..model.problem import Policy
    from ..model.profile import Profile


class Judgement:
    """The answer for one (contract, stream, profile): allowed, or the first reason not."""

    __slots__ = ("allow", "reason", "problems")

    def __init__(self, allow: bool, reason: str | None, problems: int) -> None:
        self.allow = allow
        self.reason = reason
        #: how many problems the engine found (the reason is the first)
        self.problems = problems

    def to_json(self) -> dict[str, object]:
        return {"allow": self.allow, "reason": self.reason, "problems": self.problems}


class Judge:
    """The engine behind a cache.

    :param policy: how strictly to judge (default: as ``abiguard check`` does)
    """

    __slots__ = ("policy", "_cache", "_streams", "checks")

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy
        self._cache: dict[tuple[str, int, str], Judgement] = {}
        #: stream -> small int: a 300-register tuple is hashed once, not on every lookup
        self._streams: dict[tuple[int, ...] | None, int] = {None: 0}
        self.checks = 0

    def stream_key(self, stream: tuple[int, ...] | None) -> int:
        return self._streams.setdefault(stream, len(self._streams))

    def judge(self, contract: Contract, dest: Profile, stream: tuple[int, ...] | None = None,
              stream_key: int | None = None) -> Judgement:
        """May a VM with this contract, carrying this register stream (None: the
        contract's own), move to (or start on, when incoming) a host of that profile?"""
        key = (contract.digest, self.stream_key(stream) if stream_key is None else stream_key, dest.digest)
        got = self._cache.get(key)
        if got is None:
            from ..engine import verdict

            self.checks += 1
            v = verdict.check(contract, dest, self.policy, stream)
            got = self._cache[key] = Judgement(v.allow, v.problems[0].line() if v.problems else None,
                                               len(v.problems))
        return got
