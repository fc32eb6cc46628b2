"""The fixed-width Markdown tables every CLI verb prints at its end (and READMEs show)."""

from __future__ import annotations


def render_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with padded columns: readable in a terminal and in a README."""
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in rows])
