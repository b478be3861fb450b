"""Atomic file writing: a reader sees the old file or the whole new one, never a truncated one.

Every file RN-DPO writes goes through :func:`atomic_write`; it imports nothing of the package, so writing a
file costs no import of the pool or of nnU-Net.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np


def atomic_write(path: Path, write) -> None:
    """Calls ``write(binary_file)`` on a temporary file beside ``path``, then renames it to ``path``.

    An interrupted write never leaves a readable, truncated file, and the temporary name is unique to the
    process (``.<name>.<pid>.<random>.tmp``), so concurrent writers of one file (two folds preprocessing the
    shared pool) never write into each other's temporary file: the last rename wins with a whole file.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as f:
            write(f)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_save(path: Path, array: np.ndarray) -> None:
    """Saves ``array`` as .npy through :func:`atomic_write`."""
    atomic_write(path, lambda f: np.save(f, array))


def atomic_write_text(path: Path, text: str) -> None:
    """Writes a text file through :func:`atomic_write`."""
    atomic_write(path, lambda f: f.write(text.encode()))
