"""Typed models of what crosses abiguard's boundary: host profiles (:mod:`.profile`),
contracts (:mod:`.contract`), hop stamps (:mod:`.stamp`), checked member by member on the
way in (:mod:`.fields`)."""
