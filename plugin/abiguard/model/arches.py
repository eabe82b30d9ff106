"""The arch plugins as the models reach them.

The models sit below the arch plugins (:mod:`abiguard.arch`) and never import them, yet a
profile's ``kvm.<arch>`` section and a contract's body are read by the plugin of their
arch. :mod:`abiguard.arch` fills this table when it is imported (``abiguard/__init__.py``
imports it before any other module of the package runs): the arch names it knows and its
:func:`~abiguard.arch.get`, which loads a plugin on first use, so the hook still loads only
the arch it judges.
"""
from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    from .contract import Body
    from .fields import Reader
    from .profile import KvmSection, Profile

    class ArchModel(Protocol):
        """What the models ask of an arch plugin (:class:`abiguard.arch.base.Arch`)."""

        @property
        def machine_family(self) -> str: ...

        @property
        def carries_register_stream(self) -> bool: ...

        def section_from_json(self, r: Reader, doc: dict[str, Any], where: str) -> KvmSection: ...

        def section_to_view(self, section: KvmSection) -> Any: ...

        def section_from_view(self, view: Any) -> KvmSection: ...

        def body_from_json(self, r: Reader, doc: dict[str, Any], where: str) -> Body: ...

        def contract_body(self, profile: Profile, config: str | None) -> Body: ...

#: the arch names abiguard knows (:data:`abiguard.arch.NAMES`), in its plugin table's order
NAMES: tuple[str, ...] = ()
_get: Callable[[str], ArchModel] | None = None


def install(names: tuple[str, ...], get: Callable[[str], ArchModel]) -> None:
    """Called by :mod:`abiguard.arch` when it is imported."""
    global NAMES, _get
    NAMES, _get = names, get


def get(name: str) -> ArchModel:
    """The plugin for an arch name; KeyError for one abiguard does not know."""
    if _get is None:
        raise AssertionError("abiguard.arch was never imported, so the models have no arch plugins "
                             "(abiguard/__init__.py imports it)")
    return _get(name)
