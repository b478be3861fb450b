"""Tiny synthetic nnU-Net raw datasets with an unlabeled pool, for tests and smoke runs.

Each case is one noisy ellipse (2D PNG) or ellipsoid (3D NIfTI) with label 1, plus a bright look-alike
distractor that is *not* labelled, at low contrast, so that a briefly trained base model is imperfect.
Layout: ``imagesTr/labelsTr`` (labeled), ``imagesUnlabeled/labelsUnlabeled`` (pool with hidden labels),
``imagesTs/labelsTs`` (test), ``dataset.json``. Deterministic from ``seed``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _case(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    size = np.array(shape, float)

    def ellipsoid() -> np.ndarray:
        center = rng.uniform(0.3, 0.7, len(shape)) * size
        radii = rng.uniform(0.12, 0.25, len(shape)) * size
        return (((grid - center) / radii) ** 2).sum(-1) <= 1

    label = ellipsoid()
    distractor = ellipsoid() & ~label
    image = rng.normal(100, 20, shape) + label * rng.uniform(25, 45) + distractor * rng.uniform(15, 35)
    return image.astype(np.float32), label.astype(np.uint8)


def make_tiny_dataset(
    raw_root: str | Path,
    dataset_id: int,
    dim: int = 2,
    num_labeled: int = 8,
    num_unlabeled: int = 6,
    num_test: int = 3,
    seed: int = 0,
) -> Path:
    """Writes ``Dataset<id>_Tiny<dim>D`` under ``raw_root`` and returns its folder."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_Tiny{dim}D"
    shape = (32, 32) if dim == 2 else (16, 24, 24)
    ending = ".png" if dim == 2 else ".nii.gz"
    splits = {"Tr": num_labeled, "Unlabeled": num_unlabeled, "Ts": num_test}
    index = 0
    for split, count in splits.items():
        (folder / f"images{split}").mkdir(parents=True, exist_ok=True)
        (folder / f"labels{split}").mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            image, label = _case(shape, rng)
            name = f"tiny_{index:03d}"
            index += 1
            if dim == 2:
                from PIL import Image

                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"images{split}" / f"{name}_0000.png")
                Image.fromarray(label).save(folder / f"labels{split}" / f"{name}.png")
            else:
                for array, path in ((image, folder / f"images{split}" / f"{name}_0000.nii.gz"),
                                    (label, folder / f"labels{split}" / f"{name}.nii.gz")):
                    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    dataset_json = {
        "channel_names": {"0": "synthetic"},
        "labels": {"background": 0, "target": 1},
        "numTraining": num_labeled,
        "file_ending": ending,
        "name": f"Tiny{dim}D",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder
