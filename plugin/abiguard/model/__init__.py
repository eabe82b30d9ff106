"""Typed models of what crosses abiguard's boundary: host profiles (:mod:`.profile`, with
:mod:`.stack`), contracts (:mod:`.contract`), hop stamps (:mod:`.stamp`), abiguard.toml
(:mod:`.config`), fleet addresses (:mod:`.address`), checked member by member on the way in
(:mod:`.fields`); and the vocabulary the layers above share: problems and verdicts
(:mod:`.problem`), register pins (:mod:`.pins`), XML and environment names (:mod:`.names`).

The lowest layer but one: the arch plugins sit above it, and the models reach them through
the table :mod:`abiguard.arch` fills (:mod:`.arches`)."""
