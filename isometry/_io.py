"""Files the toolkit writes are complete or absent: atomic writes, strict JSON.

`atomic_write` writes to a temp file in the target's folder, fsyncs and `os.replace`s it, so
a crash (kill -9 included) leaves either the old file or the new one, never half of one. The
file gets the permissions of an ordinary new file (0666 less the umask: 0644 usually), not
the temp file's 0600.

`to_python` turns numpy/JAX values into Python numbers and lists (non-finite kept, for records
held in memory); `jsonable` is the one converter to strict JSON (strict JSON has no NaN/Infinity): numpy and
JAX values become Python numbers and lists, NaN/±Inf become null, and in a dict the reason is
written beside the value: `{"loss": NaN}` → `{"loss": null, "loss_nonfinite": "nan"}`.
`write_json` writes `jsonable(obj)` atomically; `json_line` gives the same text for one line
of a JSON-lines file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

import numpy as np

__all__ = ["atomic_write", "write_json", "jsonable", "json_text", "to_python", "file_mode",
           "NONFINITE_SUFFIX"]

#: `jsonable` writes the reason for a null beside it under the key `KEY + NONFINITE_SUFFIX`.
NONFINITE_SUFFIX = "_nonfinite"


def file_mode() -> int:
    """Permissions of an ordinary new file: 0666 less the process umask (0644 usually)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, data: bytes) -> str:
    """Writes `data` to `path` via a temp file in the same folder, fsync and `os.replace`."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _nonfinite_reason(value: Any) -> str | None:
    """Why `jsonable(value)` holds nulls that were numbers: "nan", "inf", "-inf" or a count."""
    if isinstance(value, (str, bytes, bool, dict)) or value is None:
        return None
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    if a.ndim == 0:
        return "nan" if np.isnan(a) else ("inf" if a > 0 else "-inf")
    kinds = sorted({"nan" if np.isnan(v) else ("inf" if v > 0 else "-inf") for v in a[bad]})
    return f"{int(bad.sum())} of {a.size} values non-finite ({', '.join(kinds)}), written as null"


def to_python(value: Any) -> Any:
    """A numpy/JAX scalar or array as a Python number or (nested) list; NaN/Inf stay floats.

    >>> to_python(np.float32(0.5)), to_python(np.array([[1, 2]])), to_python(np.nan)
    (0.5, [[1, 2]], nan)
    """
    return np.asarray(value).tolist()


def jsonable(obj: Any) -> Any:
    """`obj` with numpy/JAX scalars and arrays as Python numbers and lists, NaN/±Inf as None
    (with `KEY_nonfinite` beside each such dict entry saying what it was)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            k = str(k)
            out[k] = jsonable(v)
            reason = None if isinstance(v, (dict, list, tuple)) and not _is_numeric_list(v) \
                else _nonfinite_reason(v)
            if reason is not None and not k.endswith(NONFINITE_SUFFIX) and k + NONFINITE_SUFFIX not in obj:
                out[k + NONFINITE_SUFFIX] = reason
        return out
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return jsonable(to_python(obj))
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _is_numeric_list(v) -> bool:
    return isinstance(v, (list, tuple)) and all(
        isinstance(e, (int, float)) or (isinstance(e, (list, tuple)) and _is_numeric_list(e))
        for e in v)


def json_text(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of `jsonable(obj)` (raises on anything that is not JSON)."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> str:
    """Writes `jsonable(obj)` as strict JSON to `path`, atomically."""
    return atomic_write(path, json_text(obj, indent).encode())
