"""Writing files so that a crash or a kill never leaves a half-written one in place."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], object], *, fsync: bool = True) -> None:
    """Write a file under a temporary name beside ``path`` (``write(f)``), optionally fsync,
    then rename it into place. ``fsync=False`` for caches, where a file lost to a power cut is
    merely recomputed and a sync per small file would dominate."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
