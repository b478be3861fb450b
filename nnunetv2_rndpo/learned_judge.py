"""A learned judge that ranks the masks of one case: a small fully convolutional net on full-resolution crops.

What DPO pairs need is the order of the proposals *within* a case, and proposals of one case differ by a
few voxels. So the judge looks only where the masks of a case differ, at the native preprocessed
resolution, and is trained to order masks of one case, not to regress Dice across cases.

- **Input** (:func:`judge_input`): crops of fixed size ``crop_size`` (2D 128², 3D 24³ by default; zero-padded
  where the image is smaller) around D, the union of the masks' disagreement (voxels where not all masks
  agree). Channels: the image channels, the mask (one channel per foreground class) and the consensus (the
  mean of the case's masks per class), so the network sees where this mask departs from the others.
- **Network** (:class:`RankingNet`): four 3×3 convolutions with dilations 1, 2, 4, 8 (receptive field 31
  voxels) and a 1×1 head give a map g; a mask's score is the mean of g over D (:func:`region_mean`). Scoring a
  case (:meth:`LearnedJudge.score`) tiles D's bounding box with crops and averages g over all of D.
  Assumption: a mask's quality within a case is a sum of local contributions along D (additive in voxels),
  which is what the Dice differences between masks of one case mostly are.
- **Objective** (:func:`pairwise_ranking_loss`): RankNet's pairwise logistic loss on pairs of masks of one crop
  ordered by their true Dice inside the crop; a pair's margin is the mean of g_i − g_j over the voxels where
  the two masks differ (:func:`pairwise_margins`).
- **Training masks**, from the labeled training cases alone (:func:`training_masks`): the base model's
  proposals for them (the same generator as for the pool), predictions of the base network with seeded
  multiplicative Gaussian noise on its weights (``weight_noise``), and, drawn fresh at every step, those
  predictions with their boundary moved (:func:`move_boundary`) and corruptions of the label
  (:func:`corrupt_mask`: erosion, dilation, shift, a removed component, an added blob, boundary noise).
- **Reliability**: the base model's proposals for the fold's validation cases (never trained on) are scored
  and compared with their true Dice: within-case pair accuracy, per-case and pooled Spearman, next to the
  agreement judge on the same proposals; saved in the judge file (``metrics``) and printed.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from nnunetv2_rndpo.judges import mean_dice
from nnunetv2_rndpo.metrics import in_class, region_labels

# the judge file's format; files of the earlier whole-case Dice regressor have no such key
JUDGE_FORMAT = "within-case-ranking-1"
CROP_SIZE = {2: 128, 3: 24}
CORRUPTIONS = ("erode", "dilate", "shift", "drop_component", "spurious_component", "boundary_noise")


def corrupt_mask(label: np.ndarray, classes: list, rng: np.random.Generator, operations: int | None = None) -> np.ndarray:
    """Applies 1–3 random :data:`CORRUPTIONS` (``operations`` of them if given) to a label map ``(*spatial)``.

    Assumption: for region-based datasets a corruption acts on the region's highest label only.
    """
    mask = label.copy()
    fg_labels = [region_labels(c)[-1] for c in classes]
    for _ in range(operations if operations is not None else int(rng.integers(1, 4))):
        op = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
        value = fg_labels[int(rng.integers(len(fg_labels)))]
        region = mask == value
        if op in ("erode", "dilate"):
            iterations = int(rng.integers(1, 4))
            if op == "erode":
                mask[region & ~ndimage.binary_erosion(region, iterations=iterations)] = 0
            else:
                mask[ndimage.binary_dilation(region, iterations=iterations) & (mask == 0)] = value
        elif op == "shift":
            mask = np.roll(mask, int(rng.choice([-1, 1]) * rng.integers(1, 5)), axis=int(rng.integers(mask.ndim)))
        elif op == "drop_component":
            components, n = ndimage.label(region)
            if n:
                mask[components == int(rng.integers(1, n + 1))] = 0
        elif op == "spurious_component":
            center = [int(rng.integers(s)) for s in mask.shape]
            radius = max(1.0, float(rng.uniform(0.05, 0.15)) * min(mask.shape))
            grid = np.ogrid[tuple(slice(0, s) for s in mask.shape)]
            ball = sum((g - c) ** 2 for g, c in zip(grid, center, strict=True)) <= radius**2
            mask[ball & (mask == 0)] = value
        else:  # boundary_noise
            band = ndimage.binary_dilation(region) & ~ndimage.binary_erosion(region)
            flip = band & (rng.random(mask.shape) < 0.3)
            mask[flip & region] = 0
            mask[flip & ~region & (mask == 0)] = value
    return mask


# ---------------------------------------------------------------------------------------------- crops


def disagreement_region(masks: np.ndarray) -> np.ndarray:
    """D: bool ``(*spatial)``, the voxels where not all masks ``(K, *spatial)`` carry the same label."""
    return np.any(masks != masks[:1], axis=0)


def window_start(center: tuple[int, ...], size: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Start of a window of ``size`` centred on ``center`` and shifted to lie inside ``shape``.

    Where the image is smaller than the window the window starts at 0 and the rest is padding.
    """
    return tuple(int(min(max(c - s // 2, 0), max(n - s, 0))) for c, s, n in zip(center, size, shape, strict=True))


def crop(array: np.ndarray, start: tuple[int, ...], size: tuple[int, ...], fill: float = 0) -> np.ndarray:
    """The window ``[start, start + size)`` of the last ``len(size)`` axes of ``array``, padded with ``fill``
    where it extends past the array; leading axes are kept."""
    lead = array.ndim - len(size)
    inside = tuple(slice(s, min(s + w, n)) for s, w, n in zip(start, size, array.shape[lead:], strict=True))
    part = array[(Ellipsis, *inside)]
    padding = [(0, 0)] * lead + [(0, w - p) for w, p in zip(size, part.shape[lead:], strict=True)]
    return np.pad(part, padding, constant_values=fill)


def tile_windows(region: np.ndarray, size: tuple[int, ...]) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """Windows of ``size`` that together cover ``region`` (bool ``(*spatial)``) once.

    D's bounding box is cut into equal cores no larger than ``size``; each window is centred on its core
    (shifted inside the image, so it also sees context around the core) and carries the core's part of
    ``region`` in window coordinates: every voxel of D belongs to exactly one window. Empty D: no windows.

    Returns:
        ``[(start, core_region (bool, size))]``.
    """
    if not region.any():
        return []
    box = ndimage.find_objects(region.astype(np.uint8))[0]
    cuts = [np.linspace(b.start, b.stop, math.ceil((b.stop - b.start) / s) + 1).round().astype(int)
            for b, s in zip(box, size, strict=True)]
    windows = []
    for index in np.ndindex(*(len(c) - 1 for c in cuts)):
        core = tuple(slice(c[i], c[i + 1]) for c, i in zip(cuts, index, strict=True))
        in_core = np.zeros_like(region)
        in_core[core] = region[core]
        if not in_core.any():
            continue
        start = window_start(tuple((s.start + s.stop) // 2 for s in core), size, region.shape)
        windows.append((start, crop(in_core, start, size, False)))
    return windows


def judge_input(image: np.ndarray, masks: np.ndarray, classes: list) -> torch.Tensor:
    """``(K, C_img + 2·n_classes, *window)`` network input from a cropped image ``(C_img, *window)`` and masks
    ``(K, *window)``: image, the mask's one-hot per class, the consensus (mean one-hot of the K masks)."""
    onehot = torch.stack([torch.as_tensor(in_class(masks, c)) for c in classes], 1).float()
    consensus = onehot.mean(0, keepdim=True).expand_as(onehot)
    img = torch.as_tensor(np.asarray(image, np.float32))[None].expand(len(masks), *image.shape)
    return torch.cat([img, onehot, consensus], 1)


# ---------------------------------------------------------------------------------------------- network and loss


class RankingNet(torch.nn.Module):
    """3×3 convolutions with dilations 1, 2, 4, 8 (``width``, ``width``, 2·``width``, 2·``width`` channels,
    LeakyReLU, no normalisation: the masks of one case must not be normalised towards each other) and a
    1×1 head. Input ``(B, C, *window)``; output the map g ``(B, *window)``."""

    def __init__(self, in_channels: int, dim: int, width: int = 16):
        super().__init__()
        conv = torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d
        layers, channels = [], in_channels
        for out, dilation in ((width, 1), (width, 2), (2 * width, 4), (2 * width, 8)):
            layers += [conv(channels, out, 3, padding=dilation, dilation=dilation), torch.nn.LeakyReLU(0.01)]
            channels = out
        layers.append(conv(channels, 1, 1))
        self.body = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[:, 0]


def region_mean(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean of ``maps`` ``(B, *window)`` over ``region`` (bool ``(*window)``); 0 where it is empty."""
    weights = region.to(maps.dtype)
    return (maps * weights).flatten(1).sum(1) / weights.sum().clamp(min=1)


def pairwise_margins(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(M, M)`` margins m_ij = mean over D_ij of (g_i − g_j), D_ij = {v : mask_i ≠ mask_j}: the score
    difference of two masks measured where they differ (0 where they agree everywhere).

    Assumption: normalising each pair by its own |D_ij| (as RN-DPO normalises its margin) keeps a pair that
    differs in a thin ring as learnable as one that differs in a large blob; a mean over the union D of all
    masks diluted such pairs and training stalled at the loss of a coin flip.

    Args:
        maps: ``(M, *window)`` the network's map g for each mask.
        masks: ``(M, *window)`` label maps of the masks.
    """
    differs = (masks[:, None] != masks[None, :]).to(maps.dtype)  # (M, M, *window)
    gaps = maps[:, None] - maps[None, :]
    dims = tuple(range(2, differs.ndim))
    return (gaps * differs).sum(dims) / differs.sum(dims).clamp(min=1)


def pairwise_ranking_loss(margins: torch.Tensor, targets: torch.Tensor, min_gap: float = 1e-6) -> torch.Tensor:
    """RankNet's pairwise logistic loss over the masks of one case.

    loss = mean over pairs (i, j) with t_i > t_j + ``min_gap`` of log(1 + exp(−m_ij)), m_ij the score margin of
    mask i over mask j (s_i − s_j, or :func:`pairwise_margins`): lower when the better mask (higher true Dice t)
    gets the higher score. Only differences within the case count, so the scale and offset between cases are
    free.

    Args:
        margins: ``(M, M)`` margins of M masks of one case, m_ij = −m_ji.
        targets: ``(M,)`` their true Dice.
        min_gap: pairs whose Dice differ by less are not ordered.

    Returns:
        Scalar loss; 0 (still differentiable) when no pair is ordered.
    """
    better = (targets[:, None] - targets[None, :]) > min_gap
    if not better.any():
        return margins.sum() * 0
    return torch.nn.functional.softplus(-margins[better]).mean()


# ---------------------------------------------------------------------------------------------- the judge


def _spatial(image: np.ndarray, masks: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Drops the singleton first spatial axis of nnU-Net's 2D configurations: ``(C, 1, X, Y)`` → ``(C, X, Y)``."""
    if masks.ndim - 1 == dim + 1:
        if masks.shape[1] != 1:
            raise ValueError(f"a 2D judge got masks of shape {masks.shape}; expected (K, 1, X, Y) or (K, X, Y)")
        return image[:, 0], masks[:, 0]
    return image, masks


@dataclass
class LearnedJudge:
    """A trained :class:`RankingNet` with what it was trained for."""

    network: RankingNet
    classes: list
    in_channels: int
    dim: int
    crop_size: tuple[int, ...]
    width: int
    metrics: dict
    training: dict = field(default_factory=dict)

    @torch.inference_mode()
    def score(self, image: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """``(K,)`` scores (higher = better; comparable within the case only) of masks ``(K, *spatial)`` of one
        image ``(C_img, *spatial)``: the mean of g over D, tiled with :func:`tile_windows`. All 0 when the
        masks agree everywhere."""
        image, masks = _spatial(np.asarray(image, np.float32), np.asarray(masks), self.dim)
        device = next(self.network.parameters()).device
        total, count = torch.zeros(len(masks), device=device), 0
        for start, core in tile_windows(disagreement_region(masks), self.crop_size):
            x = judge_input(crop(image, start, self.crop_size), crop(masks, start, self.crop_size), self.classes)
            core_region = torch.as_tensor(core, device=device)
            total += region_mean(self.network.eval()(x.to(device)), core_region) * int(core.sum())
            count += int(core.sum())
        return (total / max(count, 1)).float().cpu().numpy().astype(float)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        temporary = path.with_name(path.name + ".tmp")
        torch.save({"format": JUDGE_FORMAT, "state_dict": self.network.state_dict(), "classes": self.classes,
                    "in_channels": self.in_channels, "dim": self.dim, "crop_size": list(self.crop_size),
                    "width": self.width, "metrics": self.metrics, "training": self.training}, temporary)
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> LearnedJudge:
        """Raises:
            FileNotFoundError: no such file.
            ValueError: a judge file of an earlier version (retrain it).
        """
        path = Path(path)
        retrain = ("nnUNetv2_rndpo_train_judge -d D -c C -f F (same -tr/-p as the base model), or point "
                   "learned_judge / --learned-judge at the file")
        if not path.is_file():
            raise FileNotFoundError(f"Learned judge {path} not found. Train it first with {retrain}.")
        saved = torch.load(path, map_location=device, weights_only=False)
        if not isinstance(saved, dict) or saved.get("format") != JUDGE_FORMAT:
            raise ValueError(
                f"Learned judge {path} was written by an earlier version of nnunetv2_rndpo (a whole-case Dice "
                f"regressor, not the within-case ranking judge this version reads). Retrain it: {retrain}.")
        network = RankingNet(saved["in_channels"], saved["dim"], saved["width"]).to(device)
        network.load_state_dict(saved["state_dict"])
        return cls(network.eval(), saved["classes"], saved["in_channels"], saved["dim"], tuple(saved["crop_size"]),
                   saved["width"], saved.get("metrics", {}), saved.get("training", {}))


# ---------------------------------------------------------------------------------------------- labeled cases


class LabeledCases(Mapping):
    """Preprocessed labeled cases ``{id: (image (C, *sp) float32, label (*sp) int16)}``, loaded on first use."""

    def __init__(self, dataset, identifiers: list[str]):
        self._dataset, self._ids, self._loaded, self._previous = dataset, list(identifiers), {}, {}

    def __getitem__(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        if key not in self._loaded:
            data, seg, previous, _ = self._dataset.load_case(key)
            self._loaded[key] = (np.asarray(data[:], np.float32), np.maximum(np.asarray(seg[:])[0], 0).astype(np.int16))
            if previous is not None:  # cascades: the previous stage's segmentation (nnU-Net's dataset class reads it)
                previous = np.asarray(previous[:])
                # predicted_next_stage holds (*spatial) label maps; a (1, *spatial) one is accepted too
                previous = previous[0] if previous.ndim == self._loaded[key][0].ndim else previous
                self._previous[key] = np.maximum(previous, 0).astype(np.int16)
        return self._loaded[key]

    def previous_stage(self, key: str) -> np.ndarray | None:
        """``(*spatial)`` previous-stage segmentation of a case (cascades only), or None."""
        self[key]
        return self._previous.get(key)

    def __iter__(self):
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def labeled_cases(base, fold: int | str) -> tuple[LabeledCases, list[str], list[str]]:
    """The preprocessed labeled cases (lazily loaded) and the fold's train/val ids.

    The split is nnU-Net's ``splits_final.json`` (fold ``all``: train = val = every case); without that file
    every case trains and none validates.
    """
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = Path(nnUNet_preprocessed) / base.dataset_name / base.configuration_manager.data_identifier
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: run nnUNetv2_plan_and_preprocess -d ... -c "
                                f"{base.configuration_name} first")
    previous = None if base.previous_stage is None else str(base.previous_stage.labeled_segmentations)
    dataset = infer_dataset_class(str(folder))(str(folder), folder_with_segs_from_previous_stage=previous)
    cases = LabeledCases(dataset, sorted(dataset.identifiers))
    splits_file = folder.parent / "splits_final.json"
    if str(fold) == "all" or not splits_file.is_file():
        return cases, sorted(cases), [] if str(fold) != "all" else sorted(cases)
    splits = json.loads(splits_file.read_text())
    split = splits[int(fold)] if int(fold) < len(splits) else {"train": sorted(cases), "val": []}
    return cases, sorted(split["train"]), sorted(split["val"])


# ---------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class JudgeTraining:
    """How the judge is trained (the flags of ``nnUNetv2_rndpo_train_judge``).

    ``epochs``: passes over the training cases, one ranking step (one case, one crop) per case;
    ``masks_per_step``: masks ranked together in a step; ``crop_size``: crop side in voxels (None =
    :data:`CROP_SIZE`: 128 in 2D, 24 in 3D); ``width``: channels of the first layers; ``weight_noise``: the
    standard deviations of the multiplicative weight noise, one prediction per value and training case.
    """

    epochs: int = 40
    masks_per_step: int = 6
    crop_size: int | None = None
    width: int = 16
    weight_noise: tuple[float, ...] = (0.05, 0.1, 0.2)
    learning_rate: float = 1e-3
    seed: int = 12345

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if self.masks_per_step < 2:
            raise ValueError(f"--samples-per-case (masks ranked per step) must be >= 2, got {self.masks_per_step}")
        if self.crop_size is not None and self.crop_size < 8:
            raise ValueError(f"--crop-size must be >= 8 voxels, got {self.crop_size}")
        if self.width < 1 or any(s < 0 for s in self.weight_noise):
            raise ValueError(f"--width must be >= 1 and --weight-noise values >= 0, got {self.width}, {self.weight_noise}")


@torch.inference_mode()
def perturbed_predictions(base, pool, case_ids: list[str], noise: tuple[float, ...], seed: int,
                          progress: bool = True) -> dict[str, list[np.ndarray]]:
    """``{case: [mask (*spatial) per σ]}``: argmax predictions (no TTA) of the base network with weights
    w·(1 + σ·ε), ε ~ N(0, 1) drawn once per σ from ``seed``. One forward pass per σ and case."""
    from nnunetv2_rndpo.cascade import pool_input
    from nnunetv2_rndpo.proposals import _single_pass

    predictor = base.predictor()
    network = predictor.network
    original = {k: v.detach().clone() for k, v in network.state_dict().items()}
    masks: dict[str, list[np.ndarray]] = {c: [] for c in case_ids}
    try:
        for index, sigma in enumerate(noise):
            generator = torch.Generator().manual_seed(seed * 1000 + index)
            network.load_state_dict({k: v * (1 + sigma * torch.randn(v.shape, generator=generator).to(v.device))
                                     if v.is_floating_point() else v for k, v in original.items()})
            for case_id in tqdm(case_ids, desc=f"weight noise {sigma}", disable=not progress):
                image = torch.from_numpy(pool_input(pool, case_id, base.cascade_labels)).to(base.device)
                masks[case_id].append(_single_pass(predictor, image, base.label_manager).numpy().astype(np.uint8))
    finally:
        network.load_state_dict(original)
    return masks


def training_masks(base, settings, cases, case_ids: list[str], training: JudgeTraining, progress: bool = True,
                   ) -> dict[str, np.ndarray]:
    """``{case: (M, *spatial) uint8}``: the base model's proposals for labeled cases (``settings``, cached
    with the validation cases' in ``<cache_folder>/labeled_proposals``) and its weight-noise predictions."""
    from nnunetv2_rndpo.pipeline import LabeledPool, proposal_cache
    from nnunetv2_rndpo.proposals import generate_proposals

    pool = LabeledPool(cases, case_ids)
    cache, specs, extra = proposal_cache(base, settings, "labeled_proposals")
    generate_proposals(cache, pool, base.predictor(), specs, base.label_manager, base.mirror_axes, base.device,
                       progress, seed=settings.seed, extra_weights=extra, cascade_labels=base.cascade_labels)
    noisy = perturbed_predictions(base, pool, case_ids, training.weight_noise, training.seed, progress)
    return {c: np.concatenate([cache.masks(c), np.stack(noisy[c]).reshape(-1, *cache.masks(c).shape[1:])])
            if noisy[c] else cache.masks(c) for c in case_ids}


def move_boundary(mask: np.ndarray, classes: list, rng: np.random.Generator) -> np.ndarray:
    """The mask with one random class eroded or dilated (equally likely) by 1–2 voxels: the kind of
    difference the ``threshold`` and ``temperature`` proposals of one case have."""
    moved = mask.copy()
    value = [region_labels(c)[-1] for c in classes][int(rng.integers(len(classes)))]
    region, iterations = mask == value, int(rng.integers(1, 3))
    if rng.random() < 0.5:
        moved[region & ~ndimage.binary_erosion(region, iterations=iterations)] = 0
    else:
        moved[ndimage.binary_dilation(region, iterations=iterations) & (mask == 0)] = value
    return moved


def step_masks(label: np.ndarray, predictions: np.ndarray, classes: list, count: int,
               rng: np.random.Generator) -> np.ndarray:
    """``(count, *spatial)`` masks for one ranking step: each slot a prediction of the base model (half of
    them, without repeats while they last), a prediction with its boundary moved (:func:`move_boundary`, a
    quarter) or a corrupted label (a quarter).

    Assumption: this mix puts realistic small differences next to larger ones; erosions and dilations are
    equally likely, so that mask size alone does not predict the order (with one random corruption of a
    prediction in that quarter instead, the judge scored the smaller masks of an HC18 pool's cases higher:
    mean within-case Spearman of score and mask size −0.64, a label-free measure).
    """
    unused = list(rng.permutation(len(predictions)))
    masks = []
    for _ in range(count):
        draw = rng.random()
        if draw < 0.5 and unused:
            masks.append(predictions[unused.pop()])
        elif draw < 0.75:
            masks.append(move_boundary(predictions[int(rng.integers(len(predictions)))], classes, rng))
        else:
            masks.append(corrupt_mask(label, classes, rng).astype(predictions.dtype))
    return np.stack(masks)


def _random_center(region: np.ndarray, fallback: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
    for candidates in (region, fallback):
        where = np.argwhere(candidates)
        if len(where):
            return tuple(int(v) for v in where[int(rng.integers(len(where)))])
    return tuple(s // 2 for s in region.shape)


def ranking_step(network, optimizer, image, label, masks, classes, size, ignore_label, rng) -> float | None:
    """One gradient step of :func:`pairwise_ranking_loss` (margins :func:`pairwise_margins`) on one crop around a
    random voxel of D.

    Targets: each mask's mean Dice to the label inside the crop. Returns the loss, None when the masks agree.
    """
    region = disagreement_region(masks)
    if not region.any():
        return None
    start = window_start(_random_center(region, label > 0, rng), size, region.shape)
    inside = tuple(slice(s, s + w) for s, w in zip(start, size, strict=True))
    label_window = label[inside]
    targets = torch.tensor([mean_dice(m[inside], label_window, classes, ignore_label) for m in masks])
    masks_window = crop(masks, start, size)
    x = judge_input(crop(image, start, size), masks_window, classes)
    loss = pairwise_ranking_loss(pairwise_margins(network(x), torch.as_tensor(masks_window)), targets.float())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def validation_reliability(judge: LearnedJudge, base, settings, progress: bool = True, log=print) -> dict:
    """``val/*``: the judge's and the agreement judge's reliability on the base model's proposals for the
    fold's validation cases (:func:`~nnunetv2_rndpo.reliability.judge_reliability`)."""
    from nnunetv2_rndpo.judges import agreement_scores, true_dice
    from nnunetv2_rndpo.pipeline import labeled_proposals
    from nnunetv2_rndpo.reliability import judge_reliability

    pool, cache = labeled_proposals(base, settings, progress, log)
    ignore = base.label_manager.ignore_label
    dice = {c: true_dice(cache.masks(c), pool.label(c), base.classes, ignore) for c in pool.case_ids}
    learned = {c: judge.score(pool.image(c), cache.masks(c)) for c in pool.case_ids}
    agreement = {c: agreement_scores(cache.masks(c), base.classes) for c in pool.case_ids}
    metrics = {f"val/{k}": v for k, v in judge_reliability(learned, dice).items()}
    metrics.update({f"val/agreement/{k}": v for k, v in judge_reliability(agreement, dice).items()
                    if k.startswith(("spearman/per_case", "spearman/pooled", "pairwise/accuracy", "top1/regret"))})
    return metrics


def train_learned_judge(base, settings, training: JudgeTraining = JudgeTraining(), progress: bool = True,  # noqa: B008
                        with_validation_cases: bool = False, log=print) -> LearnedJudge:
    """Trains a :class:`LearnedJudge` on the fold's labeled training cases; reliability on its validation cases.

    Args:
        base: the base model (:class:`~nnunetv2_rndpo.pipeline.BaseModel`).
        settings: the proposal settings (:class:`~nnunetv2_rndpo.pipeline.ProposalSettings`), the same as
            the pool's, so the judge learns on masks made like the ones it will rank.
        with_validation_cases: also train on the validation cases; their ``val/*`` metrics then no longer
            measure unseen cases (``val/held_out`` is 0).

    Raises:
        ValueError: no labeled training cases in the split.
    """
    cases, train_ids, val_ids = labeled_cases(base, base.fold)
    if not train_ids:
        raise ValueError(f"fold {base.fold} of {base.dataset_name} has no labeled training cases to train a judge on")
    if with_validation_cases:
        train_ids = sorted(set(train_ids) | set(val_ids))
    classes, ignore_label = base.classes, base.label_manager.ignore_label
    dim = len(base.configuration_manager.patch_size)
    size = (training.crop_size or CROP_SIZE[dim],) * dim
    began = time.monotonic()
    predictions = training_masks(base, settings, cases, train_ids, training, progress)
    some_image = cases[train_ids[0]][0]
    in_channels = some_image.shape[0] + 2 * len(classes)
    rng = np.random.default_rng(training.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(training.seed)
        network = RankingNet(in_channels, dim, training.width)
        optimizer = torch.optim.Adam(network.parameters(), lr=training.learning_rate)
        losses, steps = [], 0
        for _ in tqdm(range(training.epochs), desc="training learned judge", disable=not progress):
            losses = []
            for case_id in rng.permutation(train_ids):
                image, label = cases[case_id]
                masks = predictions[case_id]
                image, masks = _spatial(image, masks, dim)
                label = label[0] if label.ndim == dim + 1 else label
                chosen = step_masks(label, masks, classes, training.masks_per_step, rng)
                loss = ranking_step(network, optimizer, image, label, chosen, classes, size, ignore_label, rng)
                if loss is not None:
                    losses.append(loss)
                    steps += 1
    judge = LearnedJudge(network.eval(), classes, in_channels, dim, size, training.width, {
        "train/steps": steps, "train/loss_last_epoch": float(np.mean(losses)) if losses else math.nan,
        "train/cases": len(train_ids), "train/seconds": round(time.monotonic() - began, 1)}, asdict(training))
    judge.metrics["val/held_out"] = int(not with_validation_cases and str(base.fold) != "all")
    if val_ids:
        judge.metrics.update(validation_reliability(judge, base, settings, progress, log))
    return judge
