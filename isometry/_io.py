"""Files the toolkit writes are complete or absent: atomic writes, strict JSON.

`atomic_write` writes to a temp file in the target's folder, fsyncs and `os.replace`s it, so
a crash (kill -9 included) leaves either the old file or the new one, never half of one.
`write_json` does that for JSON, with NaN/±Inf written as null (strict JSON has no NaN).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

__all__ = ["atomic_write", "write_json", "jsonable"]


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
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def jsonable(obj: Any) -> Any:
    """`obj` with numpy/JAX scalars and arrays as Python numbers and lists, NaN/±Inf as None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> str:
    """Writes `jsonable(obj)` as strict JSON to `path`, atomically."""
    text = json.dumps(jsonable(obj), indent=indent, allow_nan=False)
    return atomic_write(path, text.encode())
