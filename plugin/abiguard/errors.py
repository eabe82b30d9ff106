"""abiguard's exception tree and the exit codes it maps to, in one place.

::

    AbiguardError                 exit 3 unless a subclass says otherwise
     +-- UsageError               exit 2   a command line that cannot work
     +-- InputError               exit 2   a file or XML that is not what it claims to be
     |    +-- ProfileError                 a host profile failed validation
     |    +-- ContractError                a contract failed validation
     +-- Refusal                  exit 1   the hook (or a command) says no: one line
          +-- EnforceError                 a pin this host cannot realise

``str(err)`` is the single ``abiguard: ...`` line a ``virsh`` user reads. A refused move
found by the engine is not an exception: it is a :class:`abiguard.model.problem.Verdict`
with problems, which a command turns into exit 1 (:data:`EXIT_REFUSE`).

This module is imported on the hook's path: standard library only, nothing at import time.
"""
from __future__ import annotations

#: exit codes of the command line and the hook
EXIT_OK = 0
EXIT_REFUSE = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

#: the longest line abiguard prints for one error; untrusted text is cut well before this
MAX_LINE = 2000


def printable(text: object, limit: int = 120) -> str:
    """Untrusted text made safe to echo inside one line: control characters (a newline
    would forge another ``abiguard:`` line, an escape sequence would redraw the terminal)
    written as escapes, and cut to ``limit`` characters."""
    s = str(text)
    out = []
    for c in s[:limit]:
        if c == "\\":
            out.append("\\\\")
        elif c.isprintable():
            out.append(c)
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
    return "".join(out) + ("..." if len(s) > limit else "")


class AbiguardError(Exception):
    """Root of every error abiguard raises on purpose."""

    exit_code = EXIT_INTERNAL

    def __str__(self) -> str:
        return ("abiguard: " + " ".join(str(a) for a in self.args))[:MAX_LINE]


class UsageError(AbiguardError):
    exit_code = EXIT_USAGE


class InputError(AbiguardError):
    """Input that failed validation.

    :param source: where the input came from (a path, ``domain XML``, ``stdin``)
    :param detail: what is wrong and, where possible, what to do
    """

    exit_code = EXIT_USAGE

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(source, detail)
        self.source = source
        self.detail = detail

    def __str__(self) -> str:
        return f"abiguard: {self.source}: {self.detail}"[:MAX_LINE]


class ProfileError(InputError):
    pass


class ContractError(InputError):
    pass


class Refusal(AbiguardError):
    """The answer is no; ``str()`` is the whole line the user reads (it starts with
    ``abiguard:``). Raised by the hook and by commands that refuse."""

    exit_code = EXIT_REFUSE

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line

    def __str__(self) -> str:
        return self.line[:MAX_LINE]


class EnforceError(Refusal):
    """A pin the host cannot realise, or the library cannot write: refused at
    configuration time, so no VM ever starts half-pinned.

    :param host: the host the pins were planned for
    :param problems: one line per reason (the first is shown, the count of the rest)
    """

    def __init__(self, host: str, problems: list[str]) -> None:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"abiguard: cannot enforce the contract on {host}: {problems[0]}{more}")
        self.host = host
        self.problems = problems
