"""Evaluation metrics: Dice per class as nnU-Net reports it, the mean Dice of two masks, Spearman's ρ, and
reducers over an evaluation curve.

The curve vocabulary (docs/objective.md, "Evaluation"): a fine-tuning run is evaluated on held-out
labeled cases at evenly spaced points d_0 … d_T, where d_0 is the base model before fine-tuning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def region_labels(class_or_region: int | Sequence[int]) -> tuple[int, ...]:
    """The labels one foreground class or region stands for: ``1 → (1,)``, ``(1, 2) → (1, 2)``.

    The one place that reads nnU-Net's class/region entries. ``LabelManager.foreground_labels`` are ints;
    ``LabelManager.foreground_regions`` mixes ints and tuples: ``dataset.json`` labels
    ``{"background": 0, "whole": [1, 2], "b": 2}`` give the regions ``[(1, 2), 2]``. A voxel belongs to the
    class or region when its label is one of the returned labels.

    Raises:
        ValueError: an empty region.
    """
    if isinstance(class_or_region, (tuple, list, np.ndarray)):
        labels = tuple(int(v) for v in class_or_region)
        if not labels:
            raise ValueError("a region needs at least one label, got an empty one")
        return labels
    return (int(class_or_region),)


def class_key(class_or_region: int | Sequence[int]) -> str:
    """The key of a class or region in nnU-Net's ``summary.json``: ``"1"``, ``"(1, 2)"``."""
    labels = region_labels(class_or_region)
    return str(labels) if isinstance(class_or_region, (tuple, list, np.ndarray)) else str(labels[0])


def in_class(label_map: np.ndarray, class_or_region: int | Sequence[int]) -> np.ndarray:
    """Bool mask of the voxels of ``label_map`` (any shape) that belong to the class or region."""
    return np.isin(label_map, region_labels(class_or_region))


def dice_per_class(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels_or_regions: Sequence[int | Sequence[int]],
    *,
    ignore_label: int | None = None,
    empty_value: float = math.nan,
) -> dict[str, float]:
    """Dice of each foreground class (or region) of one case, as in nnU-Net's ``summary.json``.

    For each class (a label, or a region = tuple of labels as in nnU-Net's region-based training),
    Dice = 2·TP / (2·TP + FP + FN), counted over the voxels whose reference is not ``ignore_label``.

    Empty-mask rule: when prediction and reference are both empty for a class (TP + FP + FN = 0) the
    Dice is ``empty_value``. The default NaN is nnU-Net's own rule (``compute_metrics`` writes NaN and
    ``summary.json`` averages with ``nanmean``), so numbers computed here match
    ``nnUNetv2_evaluate_folder``. Pass ``empty_value=1.0`` to count a correctly empty prediction as
    perfect instead.

    Args:
        prediction: integer label map, any shape.
        reference: integer label map, same shape.
        labels_or_regions: the classes to score, e.g. ``[1, 2]``, or regions as nnU-Net's ``LabelManager`` gives
            them, e.g. ``[(1, 2), 2]`` (see :func:`region_labels`).
        ignore_label: reference voxels with this label are not counted.
        empty_value: Dice when the class is absent from both masks.

    Returns:
        ``{str(class): dice}``, keyed like nnU-Net's ``summary.json`` (``"1"``, ``"(1, 2)"``).
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
    counted = np.ones(reference.shape, bool) if ignore_label is None else reference != ignore_label
    result = {}
    for label in labels_or_regions:
        in_prediction = in_class(prediction, label) & counted
        in_reference = in_class(reference, label) & counted
        tp = int(np.count_nonzero(in_prediction & in_reference))
        fp = int(np.count_nonzero(in_prediction & ~in_reference))
        fn = int(np.count_nonzero(~in_prediction & in_reference))
        result[class_key(label)] = empty_value if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return result


def foreground_mean(per_class: dict[str, float]) -> float:
    """Mean Dice over the foreground classes of one case, skipping NaN (nnU-Net's ``nanmean``).

    Returns NaN when every class is NaN.
    """
    values = [v for v in per_class.values() if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def mean_dice(a: np.ndarray, b: np.ndarray, labels_or_regions: Sequence, ignore_label: int | None = None) -> float:
    """Mean foreground Dice of two masks, counting a class absent from both as 1 (they agree on it).

    Voxels where ``b`` (the reference) carries ``ignore_label`` are not counted, as in nnU-Net's evaluation.
    """
    dice = dice_per_class(a, b, labels_or_regions, ignore_label=ignore_label, empty_value=1.0)
    return float(np.mean(list(dice.values())))


def rank(values: np.ndarray) -> np.ndarray:
    """Ranks 0 … n−1 with ties given their average rank (as Spearman's ρ needs)."""
    values = np.asarray(values, float)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ of two ``(n,)`` arrays; NaN when either is constant."""
    ra, rb = rank(a), rank(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def without_size_trend(values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``values`` minus their least-squares line in ``sizes`` (both ``(M,)``, the masks of one case): what is
    left of a quality once mask size is accounted for. Masks all of one size keep their values minus their
    mean; residuals at rounding level are 0, so that an exact line leaves a constant, not noise to rank."""
    values, sizes = np.asarray(values, float), np.asarray(sizes, float)
    fit = np.polyval(np.polyfit(sizes, values, 1), sizes) if np.ptp(sizes) > 0 else np.full_like(values, values.mean())
    residual = values - fit
    residual[np.abs(residual) <= 1e-9 * max(1.0, float(np.abs(values).max(initial=0)))] = 0.0
    return residual


def curve_summary(curve: Sequence[float]) -> dict[str, float]:
    """Reduces an evaluation curve d_0 … d_T (d_0 = base model) to the study's summary numbers.

        peak       = max_{t≥1} d_t
        sustained  = mean of d_t over the last half of the evaluations after the base,
                     i.e. t = T − ⌈T/2⌉ + 1 … T
        final      = d_T
        worst_drop = d_0 − min_{t≥1} d_t   (positive when fine-tuning ever fell below the base)

    Each of peak, sustained and final is also returned as a delta to d_0 (``delta_peak`` …).

    Assumption: "the last half" of an odd number of evaluations includes the middle one (⌈T/2⌉ points).

    Args:
        curve: ``[d_0, d_1, …, d_T]`` with T ≥ 1; NaN entries are not allowed.

    Returns:
        ``{"base", "peak", "sustained", "final", "worst_drop", "delta_peak", "delta_sustained",
        "delta_final"}``.

    Raises:
        ValueError: fewer than two points or non-finite values.
    """
    values = np.asarray(curve, dtype=float)
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"an evaluation curve needs the base d_0 and at least one more point, got {list(curve)}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"evaluation curve has non-finite values: {list(curve)}")
    base, after = float(values[0]), values[1:]
    half = math.ceil(after.size / 2)
    summary = {
        "base": base,
        "peak": float(after.max()),
        "sustained": float(after[-half:].mean()),
        "final": float(after[-1]),
        "worst_drop": float(base - after.min()),
    }
    for key in ("peak", "sustained", "final"):
        summary[f"delta_{key}"] = summary[key] - base
    return summary
