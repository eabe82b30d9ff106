"""abiguard's version: what ``abiguard --version`` prints and what a sealed contract and a
probed profile record (``meta``)."""
__version__ = "0.1.0"
