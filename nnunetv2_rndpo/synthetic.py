"""Synthetic nnU-Net raw datasets with an unlabeled pool: the built-in demo default and the tests' tiny sets.

Layout (as :mod:`nnunetv2_rndpo.datasets` writes it): ``imagesTr/labelsTr`` (labeled),
``imagesUnlabeled/labelsUnlabeled`` (pool with hidden labels), ``imagesTs/labelsTs`` (test), ``dataset.json``,
``rndpo_splits.json``. Everything is deterministic from ``seed``.

- :func:`make_synthetic_dataset` (the default of ``nnUNetv2_rndpo_make_dataset --synthetic`` and of the
  demo): two touching structures (an "organ", label 1, with a "lesion", label 2, sitting on its border),
  a wobbly outline, low contrast, a smooth multiplicative bias field, noise, and an unlabelled
  organ-like distractor — so that a base model trained on a few labeled cases is clearly imperfect.
- :func:`make_tiny_dataset`: one ellipse and a distractor, label 1 only; the fast tests' dataset; options make
  it region-based, with an ignore label, or with two input channels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nnunetv2_rndpo.datasets import RawDatasetWriter

SHAPES = {2: (64, 64), 3: (24, 40, 40)}


def _grid(shape: tuple[int, ...]) -> np.ndarray:
    """Voxel coordinates scaled to [0, 1) per axis, shape ``(*shape, ndim)``."""
    axes = [np.arange(s) / s for s in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1)


def _blob(grid: np.ndarray, center: np.ndarray, radii: np.ndarray, angle: float, wobble: float,
          phase: float) -> np.ndarray:
    """A rotated ellipse/ellipsoid whose outline wobbles: the boundary radius is scaled by
    1 + wobble·sin(3θ + phase), θ the angle in the last two axes. Returns a bool mask."""
    offset = grid - center
    cos, sin = np.cos(angle), np.sin(angle)
    rotated = offset.copy()
    rotated[..., -2] = cos * offset[..., -2] - sin * offset[..., -1]
    rotated[..., -1] = sin * offset[..., -2] + cos * offset[..., -1]
    theta = np.arctan2(rotated[..., -1], rotated[..., -2])
    distance = np.sqrt(((rotated / radii) ** 2).sum(-1))
    return distance <= 1 + wobble * np.sin(3 * theta + phase)


def synthetic_case(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One case of the default synthetic dataset.

    Intensity = bias · (100 + organ·c₁ + lesion·c₂ + distractor·c_d) + N(0, σ²), with contrasts
    c₁ ~ U(14, 24), c₂ ~ U(30, 42) (the lesion is brighter than the organ it sits on), c_d ~ U(12, 24)
    (the distractor looks like the organ but is not labelled), σ = 16, and a bias field
    1 + a·(linear ramp) + b·sin(low frequency) with |a|, |b| ≤ 0.2.

    Assumption: the difficulty knobs (contrast, noise, bias, distractor) were tuned so that a base model
    trained briefly on 8 labeled 2D cases reaches a test Dice clearly below 1 on CPU; they are not
    taken from a paper.

    Returns:
        ``(image float32, label uint8 in {0, 1, 2})``, both of ``shape``.
    """
    grid = _grid(shape)
    ndim = len(shape)

    def params(low: float, high: float, center_low: float = 0.3, center_high: float = 0.7):
        return (rng.uniform(center_low, center_high, ndim), rng.uniform(low, high, ndim),
                rng.uniform(0, np.pi), rng.uniform(0.0, 0.15), rng.uniform(0, 2 * np.pi))

    organ_center, organ_radii, *organ_rest = params(0.14, 0.24, 0.35, 0.65)
    organ = _blob(grid, organ_center, organ_radii, *organ_rest)
    direction = rng.normal(size=ndim)
    direction /= np.linalg.norm(direction)
    lesion_center = organ_center + direction * organ_radii * rng.uniform(0.7, 1.0)
    lesion = _blob(grid, lesion_center, rng.uniform(0.06, 0.11, ndim), rng.uniform(0, np.pi), 0.0, 0.0)
    label = np.where(lesion, 2, np.where(organ, 1, 0)).astype(np.uint8)
    distractor = np.zeros(shape, bool)
    for _ in range(20):  # a look-alike elsewhere, not touching the labelled structures
        candidate = _blob(grid, *params(0.1, 0.2, 0.15, 0.85))
        if not (candidate & (label > 0)).any():
            distractor = candidate
            break
    ramp = (grid - 0.5) @ rng.uniform(-0.4, 0.4, ndim)
    wave = np.sin(2 * np.pi * (grid @ rng.uniform(0.3, 1.0, ndim)) + rng.uniform(0, 2 * np.pi))
    bias = 1 + ramp + rng.uniform(-0.2, 0.2) * wave
    image = bias * (100 + organ * rng.uniform(14, 24) + lesion * rng.uniform(30, 42)
                    + distractor * rng.uniform(12, 24)) + rng.normal(0, 16, shape)
    return image.astype(np.float32), label


def make_synthetic_dataset(
    raw_root: str | Path,
    dataset_id: int,
    dim: int = 2,
    num_labeled: int = 8,
    num_unlabeled: int = 24,
    num_test: int = 10,
    seed: int = 0,
    name: str | None = None,
    overwrite: bool = False,
    shape: tuple[int, ...] | None = None,
    test_seed: int | None = None,
    num_validation: int = 0,
) -> Path:
    """Writes the default synthetic study dataset ``Dataset<id>_<name>`` and returns its folder.

    Case i is drawn from ``default_rng([seed, i])`` and the cases are taken in order test, labeled,
    unlabeled, validation, so one seed gives the same test set whatever the pool size. With ``test_seed`` the test
    cases are drawn from ``default_rng([test_seed, i])``: one test set for every ``seed``, never equal to
    a labeled or pool case of another seed.

    Args:
        raw_root: ``$nnUNet_raw``.
        dataset_id: nnU-Net dataset id.
        dim: 2 (64×64 PNG, nnU-Net's ``2d``) or 3 (24×40×40 NIfTI, ``3d_fullres``).
        num_labeled: N labeled cases.
        num_unlabeled: K pool cases (hidden labels in ``labelsUnlabeled``).
        num_test: M test cases.
        seed: the data's seed.
        name: dataset name. Default ``Synthetic2D`` / ``Synthetic3D``.
        overwrite: replace an existing dataset with this id.
        shape: image size in voxels; None = 64×64 (2D) or 24×40×40 (3D).
        test_seed: seed of the test cases; None = ``seed``.
        num_validation: V validation cases with labels (``imagesVal/labelsVal``), held out of the pool.

    Raises:
        ValueError: ``dim`` not 2 or 3, ``shape`` of another dimension, or counts below 1.
        FileExistsError: the dataset exists and ``overwrite`` is False.
    """
    if dim not in SHAPES:
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    shape = tuple(shape) if shape is not None else SHAPES.get(dim)
    if shape is None or len(shape) != dim:
        raise ValueError(f"shape {shape} does not have dim = {dim} axes")
    if min(num_labeled, num_unlabeled, num_test) < 1:
        raise ValueError(f"need at least one labeled, unlabeled and test case, got {num_labeled}, {num_unlabeled}, "
                         f"{num_test}")
    writer = RawDatasetWriter(raw_root, dataset_id, name or f"Synthetic{dim}D", ".png" if dim == 2 else ".nii.gz",
                              overwrite)
    counts = {"test": num_test, "labeled": num_labeled, "unlabeled": num_unlabeled,
              **({"validation": num_validation} if num_validation else {})}
    splits: dict[str, list[str]] = {split: [] for split in (*counts, "unused")}
    index = 0
    for split, count in counts.items():
        for _ in range(count):
            case_seed = test_seed if split == "test" and test_seed is not None else seed
            image, label = synthetic_case(shape, np.random.default_rng([case_seed, index]))
            case_id = f"synth_{index:03d}"
            if dim == 2:
                image = np.clip(image, 0, 255).astype(np.uint8)
            writer.write_arrays(split, case_id, image, label)
            splits[split].append(case_id)
            index += 1
    manifest = {"source": f"synthetic {dim}d", "format": "synthetic", "seed": seed,
                "test_seed": seed if test_seed is None else test_seed,
                "groups": {c: c for cases in splits.values() for c in cases}, "splits": splits}
    return writer.finish({"background": 0, "organ": 1, "lesion": 2}, {"0": "synthetic"}, manifest)


def _tiny_case(shape: tuple[int, ...], rng: np.random.Generator, core: bool = False,
               channels: int = 1) -> tuple[list[np.ndarray], np.ndarray]:
    """One tiny case: images (one per channel) and the label (1 = ellipse; 2 = its brighter core if ``core``).

    Channel 0 shows the ellipse, its core and the distractor; channel 1 (``channels=2``) shows the core only,
    so a region-based network needs both.
    """
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    size = np.array(shape, float)

    def ellipsoid(center=None, radii=None) -> np.ndarray:
        center = rng.uniform(0.3, 0.7, len(shape)) * size if center is None else center
        radii = rng.uniform(0.12, 0.25, len(shape)) * size if radii is None else radii
        return (((grid - center) / radii) ** 2).sum(-1) <= 1

    label = ellipsoid()
    distractor = ellipsoid() & ~label
    image = rng.normal(100, 20, shape) + label * rng.uniform(25, 45) + distractor * rng.uniform(15, 35)
    inner = np.zeros(shape, bool)
    if core:  # half the size, around the ellipse's centre of mass
        points = np.argwhere(label)
        inner = ellipsoid(points.mean(0), np.maximum(np.ptp(points, 0) / 4, 1.0)) & label
        image = image + inner * rng.uniform(25, 45)
    images = [image.astype(np.float32)]
    for _ in range(1, channels):
        images.append((rng.normal(100, 20, shape) + inner * rng.uniform(40, 60)).astype(np.float32))
    return images, np.where(inner, 2, label).astype(np.uint8)


def make_tiny_dataset(
    raw_root: str | Path,
    dataset_id: int,
    dim: int = 2,
    num_labeled: int = 8,
    num_unlabeled: int = 6,
    num_test: int = 3,
    seed: int = 0,
    regions: bool = False,
    ignore_label: bool = False,
    channels: int = 1,
    name: str | None = None,
) -> Path:
    """Writes ``Dataset<id>_Tiny<dim>D`` (32×32 PNG or 16×24×24 NIfTI, label 1) and returns its folder.

    Each case is one noisy ellipse with a bright unlabelled look-alike, at low contrast. Options for the
    other kinds of nnU-Net datasets (docs/getting_started.md, "Dataset kinds"):

    - ``regions``: label 2 = a brighter core inside the ellipse, declared region-based as BraTS-style datasets
      are: labels ``{"background": 0, "whole": [1, 2], "core": 2}``, ``"regions_class_order": [1, 2]``.
    - ``ignore_label``: an ``"ignore"`` label (the highest value) marks the first quarter of rows of every label
      as not annotated (labelsTr, labelsUnlabeled and labelsTs alike).
    - ``channels``: the number of input channels (``_0000``, ``_0001``, ...); channel 1 shows only the core.

    Raises:
        ValueError: ``channels`` below 1, or above 1 without ``regions`` (channel 1 would show nothing).
    """
    if channels < 1 or (channels > 1 and not regions):
        raise ValueError(f"channels must be 1, or > 1 together with regions (channel 1 shows the core), got {channels}")
    rng = np.random.default_rng(seed)
    default_name = f"Tiny{dim}D"
    writer = RawDatasetWriter(raw_root, dataset_id, name or default_name, ".png" if dim == 2 else ".nii.gz",
                              overwrite=True)
    labels = {"background": 0, "whole": [1, 2], "core": 2} if regions else {"background": 0, "target": 1}
    ignore_value = (2 if regions else 1) + 1
    counts = {"labeled": num_labeled, "unlabeled": num_unlabeled, "test": num_test}
    splits: dict[str, list[str]] = {split: [] for split in (*counts, "unused")}
    index = 0
    for split, count in counts.items():
        for _ in range(count):
            images, label = _tiny_case((32, 32) if dim == 2 else (16, 24, 24), rng, regions, channels)
            if ignore_label:
                label[..., : label.shape[-2] // 4, :] = ignore_value
            if dim == 2:
                images = [np.clip(image, 0, 255).astype(np.uint8) for image in images]
            case_id = f"tiny_{index:03d}"
            writer.write_arrays(split, case_id, images, label)
            splits[split].append(case_id)
            index += 1
    manifest = {"source": f"tiny {dim}d", "format": "synthetic", "seed": seed, "splits": splits}
    if ignore_label:
        labels["ignore"] = ignore_value
    folder = writer.finish(labels, {str(c): f"synthetic{c}" if c else "synthetic" for c in range(channels)}, manifest)
    if regions:  # RawDatasetWriter writes label-based dataset.json files
        dataset_json = json.loads((folder / "dataset.json").read_text())
        dataset_json["regions_class_order"] = [1, 2]
        (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder
