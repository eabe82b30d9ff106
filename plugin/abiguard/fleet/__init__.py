"""The fleet: every host's profile in one directory, and the answers abiguard gives over it.

A fleet directory (``[fleet] dir`` in abiguard.toml, or ``--fleet DIR``; any shared
filesystem) holds ``profiles/sha256-<hex>.json``, each host profile once, named by its own
digest, and ``hosts/<name>.json``, one small record per host (:mod:`.record`). Hosts
publish into it (:mod:`.store`; the daemon hook and ``abiguard probe`` do it by
themselves, :mod:`.publish`), or an operator pulls over SSH (:mod:`.pull`).

Over it: the VMs read through each host's libvirt (:mod:`.vms`), judged once per distinct
(contract, register stream, profile) (:mod:`.judge`) for ``fleet status``
(:mod:`.status`), ``fleet baseline`` (:mod:`.baseline`), ``fleet matrix`` (:mod:`.matrix`,
drawn by :mod:`.render`) and ``fleet whatif`` (:mod:`.whatif`); and the answers handed to
schedulers: OpenStack Placement traits (:mod:`.placement`) and Kubernetes node labels
(:mod:`.kube`), both named by :mod:`.names`.

Nothing here is on the qemu hook's path: the hook never imports this package.
"""
