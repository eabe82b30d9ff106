"""The engine: verdicts (:mod:`.verdict`), fleet baselines (:mod:`.baseline`) and how an
answer reads (:mod:`.report`). Arch knowledge comes from :mod:`abiguard.arch`; what it
answers with (problems, verdicts, pins) is the models' (:mod:`abiguard.model.problem`,
:mod:`abiguard.model.pins`), which the arch plugins below it build too."""
