"""The qemu hook's protocol: argv, stdin, one handler per judged operation, exit codes.

Only the operations in :data:`HANDLERS` are judged; the shim (:func:`abiguard.install.render`)
exits 0 for every other one before it imports anything, so no failure of abiguard can
reach a VM it does not judge. What it judges fails closed: any error refuses with one
``abiguard:`` line (the traceback goes to the log). It never hangs: stdin is read with a
size cap and a deadline that also covers parsing, nothing touches the network, nothing
calls back into libvirt (the daemon is waiting for us). Imports stay lazy: this runs on
the migration path.
"""
from __future__ import annotations

import io
import os
import sys
import time

from .. import state
from ..errors import MAX_LINE, Refusal, printable

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_STDIN = 4 * 1024 * 1024
#: reading the domain XML and parsing it must both end this many seconds after the start
DEADLINE = 10.0


def _incoming(dom: str, op: str, data: bytes, deadline: float) -> int:
    from .incoming import incoming

    return incoming(dom, op, data, deadline)


def _prepare(dom: str, op: str, data: bytes, deadline: float) -> int:
    from .prepare import prepare

    return prepare(dom, op, data, deadline)


#: (operation, sub-operation) -> handler; every other operation is not judged
def _started(dom: str, op: str, data: bytes, deadline: float) -> int:
    from .started import started

    return started(dom, op, data, deadline)


HANDLERS: dict[tuple[str, str], Callable[[str, str, bytes, float], int]] = {
    ("migrate", "begin"): _incoming, ("restore", "begin"): _incoming, ("prepare", "begin"): _prepare,
    ("started", "begin"): _started,
}
#: operations judged only for the VMs that carry abiguard's register pins: libvirt stops a
#: start whose started hook fails, so for any other VM they exit 0 whatever happens
JUDGES_SOME: frozenset[tuple[str, str]] = frozenset({("started", "begin")})
#: what marks such a VM in its definition
PINNED_MARK = b"ABIGUARD_PINS"
#: what the shim lets through to abiguard
JUDGED: frozenset[tuple[str, str]] = frozenset(HANDLERS)


def read_stdin(deadline: float, fd: int = 0, cap: int = MAX_STDIN) -> bytes:
    import select

    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise Refusal("abiguard: timed out reading the domain XML from libvirt")
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cap:
            raise Refusal(f"abiguard: domain XML larger than {cap} bytes: refusing it")
        chunks.append(chunk)


def _one_line(text: str) -> str:
    """What reaches the virsh user: one line, bounded, whatever the text held."""
    line = text.replace("\n", " ").replace("\r", " ")
    return line if len(line) <= MAX_LINE else line[:MAX_LINE - 3] + "..."


def run(argv: list[str], data: bytes | None, deadline: float | None = None) -> tuple[int, bytes, str]:
    """One judged operation: (exit code, stdout bytes, stderr text). ``data`` None: read
    it from stdin. Nothing is printed here (:func:`main` does), so tests and the fuzz
    suite drive the real protocol in-process."""
    deadline = deadline if deadline is not None else time.monotonic() + DEADLINE
    if len(argv) < 4:
        return 0, b"", ""
    dom, op, sub = printable(argv[1], 100), argv[2], argv[3]
    handler = HANDLERS.get((op, sub))
    if handler is None:
        return 0, b"", ""
    # a handler's stdout (bytes through .buffer, or text) and stderr, captured: io's C types,
    # already loaded by the interpreter, so no class is built for it on the hook's path
    out_bytes = io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", errors="surrogateescape", write_through=True)
    err = io.StringIO()
    real_stdout, real_stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    some = (op, sub) in JUDGES_SOME
    try:
        if data is None:
            data = read_stdin(deadline)
        rc = handler(dom, op, data, deadline)
    except Refusal as e:
        if some and (data is None or PINNED_MARK not in data):
            state.log(f"{op} {dom}: not checked ({e}); no pins of abiguard's in what was read: ALLOW")
            return 0, b"", ""
        return 1, b"", _one_line(str(e)) + "\n"
    except Exception as e:  # fail closed
        import traceback

        if some and (data is None or PINNED_MARK not in data):
            state.log(f"{op} {dom}: not checked, internal error; no pins of abiguard's: ALLOW\n"
                      + traceback.format_exc())
            return 0, b"", ""
        from ..errors import AbiguardError
        if isinstance(e, AbiguardError):
            state.log(f"{op} {dom}: REFUSE {e}")
            return 1, b"", _one_line(str(e)) + "\n"
        state.log(f"{op} {dom}: internal error\n" + traceback.format_exc())
        return 1, b"", _one_line(f"abiguard: internal error ({type(e).__name__}: {printable(e, 200)}); "
                                 f"refusing {op} of '{dom}'; details in {state.LOG}") + "\n"
    finally:
        sys.stdout, sys.stderr = real_stdout, real_stderr
    out.flush()
    return rc, out_bytes.getvalue(), err.getvalue()


def main(argv: list[str]) -> int:
    rc, out, err = run(argv, None)
    if out:
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
    if err:
        sys.stderr.write(err)
    return rc
