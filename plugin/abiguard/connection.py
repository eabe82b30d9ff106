"""libvirt connections for the commands that read or edit domains (``pin``, ``status``).
Never imported on the hook's path: the hook must not call back into libvirt."""
from __future__ import annotations

from typing import Any

from .errors import UsageError


def connect(uri: str | None, readonly: bool = False) -> Any:
    """A libvirt connection; UsageError naming the URI when libvirt does not answer."""
    import libvirt

    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    try:
        return libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise UsageError(f"cannot connect to libvirt at {uri or 'the default URI'}: {e}") from None
