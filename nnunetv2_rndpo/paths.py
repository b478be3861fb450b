"""Where RN-DPO keeps its caches: one function, so every module and script builds the same path."""

from __future__ import annotations

import os
from pathlib import Path


def rndpo_cache_folder(preprocessed_root: str | os.PathLike, dataset_name: str, plans_name: str,
                       configuration: str) -> Path:
    """``<preprocessed_root>/<dataset_name>/rndpo/<plans_name>_<configuration>``.

    A sibling of nnU-Net's own preprocessed folders (nnU-Net asserts one file type there). It holds the
    preprocessed unlabeled pool (``pool/``) and test set (``test/``), shared by every fold and base model,
    and the proposal caches (``proposals/<key>/``, ``labeled_proposals/<key>/``), one per base model and
    proposal settings; they coexist and are removed only by ``nnUNetv2_rndpo_clean``.
    """
    return Path(preprocessed_root) / dataset_name / "rndpo" / f"{plans_name}_{configuration}"
