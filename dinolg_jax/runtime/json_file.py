"""The one JSON writer of the project: atomic, sorted, process 0 only; and the reader of
the run files it writes.

Summaries, configs and per-study results all go through :func:`write_json`. A run's
``summary.json`` or ``config.json`` is read back through :func:`read_json_dict`, which
treats a file cut short by a crash (or otherwise not a JSON object) as absent, so the run
resumes instead of stopping on a JSON traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as JSON atomically from process 0 (temp file, then rename).

    Sorted keys, one-space indent, a final newline; values JSON does not know (paths,
    numpy scalars) are written as ``str``. Other processes write nothing.
    """
    if jax.process_index() != 0:
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def read_json_dict(path: str | os.PathLike) -> dict[str, Any] | None:
    """``path``'s JSON object, or None when it is missing, unreadable, truncated, corrupt
    or not an object (a summary or config cut by a crash is treated as absent)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return data if isinstance(data, dict) else None
