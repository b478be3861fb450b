"""A learned judge that ranks the masks of one case: a small fully convolutional net on full-resolution crops
(``model`` "ranking_net", this module), or a linear ranker on the image across each mask's boundary (``model``
"boundary_profile", :mod:`nnunetv2_rndpo.profile_judge`); both are trained here (:class:`JudgeTraining`) and
loaded by :func:`load_learned_judge`.

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
- **Training masks**, from the labeled training cases alone, drawn fresh at every step (:func:`step_masks`;
  the training loop is :mod:`nnunetv2_rndpo.judge_training`): half of a step's masks are the base model's
  predictions for them (its proposals, made like the pool's, and predictions of the base network with seeded
  multiplicative Gaussian noise on its weights, ``weight_noise``:
  :func:`~nnunetv2_rndpo.judge_training.training_masks`), a quarter those predictions with their boundary
  moved (:func:`move_boundary`), a quarter corruptions of the label (:func:`corrupt_mask`: erosion, dilation,
  shift, a removed component, an added blob, boundary noise).
  With ``masks`` "label" the label itself stands in for the predictions. The predictions of training cases
  are in-sample: their errors lean one way, and a judge can learn the lean (docs/toolkit.md, "The learned
  judge").
- **Reliability** (:func:`~nnunetv2_rndpo.judge_training.validation_reliability`): the base model's proposals
  for the fold's validation cases (never trained on) are scored and compared with their true Dice: within-case
  pair accuracy, per-case and pooled Spearman, next to the
  agreement judge on the same proposals; saved in the judge file (``metrics``) and printed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from nnunetv2_rndpo.atomic_files import atomic_write
from nnunetv2_rndpo.metrics import in_class, mean_dice, region_labels, without_size_trend
from nnunetv2_rndpo.profile_judge import PROFILE_FORMAT, ProfileJudge

# the judge file's format; files of the earlier whole-case Dice regressor have no such key
JUDGE_FORMAT = "within-case-ranking-1"
CROP_SIZE = {2: 128, 3: 24}
# what the judge's training steps draw their masks from (JudgeTraining.masks; docs/toolkit.md, "The learned judge")
TRAINING_MASKS = ("predictions", "label", "cross_validation")
# the judge's model (JudgeTraining.model): a linear ranker on boundary profiles (nnunetv2_rndpo.profile_judge) or
# the convolutional RankingNet on crops
JUDGE_MODELS = ("boundary_profile", "ranking_net")
# what a training step orders its masks by (JudgeTraining.targets)
RANKING_TARGETS = ("dice", "size_free")
CORRUPTIONS = ("erode", "dilate", "shift", "drop_component", "spurious_component", "boundary_noise")


def corrupt_mask(label: np.ndarray, classes: list, rng: np.random.Generator,
                 operations: int | None = None) -> np.ndarray:
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
        elif op == "boundary_noise":
            band = ndimage.binary_dilation(region) & ~ndimage.binary_erosion(region)
            flip = band & (rng.random(mask.shape) < 0.3)
            mask[flip & region] = 0
            mask[flip & ~region & (mask == 0)] = value
        else:
            raise ValueError(f"unknown corruption {op!r}; valid: {', '.join(CORRUPTIONS)}")
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


def drop_2d_axis(image: np.ndarray, masks: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
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
        image, masks = drop_2d_axis(np.asarray(image, np.float32), np.asarray(masks), self.dim)
        device = next(self.network.parameters()).device
        total, count = torch.zeros(len(masks), device=device), 0
        for start, core in tile_windows(disagreement_region(masks), self.crop_size):
            x = judge_input(crop(image, start, self.crop_size), crop(masks, start, self.crop_size), self.classes)
            core_region = torch.as_tensor(core, device=device)
            total += region_mean(self.network.eval()(x.to(device)), core_region) * int(core.sum())
            count += int(core.sum())
        return (total / max(count, 1)).float().cpu().numpy().astype(float)

    def save(self, path: str | os.PathLike) -> None:
        content = {"format": JUDGE_FORMAT, "state_dict": self.network.state_dict(), "classes": self.classes,
                   "in_channels": self.in_channels, "dim": self.dim, "crop_size": list(self.crop_size),
                   "width": self.width, "metrics": self.metrics, "training": self.training}
        atomic_write(Path(path), lambda f: torch.save(content, f))

    @classmethod
    def from_saved(cls, saved: dict, device: torch.device | str = "cpu") -> LearnedJudge:
        network = RankingNet(saved["in_channels"], saved["dim"], saved["width"]).to(device)
        network.load_state_dict(saved["state_dict"])
        return cls(network.eval(), saved["classes"], saved["in_channels"], saved["dim"], tuple(saved["crop_size"]),
                   saved["width"], saved.get("metrics", {}), saved.get("training", {}))


def load_learned_judge(path: str | os.PathLike, device: torch.device | str = "cpu") -> LearnedJudge | ProfileJudge:
    """The learned judge saved in ``path``, of either model (``JudgeTraining.model``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a judge file of an earlier version (retrain it).
    """
    path = Path(path)
    retrain = ("nnUNetv2_rndpo_train_judge -d D -c C -f F (same -tr/-p as the base model), or point "
               "learned_judge / --learned-judge at the file")
    if not path.is_file():
        raise FileNotFoundError(f"Learned judge {path} not found. Train it first with {retrain}.")
    saved = torch.load(path, map_location=device, weights_only=False)
    kind = saved.get("format") if isinstance(saved, dict) else None
    if kind == PROFILE_FORMAT:
        return ProfileJudge.from_saved(saved)
    if kind != JUDGE_FORMAT:
        raise ValueError(
            f"Learned judge {path} was written by an earlier version of nnunetv2_rndpo (a whole-case Dice "
            f"regressor, not the within-case ranking judge this version reads). Retrain it: {retrain}.")
    return LearnedJudge.from_saved(saved, device)


# ---------------------------------------------------------------------------------------------- labeled cases


# ---------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class JudgeTraining:
    """How the judge is trained (the flags of ``nnUNetv2_rndpo_train_judge``).

    ``epochs``: passes over the training cases, one ranking step (one case, one crop) per case;
    ``masks_per_step``: masks ranked together in a step; ``crop_size``: crop side in voxels (None =
    :data:`CROP_SIZE`: 128 in 2D, 24 in 3D); ``width``: channels of the first layers; ``masks``: what
    :func:`step_masks` draws from, one of :data:`TRAINING_MASKS`: ``"predictions"``, the base model's proposals
    and weight-noise predictions of the training cases, ``"label"``, the label alone (its moved boundaries
    and corruptions; no predictions are computed), or ``"cross_validation"``, the proposals for each training
    case by the cross-validation fold model that held it out
    (:func:`~nnunetv2_rndpo.judge_training.cross_validation_masks`); ``weight_noise``: the standard deviations
    of the multiplicative weight noise, one prediction per value and training case (``masks`` "predictions"
    only); ``targets``: what a step orders its masks by, one of :data:`RANKING_TARGETS`: ``"dice"``, their
    true Dice in the crop, or ``"size_free"``, that Dice with its least-squares line in the masks' foreground
    size in the crop taken out (:func:`~nnunetv2_rndpo.metrics.without_size_trend`), so that mask size alone
    cannot lower the loss and the judge has to read the image; ``model``: one of :data:`JUDGE_MODELS`,
    ``"boundary_profile"`` (:mod:`~nnunetv2_rndpo.profile_judge`: a linear ranker on the image across each
    mask's boundary, fitted on the label's moves and the drawn masks; ``epochs``, ``masks_per_step``,
    ``crop_size``, ``width`` and ``learning_rate`` do not apply) or ``"ranking_net"`` (:class:`RankingNet`).
    """

    epochs: int = 40
    masks_per_step: int = 6
    crop_size: int | None = None
    width: int = 16
    weight_noise: tuple[float, ...] = (0.05, 0.1, 0.2)
    masks: str = "predictions"
    targets: str = "dice"
    learning_rate: float = 1e-3
    seed: int = 12345
    model: str = "boundary_profile"

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if self.masks_per_step < 2:
            raise ValueError(f"--samples-per-case (masks ranked per step) must be >= 2, got {self.masks_per_step}")
        if self.crop_size is not None and self.crop_size < 8:
            raise ValueError(f"--crop-size must be >= 8 voxels, got {self.crop_size}")
        if self.masks not in TRAINING_MASKS:
            raise ValueError(f"--training-masks must be one of {TRAINING_MASKS}, got {self.masks!r}")
        if self.model not in JUDGE_MODELS:
            raise ValueError(f"--model must be one of {JUDGE_MODELS}, got {self.model!r}")
        if self.targets not in RANKING_TARGETS:
            raise ValueError(f"--targets must be one of {RANKING_TARGETS}, got {self.targets!r}")
        if self.width < 1 or any(s < 0 for s in self.weight_noise):
            raise ValueError(f"--width must be >= 1 and --weight-noise values >= 0, got {self.width}, "
                             f"{self.weight_noise}")


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
    prediction in that quarter instead, the judge scored the smaller masks of a case higher: docs/toolkit.md).
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


def ranking_step(network, optimizer, image, label, masks, classes, size, ignore_label, rng,
                 size_free: bool = False) -> float | None:
    """One gradient step of :func:`pairwise_ranking_loss` (margins :func:`pairwise_margins`) on one crop around a
    random voxel of D.

    Targets: each mask's mean Dice to the label inside the crop; with ``size_free``, that Dice minus its
    least-squares line in the masks' foreground voxels inside the crop (``JudgeTraining.targets``
    "size_free"). Returns the loss, None when the masks agree.
    """
    region = disagreement_region(masks)
    if not region.any():
        return None
    start = window_start(_random_center(region, label > 0, rng), size, region.shape)
    inside = tuple(slice(s, s + w) for s, w in zip(start, size, strict=True))
    label_window = label[inside]
    dice = np.array([mean_dice(m[inside], label_window, classes, ignore_label) for m in masks])
    if size_free:
        dice = without_size_trend(dice, np.array([np.count_nonzero(m[inside]) for m in masks]))
    masks_window = crop(masks, start, size)
    x = judge_input(crop(image, start, size), masks_window, classes)
    loss = pairwise_ranking_loss(pairwise_margins(network(x), torch.as_tensor(masks_window)),
                                 torch.as_tensor(dice, dtype=torch.float32))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())
