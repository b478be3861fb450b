"""``nnUNetv2_rndpo_clean``: list a dataset's proposal caches and remove, when asked, those no model refers to.

Proposal caches (``<rndpo cache>/{proposals,labeled_proposals}/<key>/``) of every fold, base model and
setting coexist, and no run deletes one. This command is the only thing that does, and only when asked
(``--delete``). It keeps a cache

- named by a pairs file under ``$nnUNet_results/<dataset>/`` (``rndpo_pairs.json`` of a preference run,
  finished or running past its mining, ``rndpo_pairs_<mining>.json`` of ``nnUNetv2_rndpo_mine``);
- that is incomplete and was written to in the last hour (a proposals command may be filling it);

and removes nothing while a preference run of the dataset holds a fold lock (it may be making proposals).
Temporary files older than an hour (``.<name>.<pid>.<random>.tmp``, left by a killed writer) are removed
too. The preprocessed pool and test set are shared by all folds and never removed here.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from nnunetv2_rndpo.fold_lock import LOCK_FILE, describe_lock, lock_is_live, read_lock
from nnunetv2_rndpo.paths import rndpo_cache_root

CACHE_KINDS = ("proposals", "labeled_proposals")
RECENT_SECONDS = 3600


@dataclass
class CacheEntry:
    """One proposal cache folder and why it is kept (empty ``kept_because``: removable)."""

    folder: Path
    complete: bool
    num_cases: int
    size_bytes: int
    origin: dict
    kept_because: list[str] = field(default_factory=list)


def referenced_caches(results_dataset: Path) -> dict[str, list[Path]]:
    """``{cache folder name (key): [pairs files naming it]}`` from every ``rndpo_pairs*.json`` of the dataset."""
    references: dict[str, list[Path]] = {}
    for pairs_file in sorted(results_dataset.rglob("rndpo_pairs*.json")) if results_dataset.is_dir() else []:
        try:
            proposals = json.loads(pairs_file.read_text()).get("proposals")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue
        if proposals:
            references.setdefault(Path(proposals).name, []).append(pairs_file)
    return references


def live_runs(results_dataset: Path) -> list[str]:
    """The preference runs of the dataset that hold a fold lock, described."""
    runs = []
    for lock in sorted(results_dataset.glob(f"*/fold_*/{LOCK_FILE}")) if results_dataset.is_dir() else []:
        info = read_lock(lock)
        if info is None or lock_is_live(info):
            runs.append(f"{lock.parent}: {describe_lock(info) if info else 'lock being written'}")
    return runs


def list_caches(cache_root: Path, results_dataset: Path, now: float | None = None) -> list[CacheEntry]:
    """Every proposal cache under ``<dataset>/rndpo/*/`` with what keeps it."""
    now = time.time() if now is None else now
    references = referenced_caches(results_dataset)
    entries = []
    for folder in sorted(cache_root.glob("*/*/*")):
        if not folder.is_dir() or folder.parent.name not in CACHE_KINDS:
            continue
        files = [p for p in folder.iterdir() if p.is_file()]
        manifest = folder / "manifest.json"
        document = json.loads(manifest.read_text()) if manifest.is_file() else {}
        entry = CacheEntry(folder, manifest.is_file(), sum(p.suffix == ".npz" for p in files),
                           sum(p.stat().st_size for p in files), document.get("origin", {}))
        entry.kept_because += [f"named by {p}" for p in references.get(folder.name, [])]
        newest = max((p.stat().st_mtime for p in files), default=folder.stat().st_mtime)
        if not entry.complete and now - newest < RECENT_SECONDS:
            entry.kept_because.append("incomplete and written to in the last hour (a run may be filling it)")
        entries.append(entry)
    return entries


def clean(preprocessed_root: Path, results_root: Path, dataset_name: str, delete: bool = False,
          log=print) -> list[Path]:
    """Lists the dataset's proposal caches; with ``delete``, removes those nothing keeps.

    Returns:
        The folders removed (with ``delete``) or that would be removed (without).

    Raises:
        RuntimeError: ``delete`` while a preference run of the dataset holds a fold lock.
    """
    cache_root = rndpo_cache_root(preprocessed_root, dataset_name)
    results_dataset = Path(results_root) / dataset_name
    entries = list_caches(cache_root, results_dataset)
    removable = [e for e in entries if not e.kept_because]
    for e in entries:
        origin = e.origin.get("base_checkpoint", "base model not recorded")
        state = "complete" if e.complete else "incomplete"
        verdict = "keep: " + "; ".join(e.kept_because) if e.kept_because else "removable"
        log(f"{e.folder.relative_to(cache_root)}  {state}, {e.num_cases} cases, {e.size_bytes / 1e6:.1f} MB, "
            f"from {origin}\n    {verdict}")
    leftovers = [p for p in cache_root.rglob(".*.tmp") if time.time() - p.stat().st_mtime > RECENT_SECONDS]
    if leftovers:
        log(f"{len(leftovers)} temporary files older than an hour, left by killed writers: removable")
    removable_paths = [e.folder for e in removable] + leftovers
    total = sum(e.size_bytes for e in removable) / 1e6
    if not delete:
        log(f"{len(entries)} proposal caches, {len(removable)} removable ({total:.1f} MB). Nothing was deleted; "
            "add --delete to remove the removable ones.")
        return removable_paths
    running = live_runs(results_dataset)
    if running:
        raise RuntimeError("preference runs of this dataset are in progress and may be making proposals; clean up "
                           "after they end:\n  " + "\n  ".join(running))
    for e in removable:
        shutil.rmtree(e.folder)
    for p in leftovers:
        p.unlink(missing_ok=True)
    log(f"removed {len(removable)} proposal caches ({total:.1f} MB) and {len(leftovers)} temporary files; kept "
        f"{len(entries) - len(removable)}")
    return removable_paths
