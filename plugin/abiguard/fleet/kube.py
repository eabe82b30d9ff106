"""``fleet labels``: the same answer as Placement's traits, as Kubernetes node labels for
KubeVirt: ``abiguard.io/contract-<id>: "true"`` on each node that realises the contract.

Two forms ``kubectl`` applies:

- YAML (default): one partial Node per host, for
  ``kubectl apply --server-side --field-manager=abiguard -f labels.yaml``. Server-side
  apply tracks which labels the ``abiguard`` field manager set, so a label this output no
  longer lists is removed by the next apply, and labels other managers set are never
  touched.
- ``--kubectl``: ``kubectl label node NAME KEY=true ... KEY- ... --overwrite`` lines,
  setting the labels that hold and removing (``KEY-``) the fleet's other contract labels.

A KubeVirt VM then asks for its contract in ``spec.template.spec.nodeSelector``
(``abiguard.io/contract-<id>: "true"``) or as a required node affinity; the migration
target pod of a live migration gets the same constraints, so the VM only ever moves to
labelled nodes.

Every name written is checked (node names as DNS-1123 subdomains, label names by
:mod:`abiguard.fleet.names`), and the kubectl lines are quoted as shell words anyway.
"""
from __future__ import annotations

from typing import Any

from . import names


def node_labels(realised: dict[str, list[str]], contracts: list[str]) -> tuple[dict[str, dict[str, bool]], list[str]]:
    """node -> label -> holds, for every fleet contract; and the hosts skipped (their
    names are not Kubernetes node names)."""
    out: dict[str, dict[str, bool]] = {}
    skipped = []
    for host, digests in sorted(realised.items()):
        if not names.is_node_name(host):
            skipped.append(host)
            continue
        have = set(digests)
        out[host] = {names.label(d): d in have for d in sorted(contracts)}
    return out, skipped


def yaml(nodes: dict[str, dict[str, bool]]) -> str:
    docs = []
    for node, labels in nodes.items():
        held = [k for k, v in labels.items() if v]
        body = "".join(f'    {k}: "true"\n' for k in held) if held else ""
        docs.append(f"apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n"
                    + ("  labels:\n" + body if held else "  labels: {}\n"))
    return "---\n".join(docs)


def kubectl(nodes: dict[str, dict[str, bool]]) -> list[str]:
    import shlex

    out = []
    for node, labels in nodes.items():
        if not labels:
            continue
        words = [f"{k}=true" if v else f"{k}-" for k, v in labels.items()]
        out.append(" ".join(shlex.quote(w) for w in ["kubectl", "label", "node", node, *words, "--overwrite"]))
    return out


def to_json(nodes: dict[str, dict[str, bool]], skipped: list[str]) -> dict[str, Any]:
    return {"nodes": {n: sorted(k for k, v in labels.items() if v) for n, labels in nodes.items()},
            "skipped": skipped}
