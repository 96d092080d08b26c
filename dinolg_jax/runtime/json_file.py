"""The one JSON writer of the project: atomic, sorted, process 0 only.

Summaries, configs and per-study results all go through :func:`write_json`.
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
