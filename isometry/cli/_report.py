"""The output of a reporting command: a table, NAME.png and NAME.json, the JSON on request.

`isometry theory` and `isometry diagnose` print a table (on stderr when --json puts the
document on stdout), write a figure and a strict-JSON document (`isometry._io`) into their
--out folder, and say where.
"""

from __future__ import annotations

import sys
from typing import TextIO

from isometry._io import json_text

__all__ = ["table_stream", "report"]


def table_stream(echo_json: bool) -> TextIO:
    """Where the table goes: stderr when the JSON goes to stdout, else stdout."""
    return sys.stderr if echo_json else sys.stdout


def report(out: str, name: str, figure, doc: dict, echo_json: bool) -> dict[str, str]:
    """Writes `out`/NAME.png and `out`/NAME.json (`isometry.plot.write_report`), says where on
    stderr, and echoes the JSON on stdout with `echo_json` (the same text as the file).

    Args:
      out: the output folder (created if missing).
      name: the files' stem ("theory", "diagnosis").
      figure: a matplotlib figure.
      doc: the document (NaN/Inf become null with the reason beside them).
      echo_json: also print the document on stdout.

    Returns:
      {"json": path, "png": path}.
    """
    # matplotlib is heavy: imported when a report is written, so `isometry --help` starts fast
    from isometry import plot

    paths = plot.write_report(out, name, doc, figure)
    print(f"wrote {paths['png']} and {paths['json']}", file=sys.stderr)
    if echo_json:
        sys.stdout.write(json_text(doc) + "\n")
    return paths
