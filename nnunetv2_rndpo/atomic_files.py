"""Files a killed process cannot leave half-written, and the reader of the one file that grows line by line.

Every file RN-DPO writes whole goes through :func:`atomic_write`: a reader sees the old file or the whole new
one, never a truncated one. The metrics log ``rndpo_metrics.jsonl`` is appended to instead, so a kill can cut
its last line; :func:`read_jsonl` is the one reader of it and skips that line. A file that several processes
read, change and write back (a study's ``results.json``) is changed under :func:`exclusive_lock`. This module
imports nothing of the package, so writing or reading a file costs no import of the pool or of nnU-Net.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
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


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per line; a line that does not parse (the last one of a killed writer) is skipped."""
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


@contextlib.contextmanager
def exclusive_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """Holds an exclusive ``flock`` on ``path`` (created if missing, never removed) for the ``with`` block.

    A second process blocks until the first leaves the block; with ``wait=False`` it does not block and the
    block gets False (the lock is another process's: do the work elsewhere), else True. The kernel releases
    the lock of a killed process, so a kill never leaves it held. For read-modify-write cycles of a shared
    file, and for claiming a piece of shared work, on a local file system (``flock`` may not lock across
    hosts on NFS).
    """
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
