"""Invalid-case checks that must say what they expect the user to read.

Like virt-manager's ``add_invalid(..., grep=)``: a case without its expected message
cannot be written, so every refusal test asserts the words a user acts on.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def invalid(fn: Callable[..., Any], *args: Any, error: type[BaseException], grep: str, startswith: str = "",
            **kwargs: Any) -> BaseException:
    """Call ``fn`` and require it to raise ``error`` whose text holds ``grep`` (and starts
    with ``startswith``). ``grep`` is keyword-only and must not be empty."""
    if not grep:
        raise AssertionError("an invalid case must name the message it expects (grep=...)")
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert grep in text, f"expected {grep!r} in {text!r}"
    assert text.startswith(startswith), f"expected {text!r} to start with {startswith!r}"
    return info.value
