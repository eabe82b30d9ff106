"""Domain XML: the hook's reader and splice (:mod:`.domain`), a VM's contract and stamp as
the hook trusts them (:mod:`.vm`), the contract's XML form (:mod:`.contract`) and the
definition edits ``abiguard pin`` makes (:mod:`.edit`). The names of the namespaces
abiguard owns: :mod:`abiguard.model.names`."""
