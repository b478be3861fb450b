"""A learned judge that reads the image across each mask's boundary: a linear ranker on boundary profiles.

Proposals of one case differ by a few voxels at their boundaries (threshold and temperature proposals are
mostly one inside the other), so what orders them is *where* each boundary sits relative to the image's own
edge. A mask's **boundary profile** (:func:`boundary_profiles`) is, per image channel and foreground class, the
mean intensity and the mean gradient magnitude of the voxels at signed distance d ∈ :data:`PROFILE_DISTANCES`
from its boundary (d < 0 inside), counted only near D, the case's disagreement region (within
:data:`NEAR_D` voxels of it): the part of the boundary where the masks differ. A mask on the true boundary of
a bright structure has bright voxels at d = −1 … −3 and dark ones outside; one grown by two voxels has the edge
inside, at d = −2. A mask's score is w · (profile / scale): one weight per profile entry (2 × channels ×
classes × 6 numbers), so that few labeled cases fit it.

Training (:func:`fit_profile_ranker`): RankNet's pairwise logistic loss with an L2 penalty on pairs of masks
of one training case ordered by their true Dice (or, with ``targets`` "size_free", that Dice less its line in
mask size), solved by L-BFGS. The masks are the label and its moves (:func:`label_moves`: every class, and
all of them together, eroded and dilated by 1 … 4 voxels: boundaries on both sides of the true one, with the
true boundary known), plus whatever predictions :class:`~nnunetv2_rndpo.learned_judge.JudgeTraining` draws
(``masks`` "predictions" or "cross_validation").

Assumption: the image evidence for a boundary is local and the same kind in every case (intensity and edge
strength across it after nnU-Net's normalisation), so a linear function of the profile learned on a few
labeled cases carries over to the pool. The convolutional :class:`~nnunetv2_rndpo.learned_judge.RankingNet`
(``model`` "ranking_net") is the other model; docs/toolkit.md measures both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage, optimize

from nnunetv2_rndpo.atomic_files import atomic_write
from nnunetv2_rndpo.metrics import in_class, region_labels

PROFILE_FORMAT = "boundary-profile-1"
PROFILE_DISTANCES = (-3, -2, -1, 1, 2, 3)  # voxels from the boundary; negative = inside the mask
NEAR_D = 4  # the profile counts voxels within this many voxels of D
LABEL_MOVES = (1, 2, 3, 4)  # erosion / dilation radii of the label's moves (voxels)
L2_PENALTY = 1e-2  # on the weights of the standardised profile


def _spatial(image: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drops singleton spatial axes (nnU-Net's 2D ``(C, 1, X, Y)``): a morphology step along an axis of length 1
    would erase every mask."""
    keep = tuple(n for n in image.shape[1:] if n > 1)
    return image.reshape(image.shape[0], *keep), masks.reshape(len(masks), *keep)


def boundary_profiles(image: np.ndarray, masks: np.ndarray, classes: list) -> np.ndarray:
    """``(K, F)`` boundary profiles, F = 2 · C_img · classes · len(PROFILE_DISTANCES), of masks ``(K, *spatial)``
    of one image ``(C_img, *spatial)``; all 0 where the masks agree everywhere.

    Entry order: channel, class, distance, then (mean intensity, mean gradient magnitude); a distance shell that
    has no voxel near D gives 0.
    """
    image, masks = _spatial(np.asarray(image, np.float32), np.asarray(masks))
    features = np.zeros((len(masks), 2 * len(image) * len(classes) * len(PROFILE_DISTANCES)))
    region = np.any(masks != masks[:1], axis=0)
    if not region.any():
        return features
    # the bounding box of D grown by the distances a profile reads (every distance below is exact inside it)
    margin = NEAR_D + max(abs(d) for d in PROFILE_DISTANCES) + 1
    where = np.argwhere(region)
    box = tuple(slice(max(lo - margin, 0), hi + margin + 1) for lo, hi in zip(where.min(0), where.max(0), strict=True))
    image, masks, region = image[(slice(None), *box)], masks[(slice(None), *box)], region[box]
    near = ndimage.binary_dilation(region, iterations=NEAR_D)
    gradients = [np.sqrt(sum(g ** 2 for g in np.gradient(ndimage.gaussian_filter(channel.astype(np.float64), 1.0))))
                 for channel in image]
    for k, mask in enumerate(masks):
        column = 0
        shells = []
        for c in classes:
            inside = in_class(mask, c)
            depth, distance = ndimage.distance_transform_edt(inside), ndimage.distance_transform_edt(~inside)
            shells.append([near & (np.abs(depth + d) < 0.5) if d < 0 else near & (np.abs(distance - d) < 0.5)
                           for d in PROFILE_DISTANCES])
        for channel, gradient in zip(image, gradients, strict=True):
            for per_class in shells:
                for shell in per_class:
                    if shell.any():
                        features[k, column], features[k, column + 1] = channel[shell].mean(), gradient[shell].mean()
                    column += 2
    return features


def label_moves(label: np.ndarray, classes: list) -> np.ndarray:
    """``(1 + 2 · len(LABEL_MOVES) · (classes + 1), *spatial)``: the label, then each class and all classes
    together eroded and dilated by each radius of :data:`LABEL_MOVES` (dilation only into background; an eroded
    voxel becomes background). For a 2D case with a singleton axis, the morphology runs on the plane."""
    shape = label.shape
    plane = label.reshape(tuple(n for n in shape if n > 1))
    groups = [[c] for c in classes] + ([list(classes)] if len(classes) > 1 else [])
    moves = [plane]
    for group in groups:
        for radius in LABEL_MOVES:
            eroded, dilated = plane.copy(), plane.copy()
            for c in group:
                region = in_class(plane, c)
                eroded[region & ~ndimage.binary_erosion(region, iterations=radius)] = 0
                dilated[ndimage.binary_dilation(region, iterations=radius) & (plane == 0)] = region_labels(c)[-1]
            moves += [eroded, dilated]
    return np.stack(moves).reshape(len(moves), *shape)


def _pairs(features: list[np.ndarray], targets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Differences ``(P, F)`` of the profiles of every pair of masks of one case whose targets differ, and
    their signs ``(P,)`` (+1: the first is better)."""
    rows, signs = [], []
    for profile, target in zip(features, targets, strict=True):
        i, j = np.triu_indices(len(target), 1)
        keep = np.abs(target[i] - target[j]) > 1e-6
        rows.append(profile[i[keep]] - profile[j[keep]])
        signs.append(np.sign(target[i[keep]] - target[j[keep]]))
    return np.concatenate(rows), np.concatenate(signs)


def fit_profile_ranker(features: list[np.ndarray], targets: list[np.ndarray], l2: float = L2_PENALTY,
                       ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Weights ``(F,)`` and scale ``(F,)`` minimising the mean pairwise logistic loss
    log(1 + exp(−s · w · (x_i − x_j) / scale)) + l2 · |w|² over the pairs of masks of each case.

    Args:
        features: per training case, its masks' profiles ``(M, F)`` (:func:`boundary_profiles`).
        targets: per case, ``(M,)`` what orders its masks (true Dice; higher = better).

    Returns:
        ``(weights, scale, stats)``; ``scale`` is the standard deviation of the pair differences (1 where 0);
        ``stats`` has ``train/pairs``, ``train/pair_accuracy`` and ``train/loss``.

    Raises:
        ValueError: no pair of masks with different targets.
    """
    differences, signs = _pairs(features, targets)
    if not len(signs):
        raise ValueError("the judge's training cases gave no pair of masks of different quality to rank")
    scale = differences.std(0)
    scale[scale == 0] = 1.0
    x = signs[:, None] * differences / scale

    def loss(w):
        margin = x @ w
        value = np.logaddexp(0, -margin).mean() + l2 * (w @ w)
        grad = -(x * (1 / (1 + np.exp(np.clip(margin, -50, 50))))[:, None]).mean(0) + 2 * l2 * w
        return value, grad

    result = optimize.minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B")
    weights = result.x
    return weights, scale, {"train/pairs": len(signs), "train/pair_accuracy": float(np.mean(x @ weights > 0)),
                            "train/loss": float(result.fun)}


@dataclass
class ProfileJudge:
    """A fitted boundary-profile ranker with what it was trained for."""

    weights: np.ndarray
    scale: np.ndarray
    classes: list
    metrics: dict
    training: dict = field(default_factory=dict)

    def score(self, image: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """``(K,)`` scores (higher = better; comparable within the case only) of masks ``(K, *spatial)`` of one
        image ``(C_img, *spatial)``. All 0 when the masks agree everywhere.

        Raises:
            ValueError: an image with another number of channels than the judge was trained on.
        """
        profiles = boundary_profiles(image, masks, self.classes)
        if profiles.shape[1] != len(self.weights):
            raise ValueError(f"the learned judge was trained on images with {self._channels()} channel(s), this "
                             f"one has {np.asarray(image).shape[0]}: retrain it on this dataset "
                             "(nnUNetv2_rndpo_train_judge)")
        return (profiles / self.scale) @ self.weights

    def _channels(self) -> int:
        return len(self.weights) // (2 * len(self.classes) * len(PROFILE_DISTANCES))

    def save(self, path: str | os.PathLike) -> None:
        content = {"format": PROFILE_FORMAT, "weights": self.weights.tolist(), "scale": self.scale.tolist(),
                   "classes": self.classes, "metrics": self.metrics, "training": self.training}
        atomic_write(Path(path), lambda f: torch.save(content, f))

    @classmethod
    def from_saved(cls, saved: dict) -> ProfileJudge:
        return cls(np.asarray(saved["weights"], float), np.asarray(saved["scale"], float), saved["classes"],
                   saved.get("metrics", {}), saved.get("training", {}))
