"""abiguard: keep a VM's guest ABI identical across live migration and rollback.

The package's front door also wires together two layers that cannot import each other:
the models (:mod:`abiguard.model`) read an arch's profile section and contract body
through the arch plugins (:mod:`abiguard.arch`), which sit above them. Importing
:mod:`abiguard.arch` here, before any other module of the package runs, fills the models'
table of plugins (:mod:`abiguard.model.arches`); each plugin still loads on first use.
"""
from . import arch as _arch  # noqa: F401 (fills abiguard.model.arches)
from .version import __version__ as __version__
