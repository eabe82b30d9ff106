"""Architecture plugins: each arch is one package with an :class:`~.base.Arch` object
named ``ARCH``; the engine, the models and the commands reach arch knowledge only
through :func:`get` (the models, one layer below, through the table this module fills:
:mod:`abiguard.model.arches`). Imported lazily, so the hook loads only the arch it judges."""
from __future__ import annotations

from ..model import arches as _models

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from .base import Arch

#: host machine name (``uname -m``, libvirt's arch) -> plugin module
PLUGINS: dict[str, str] = {"aarch64": "abiguard.arch.arm64", "x86_64": "abiguard.arch.x86"}
NAMES: tuple[str, ...] = tuple(PLUGINS)

_loaded: dict[str, Arch] = {}


def get(name: str) -> Arch:
    """The plugin for an arch name; KeyError for one abiguard does not know."""
    arch = _loaded.get(name)
    if arch is None:
        # __import__, not importlib: importlib pulls in warnings, a cost on the hook's path
        module = __import__(PLUGINS[name], fromlist=["ARCH"])
        arch = _loaded[name] = module.ARCH
    return arch


_models.install(NAMES, get)
