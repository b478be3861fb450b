"""Session fixtures of the end-to-end tier (``-m e2e``): the tiny 2D dataset is made, planned and preprocessed,
and its base models trained, once per session instead of once per module.

A *base* is a folder with ``raw``, ``preprocessed`` and ``results`` as nnU-Net writes them. No test runs in it:
each module's fixture copies it (:func:`private_copy`) into a root of its own and points ``nnUNet_raw``,
``nnUNet_preprocessed`` and ``nnUNet_results`` there, so the proposal caches, fold folders, locks and score files
its tests write stay its own. At the end of the session each base must be byte-identical to what it was when
built: a test that wrote into one fails there.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

TINY2D_ID = 991  # Dataset991_Tiny2D, make_tiny_dataset(dim=2): the dataset of the 2D e2e modules
BASE_TRAINER = "nnUNetTrainer_rndpoSmoke"


def snapshot(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def kept_unchanged(base: Path) -> Iterator[Path]:
    """Yields ``base``; afterwards fails if any file in it was added, changed or removed."""
    before = snapshot(base)
    yield base
    after = snapshot(base)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test wrote into the shared base {base} instead of its private copy: {changed[:10]}"


def private_copy(base: Path, root: Path) -> dict:
    """Copies ``base`` (raw, preprocessed, results) into ``root``; returns the nnU-Net environment of ``root``."""
    from test_e2e_trainer import make_env

    shutil.copytree(base, root, dirs_exist_ok=True)
    return make_env(root)


@pytest.fixture(scope="session")
def tiny2d_base(tmp_path_factory) -> Iterator[Path]:
    """Dataset991_Tiny2D planned and preprocessed for ``2d``, with a base model of fold 0 (``BASE_TRAINER``)."""
    from test_e2e_trainer import prepare

    root = tmp_path_factory.mktemp("base_tiny2d")
    prepare(root, TINY2D_ID, 2, "2d")
    yield from kept_unchanged(root)


@pytest.fixture(scope="session")
def tiny2d_two_folds_base(tiny2d_base, tmp_path_factory) -> Iterator[Path]:
    """:func:`tiny2d_base` with a base model of fold 1 as well."""
    from test_e2e_trainer import run

    root = tmp_path_factory.mktemp("base_tiny2d_two_folds")
    env = private_copy(tiny2d_base, root)
    run(["nnUNetv2_train", str(TINY2D_ID), "2d", "1", "-tr", BASE_TRAINER, "-device", "cpu"], env)
    yield from kept_unchanged(root)
