"""Claiming a fold folder before a preference run writes to it: one run per fold, a finished fold kept.

- :class:`FoldLock`: ``fold_X/rndpo.lock`` (pid, host, start time, command), created atomically when the
  preference phase starts and removed when the run ends or fails. A second run of the same dataset,
  configuration, trainer and fold stops with a message naming the first; a lock left by a process that no
  longer runs on this host (killed with ``kill -9``, a crashed node's job restarted here) is taken over with a
  warning.
- :func:`refuse_finished_fold`: a fresh run (without ``--c``) into a fold that holds ``checkpoint_final.pth``
  stops before anything in the folder is written, unless ``overwrite_finished_fold`` is set.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = "rndpo.lock"
FINISHED_CHECKPOINT = "checkpoint_final.pth"
# a lock file that cannot be parsed is being written right now, unless it is older than this
UNREADABLE_LOCK_GRACE_SECONDS = 60


class FoldLockedError(RuntimeError):
    """Another run holds the fold's lock."""


class FinishedFoldError(RuntimeError):
    """A fresh run would overwrite a finished model."""


def read_lock(path: Path) -> dict | None:
    """The lock's ``{pid, host, started, command}``, or None if there is none or it cannot be parsed."""
    try:
        info = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return info if isinstance(info, dict) and {"pid", "host"} <= set(info) else None


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def lock_is_live(info: dict) -> bool:
    """Whether the lock's process may still run: alive on this host, or on another host (not checkable)."""
    return info["host"] != socket.gethostname() or _pid_running(int(info["pid"]))


def describe_lock(info: dict) -> str:
    return (f"pid {info['pid']} on host {info['host']} since {info.get('started', '?')} "
            f"(command: {info.get('command', '?')})")


class FoldLock:
    """``<fold folder>/rndpo.lock``, held by this process between :meth:`acquire` and :meth:`release`."""

    def __init__(self, fold_folder: str | os.PathLike):
        self.path = Path(fold_folder) / LOCK_FILE
        self.held = False

    def acquire(self, log=print) -> None:
        """Creates the lock file, whole: of two runs starting at once exactly one gets it.

        The lock is written to a file of this process's own and then hard-linked to ``rndpo.lock`` (which fails
        if it exists), so another run never sees a lock without its holder. Where the file system has no hard
        links it is created with ``O_EXCL`` and written, and a run that reads it in between is told the lock is
        being written.

        Raises:
            FoldLockedError: another live run holds it; the message names that run and what to do.
        """
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
        for _ in range(3):
            try:
                self._create(json.dumps(info))
            except FileExistsError:
                self._take_over_if_stale(log)
                continue
            self.held = True
            return
        raise FoldLockedError(f"could not take the lock {self.path}: other runs keep creating it")

    def _create(self, text: str) -> None:
        """Makes ``self.path`` hold ``text``; FileExistsError if it exists. The process's own file is named like
        atomic_files' temporaries (``.<name>.<host>.<pid>.tmp``), so one left by a killed run reads as one."""
        own = self.path.with_name(f".{self.path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
        own.write_text(text)
        try:
            os.link(own, self.path)  # FileExistsError propagates: another run holds the fold
            return
        except FileExistsError:
            raise
        except OSError:  # no hard links on this file system: O_EXCL below
            pass
        finally:
            own.unlink(missing_ok=True)
        descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(descriptor, "w") as f:
            f.write(text)

    def _take_over_if_stale(self, log) -> None:
        other = read_lock(self.path)
        if other is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return  # released meanwhile: try again
            if age < UNREADABLE_LOCK_GRACE_SECONDS:
                raise FoldLockedError(f"another run is starting in this fold right now ({self.path} is being "
                                      "written); wait for it, or for it to fail, and try again")
        elif lock_is_live(other):
            raise FoldLockedError(
                f"Another run is training this fold: {describe_lock(other)}. Two runs of one fold would write one "
                f"log, checkpoints and metrics file together. Wait for it to finish (then nnUNetv2_train ... --c "
                f"continues it after raising num_epochs), train another fold or configuration, or, if that process "
                f"is no longer running{'' if other['host'] == socket.gethostname() else ' (it is on another host)'}, "
                f"delete {self.path} and start again.")
        # stale: move it aside (atomic, so of two runs taking it over only one gets this file) and check that
        # what was moved is the stale lock, not one that a faster run created meanwhile
        aside = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = read_lock(aside)
        if moved != other:
            try:
                os.link(aside, self.path)  # put the fresh lock back (fails if yet another run created one)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            holder = describe_lock(moved or {'pid': '?', 'host': '?'})
            raise FoldLockedError(f"another run took this fold just now: {holder}")
        aside.unlink(missing_ok=True)
        what = describe_lock(other) if other else "an unreadable lock older than a minute"
        log(f"RN-DPO WARNING: taking over the lock {self.path} of a run that no longer runs: {what}")

    def release(self) -> None:
        """Removes the lock if this process holds it (safe to call twice, and at exit)."""
        if self.held:
            info = read_lock(self.path)
            if info is not None and info["pid"] == os.getpid() and info["host"] == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self.held = False


def refuse_finished_fold(fold_folder: str | os.PathLike, trainer_name: str, overwrite: bool) -> None:
    """Stops a fresh run (without ``--c``) into a fold that holds a finished model.

    nnU-Net itself (2.8.1) starts such a run and overwrites the model's checkpoints as it trains; a
    preference run that then failed had already replaced the
    fold's ``rndpo_config.json`` and reference, so the folder described a run that never trained. Here the
    folder is left as it is unless ``overwrite_finished_fold`` is set.

    Raises:
        FinishedFoldError: ``checkpoint_final.pth`` exists and ``overwrite`` is False.
    """
    final = Path(fold_folder) / FINISHED_CHECKPOINT
    if final.is_file() and not overwrite:
        raise FinishedFoldError(
            f"{final} exists: this fold of {trainer_name} has finished, and a fresh run would overwrite it. "
            "To train it further, raise num_epochs in the file named by $nnUNet_rndpo_config and add --c; to "
            f"train it again from the base model, move or delete {Path(fold_folder)} (or set "
            '"overwrite_finished_fold": true); to keep both, train a named variant (docs/howto.md, '
            '"Several RN-DPO variants side by side").')
