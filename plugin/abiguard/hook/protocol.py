"""The qemu hook's protocol: argv, stdin, one handler per judged operation, exit codes.

Fail closed on what it judges: any error refuses with one ``abiguard:`` line, the
traceback in the log. Never hang: stdin is read with a size cap and a deadline, nothing
touches the network, nothing calls back into libvirt (the daemon is waiting for us).
Imports stay lazy: this runs on the migration path.
"""
from __future__ import annotations

import os
import sys
import time

from ..errors import Refusal
from . import state

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_STDIN = 4 * 1024 * 1024
STDIN_DEADLINE = 10.0


def read_stdin(fd: int = 0) -> bytes:
    import select

    chunks: list[bytes] = []
    size = 0
    deadline = time.monotonic() + STDIN_DEADLINE
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise Refusal("abiguard: timed out reading the domain XML from libvirt")
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_STDIN:
            raise Refusal(f"abiguard: domain XML larger than {MAX_STDIN} bytes: refusing it")
        chunks.append(chunk)


def _incoming(dom: str, op: str, data: bytes) -> int:
    from .incoming import incoming

    return incoming(dom, op, data)


def _prepare(dom: str, op: str, data: bytes) -> int:
    from .prepare import prepare

    return prepare(dom, op, data)


#: (operation, sub-operation) -> handler; every other operation is not judged
HANDLERS: dict[tuple[str, str], Callable[[str, str, bytes], int]] = {
    ("migrate", "begin"): _incoming, ("restore", "begin"): _incoming, ("prepare", "begin"): _prepare,
}


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print("abiguard: usage: qemu-hook DOMAIN OPERATION SUBOPERATION [EXTRA] (run by libvirt)",
              file=sys.stderr)
        return 2
    dom, op, sub = argv[1], argv[2], argv[3]
    handler = HANDLERS.get((op, sub))
    try:
        data = read_stdin()
        if handler is None:
            return 0
        return handler(dom, op, data)
    except Refusal as e:
        print(str(e), file=sys.stderr)
        return 1
    except Exception as e:  # fail closed
        import traceback

        from ..errors import AbiguardError
        if isinstance(e, AbiguardError):
            state.log(f"{op} {dom}: REFUSE {e}")
            print(f"{e}", file=sys.stderr)
            return 1
        state.log(f"{op} {dom}: internal error\n" + traceback.format_exc())
        print(f"abiguard: internal error ({type(e).__name__}: {e}); refusing {op} of '{dom}'; "
              f"details in {state.LOG}", file=sys.stderr)
        return 1
