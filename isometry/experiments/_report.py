"""The markdown of one experiment's outputs: tables, numbers, the paper-scale section.

An experiment writes NAME.json, NAME.png and NAME.md with `isometry.plot.write_report`. The
JSON record is the single source of the numbers: the figure and the markdown are drawn from it
(never from live objects), so the PNG shows exactly the numbers the JSON holds.
"""

from __future__ import annotations

import math

__all__ = ["markdown_table", "fmt", "paper_differences", "PAPER_HEADING"]

#: The heading of the section every experiment's NAME.md ends with.
PAPER_HEADING = "## Paper scale against the paper"


def fmt(value, digits: int = 3) -> str:
    """A number for a table: `digits` significant digits, "—" for None/NaN, ints as ints."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; cells go through `fmt`."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def paper_differences(differences, scale: str | None = None) -> str:
    """The section "## Paper scale against the paper": one bullet per sentence of an
    experiment's `PAPER_DIFFERENCES` (how its `--scale paper` settings differ from the
    paper's and its authors' notebooks, and the choices the paper leaves open).

    >>> print(paper_differences(("Batch 100, as the paper.",), scale="cpu"), end="")
    ## Paper scale against the paper
    <BLANKLINE>
    This record ran at scale "cpu"; the list compares the `--scale paper` settings with the paper.
    <BLANKLINE>
    - Batch 100, as the paper.
    """
    head = [PAPER_HEADING + "\n"]
    if scale is not None and scale != "paper":
        head.append(f"This record ran at scale \"{scale}\"; the list compares the `--scale paper` "
                    f"settings with the paper.\n")
    return "\n".join(head + ["\n".join(f"- {d}" for d in differences) + "\n"])
