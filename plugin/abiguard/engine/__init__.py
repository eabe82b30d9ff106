"""The engine: verdicts (:mod:`.verdict`), fleet baselines (:mod:`.baseline`) and the
rendering of register pins (:mod:`.pins`). Arch knowledge comes from :mod:`abiguard.arch`."""
