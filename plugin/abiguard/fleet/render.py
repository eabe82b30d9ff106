"""``fleet matrix --svg``: the fleet's who-can-go-where as one SVG picture.

One row and one column per profile group (:mod:`abiguard.fleet.matrix`), so a fleet of
1,000 hosts and a dozen kernels is a dozen squares a side; each row is labelled with its
kernel and host count, each cell coloured by its state and carrying a ``<title>`` (the
tooltip a browser shows on hover) that names both groups and, for a refused cell, the
first reason. Below the grid, a legend and the hosts of each group.

Every text comes from profiles and host records, so all of it is escaped as XML text or
attribute values; nothing from the input becomes markup.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

if TYPE_CHECKING:
    from .matrix import Group

#: state -> (fill colour, legend text)
STYLE = {"keeps": ("#2e7d32", "keeps: exactly the same guest ABI"),
         "pin first": ("#f9a825", "pin first: after pinning to a contract both realise (abiguard baseline + pin)"),
         "cannot": ("#c62828", "cannot: no pin helps (hover for the first reason)"),
         "same": ("#9e9e9e", "same profile")}
CELL = 24
GAP = 2
LABEL_WIDTH = 360
HEADER = 40
LINE = 18
#: host names listed per group below the grid; the rest are counted
NAMES_SHOWN = 8


def _text(x: int, y: int, text: str, attrs: str = "") -> str:
    return f'<text x="{x}" y="{y}"{attrs}>{escape(text)}</text>'


def svg(gs: list[Group], table: dict[tuple[str, str], dict[str, Any]], title: str) -> str:
    n = len(gs)
    grid = n * (CELL + GAP)
    top = HEADER + LINE
    legend_y = top + grid + 2 * LINE
    hosts_y = legend_y + (len(STYLE) + 2) * LINE
    width = max(LABEL_WIDTH + grid + 40, 900)
    height = hosts_y + (n + 1) * LINE + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f"<title>{escape(title)}</title>",
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
           _text(10, 20, title, ' font-size="15" font-weight="bold"'),
           _text(10, HEADER, "from (row) \u2192 to (column); a VM booted with QEMU's defaults on the row's hosts")]
    for j, g in enumerate(gs):
        x = LABEL_WIDTH + j * (CELL + GAP) + CELL // 2
        out.append(f'<g class="column"><title>{escape(g.label)}</title>'
                   + _text(x, top - 4, g.key, ' text-anchor="middle" font-size="9"') + "</g>")
    for i, s in enumerate(gs):
        y = top + i * (CELL + GAP)
        out.append(f'<g class="row" data-group={quoteattr(s.key)}><title>{escape(s.label)}</title>'
                   + _text(10, y + CELL - 8, s.label[:60]) + "</g>")
        for j, d in enumerate(gs):
            c = table[(s.key, d.key)]
            fill = STYLE[c["state"]][0]
            tip = f"{s.key} \u2192 {d.key}: {c['state']}"
            if c["reason"]:
                tip += f": {c['reason']}"
            x = LABEL_WIDTH + j * (CELL + GAP)
            out.append(f'<rect class="cell" data-from={quoteattr(s.key)} data-to={quoteattr(d.key)} '
                       f'data-state={quoteattr(c["state"])} x="{x}" y="{y}" width="{CELL}" height="{CELL}" '
                       f'fill="{fill}"><title>{escape(tip)}</title></rect>')
    out.append(_text(10, legend_y, "Legend", ' font-weight="bold"'))
    for k, (state, (fill, text)) in enumerate(STYLE.items()):
        y = legend_y + (k + 1) * LINE
        out.append(f'<rect class="legend" data-state={quoteattr(state)} x="10" y="{y - 12}" width="14" '
                   f'height="14" fill="{fill}"/>' + _text(30, y, text))
    out.append(_text(10, hosts_y, "Hosts of each group", ' font-weight="bold"'))
    for i, g in enumerate(gs):
        names = ", ".join(g.hosts[:NAMES_SHOWN])
        if len(g.hosts) > NAMES_SHOWN:
            names += f" and {len(g.hosts) - NAMES_SHOWN} more"
        out.append(_text(10, hosts_y + (i + 1) * LINE, f"{g.key}: {names}"[:200]))
    out.append("</svg>")
    return "\n".join(out) + "\n"
