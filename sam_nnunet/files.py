"""Publishing a file whole: written under a temporary name, flushed to disk, then renamed into place.

A rename is atomic, so a reader (or a ``--c`` after ``kill -9``) sees the old file or the new one, never half of one.
Without ``fsync`` a power loss can still leave the new name pointing at data that never reached the disk, so the data
is synced before the rename and the folder after it.
"""
from __future__ import annotations

import json
import os
from typing import Union

PathLike = Union[str, os.PathLike]


def publish(partial: PathLike, target: PathLike) -> None:
    """Sync ``partial`` to disk and rename it to ``target`` (same folder), then sync the folder."""
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, target)
    folder = os.open(os.path.dirname(os.path.abspath(target)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_json(path: PathLike, data) -> None:
    """``data`` as JSON at ``path``, published whole (:func:`publish`)."""
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        json.dump(data, f, indent=2)
    publish(partial, path)
