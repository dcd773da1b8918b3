"""The output of a reporting command: a table, NAME.png and NAME.json, the JSON on request.

`isometry theory` and `isometry diagnose` print a table (on stderr when --json puts the
document on stdout), write a figure and a strict-JSON document (`isometry._io`) into their
--out folder, and say where.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from isometry._io import json_text, write_json

__all__ = ["table_stream", "write_report"]


def table_stream(echo_json: bool) -> TextIO:
    """Where the table goes: stderr when the JSON goes to stdout, else stdout."""
    return sys.stderr if echo_json else sys.stdout


def write_report(out: str, name: str, figure, doc: dict, echo_json: bool) -> tuple[str, str]:
    """Writes `out`/NAME.png and `out`/NAME.json (strict JSON), and echoes the JSON on stdout.

    Args:
      out: the output folder (created if missing).
      name: the files' stem ("theory", "diagnosis").
      figure: a matplotlib figure.
      doc: the document (NaN/Inf become null with the reason beside them).
      echo_json: also print the document on stdout (the same text as the file).

    Returns:
      The paths of the PNG and the JSON file.
    """
    # matplotlib is heavy: imported when a report is written, so `isometry --help` starts fast
    from isometry import plot

    os.makedirs(out, exist_ok=True)
    png = plot.save(figure, os.path.join(out, f"{name}.png"))
    path = write_json(os.path.join(out, f"{name}.json"), doc, indent=1)
    print(f"wrote {png} and {path}", file=sys.stderr)
    if echo_json:
        sys.stdout.write(json_text(doc) + "\n")
    return png, path
