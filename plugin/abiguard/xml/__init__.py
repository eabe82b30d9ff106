"""Domain XML: the namespaces abiguard owns, the hook's reader and splice
(:mod:`.domain`), the contract's XML form (:mod:`.contract`) and the definition edits
``abiguard pin`` makes (:mod:`.edit`)."""
