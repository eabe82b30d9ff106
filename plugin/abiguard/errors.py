"""abiguard's exception tree and the exit codes it maps to.

::

    AbiguardError                 exit 3 unless a subclass says otherwise
     +-- UsageError               exit 2   a command line that cannot work
     +-- InputError               exit 2   a file or XML that is not what it claims to be
     |    +-- ProfileError                 a host profile failed validation
     |    +-- ContractError                a contract failed validation
     +-- EnforceError (enforce)   exit 1   a pin this host cannot realise

``str(err)`` is the single ``abiguard: ...`` line a ``virsh`` user sees. A refused move is
not an exception: it is a :class:`abiguard.verdict.Verdict` with problems (exit 1).
"""
from __future__ import annotations


class AbiguardError(Exception):
    """Root of every error abiguard raises on purpose."""

    exit_code = 3

    def __str__(self) -> str:
        return "abiguard: " + " ".join(str(a) for a in self.args)


class UsageError(AbiguardError):
    exit_code = 2


class InputError(AbiguardError):
    """Input that failed validation.

    :param source: where the input came from (a path, ``domain XML``, ``stdin``)
    :param detail: what is wrong and, where possible, what to do
    """

    exit_code = 2

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(source, detail)
        self.source = source
        self.detail = detail

    def __str__(self) -> str:
        return f"abiguard: {self.source}: {self.detail}"


class ProfileError(InputError):
    pass


class ContractError(InputError):
    pass
