"""Judges: a quality score per proposal (higher = better), from which pairs are mined.

- ``agreement``: mean Dice of a proposal to the case's other proposals (model agreement).
- ``uncertainty``: soft Dice of a proposal to the mean probability map over the TTA flips (how much of
  the model's own probability mass the mask captures, and how little it claims where the model is unsure).
- ``learned``: a small CNN that ranks the masks of one case from full-resolution crops around their
  disagreement, trained on labeled cases only (:mod:`nnunetv2_rndpo.learned_judge`, command
  ``nnUNetv2_rndpo_train_judge``).
- ``oracle``: Dice to the hidden ground truth in ``labelsUnlabeled/`` plus Gaussian noise of standard
  deviation ``judge_sigma`` and a size bias ``judge_size_bias``: a simulated judge of known reliability,
  for studies only.
- ``external``: scores from any deployed QC system, read from a CSV ``case_id,proposal,score``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunetv2_rndpo.atomic_files import atomic_write_text
from nnunetv2_rndpo.metrics import in_class, mean_dice, rank, region_labels

JUDGES = ("agreement", "uncertainty", "learned", "oracle", "external")
CSV_HEADER = ("case_id", "proposal", "score")


def agreement_scores(masks: np.ndarray, labels_or_regions: Sequence, num_references: int | None = None) -> np.ndarray:
    """score_m = (Σ_{j<R} Dice(mask_m, mask_j) − 1) / (R − 1) against the first R masks (default all).

    For one of the R reference masks this is its mean Dice to the other R − 1. Hybrids (the masks after the
    K = R base proposals) are compared with the same R base proposals, their own anchor and donor included,
    so that a hybrid and its anchor are judged by the same votes. ``masks`` is ``(M, *spatial)``, returns
    ``(M,)``.
    """
    references = len(masks) if num_references is None else num_references
    dice = np.ones((len(masks), references))
    for i in range(len(masks)):
        for j in range(references):
            if i < references and j < i:
                dice[i, j] = dice[j, i]
            elif i != j:
                dice[i, j] = mean_dice(masks[i], masks[j], labels_or_regions)
    return (dice.sum(1) - 1) / (references - 1)


def true_dice(
    masks: np.ndarray, label: np.ndarray, labels_or_regions: Sequence, ignore_label: int | None = None
) -> np.ndarray:
    """``(K,)`` mean foreground Dice of each proposal to the hidden label (absent-from-both = 1), not counting
    voxels the label marks ``ignore_label``."""
    return np.array([mean_dice(m, label, labels_or_regions, ignore_label) for m in masks])


def foreground_voxels(masks: np.ndarray, labels_or_regions: Sequence) -> np.ndarray:
    """``(K,)`` number of voxels of each proposal that belong to any foreground class."""
    members = sorted({v for c in labels_or_regions for v in region_labels(c)})
    return np.array([np.count_nonzero(np.isin(m, members)) for m in masks], dtype=float)


def oracle_scores(
    masks: np.ndarray,
    label: np.ndarray,
    labels_or_regions: Sequence,
    sigma: float,
    rng: np.random.Generator,
    size_bias: float = 0.0,
    ignore_label: int | None = None,
    dice: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A simulated noisy and biased judge.

    score_k = Dice_k + N(0, sigma²) + B·(v_k − v̄)/v̄, with v_k the foreground voxels of proposal k and
    v̄ their mean over the case (the bias term is 0 when v̄ = 0). Assumption: the size bias is relative to
    the case's own proposals, so B means the same on small and large structures.

    Args:
        masks: ``(K, *spatial)`` proposals.
        label: ``(*spatial)`` hidden ground truth.
        sigma: noise standard deviation; 0 ranks exactly by Dice.
        rng: draws the noise.
        size_bias: B; > 0 prefers larger masks, < 0 smaller.
        ignore_label: voxels the label marks with it are not counted in Dice_k.
        dice: ``(K,)`` Dice_k if already known (:func:`true_dice` of the same masks and label), else computed.

    Returns:
        ``(scores, true_dice)``, both ``(K,)``.
    """
    if dice is None:
        dice = true_dice(masks, label, labels_or_regions, ignore_label)
    scores = dice + rng.normal(0.0, sigma, size=dice.shape)
    if size_bias:
        sizes = foreground_voxels(masks, labels_or_regions)
        if sizes.mean() > 0:
            scores = scores + size_bias * (sizes - sizes.mean()) / sizes.mean()
    return scores, dice


def uncertainty_scores(
    masks: np.ndarray, probabilities: np.ndarray, labels_or_regions: Sequence, has_regions: bool = False
) -> np.ndarray:
    """score_k = mean over foreground classes c of softDice(1[mask_k ∈ c], p_c).

    softDice(m, p) = 2·Σ m·p / (Σ m + Σ p), 1 when both sums are 0. Assumption: p_c is the mean
    probability over the TTA flips that the proposals were made from (stored with them); for softmax
    datasets channel c holds label c, for region-based ones channel i holds region i.

    Args:
        masks: ``(K, *spatial)`` proposals.
        probabilities: ``(C, *spatial)`` mean probabilities.
        labels_or_regions: the foreground labels or regions.
        has_regions: channels are regions (sigmoid) rather than labels (softmax).

    Returns:
        ``(K,)`` scores in [0, 1].
    """
    probabilities = probabilities.astype(np.float32)
    scores = np.zeros(len(masks))
    for index, c in enumerate(labels_or_regions):
        p = probabilities[index if has_regions else region_labels(c)[0]]
        p_sum = float(p.sum())
        for k, mask in enumerate(masks):
            m = in_class(mask, c)
            denominator = float(m.sum()) + p_sum
            scores[k] += 1.0 if denominator == 0 else 2 * float(p[m].sum()) / denominator
    return scores / len(labels_or_regions)


def read_external_scores(path: str | Path, proposals_per_case: dict[str, int]) -> dict[str, np.ndarray]:
    """Reads and validates a QC system's CSV ``case_id,proposal,score`` (one row per proposal).

    Args:
        path: the CSV file.
        proposals_per_case: ``{case_id: K}`` for every pool case; proposal indices run 0 … K−1.

    Returns:
        ``{case_id: scores (K,)}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: wrong header, empty file, non-numeric/NaN/inf scores, unknown cases or proposal
            indices, duplicate rows, or cases/proposals without a score. The message names the row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judge_scores file {path} does not exist; point judge_scores at the QC system's CSV")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets often write a UTF-8 BOM
            rows = list(csv.reader(f))
    except UnicodeDecodeError as error:
        raise ValueError(f"judge_scores file {path} is not UTF-8 text ({error}); save it as CSV in UTF-8") from None
    if not rows:
        raise ValueError(f"judge_scores file {path} is empty; expected a header {','.join(CSV_HEADER)} and one row "
                         "per proposal")
    header = tuple(c.strip() for c in rows[0])
    if header != CSV_HEADER:
        raise ValueError(f"judge_scores file {path} has header {','.join(header)!r}; expected exactly "
                         f"{','.join(CSV_HEADER)!r}")
    scores: dict[str, dict[int, float]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        where = f"{path}, line {line}"
        if len(row) != 3:
            raise ValueError(f"{where}: expected 3 columns case_id,proposal,score, got {row}")
        case_id, proposal, score = (c.strip() for c in row)
        if case_id not in proposals_per_case:
            raise ValueError(f"{where}: unknown case {case_id!r}; the unlabeled pool has "
                             f"{sorted(proposals_per_case)[:5]} ...")
        try:
            index = int(proposal)
        except ValueError:
            raise ValueError(f"{where}: proposal {proposal!r} is not an integer index") from None
        if not 0 <= index < proposals_per_case[case_id]:
            raise ValueError(
                f"{where}: unknown proposal index {index} for case {case_id!r}; valid: 0 ... "
                f"{proposals_per_case[case_id] - 1}"
            )
        try:
            value = float(score)
        except ValueError:
            raise ValueError(f"{where}: score {score!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{where}: score {score!r} is not finite; every score must be a finite number")
        if index in scores.setdefault(case_id, {}):
            raise ValueError(f"{where}: duplicate row for case {case_id!r} proposal {index}")
        scores[case_id][index] = value
    missing_cases = sorted(set(proposals_per_case) - set(scores))
    if missing_cases:
        raise ValueError(
            f"judge_scores file {path} has no scores for {len(missing_cases)} pool case(s): {missing_cases[:5]}; "
            "score every proposal of every case"
        )
    for case_id, by_index in scores.items():
        missing = sorted(set(range(proposals_per_case[case_id])) - set(by_index))
        if missing:
            raise ValueError(f"judge_scores file {path}: case {case_id!r} has no score for proposal(s) {missing}")
    return {c: np.array([by_index[i] for i in range(len(by_index))]) for c, by_index in scores.items()}


def write_scores_csv(path: str | Path, scores: dict[str, np.ndarray]) -> None:
    """Writes scores in the CSV format :func:`read_external_scores` reads (atomically: temp file + rename)."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(CSV_HEADER)
    for case_id in sorted(scores):
        for index, value in enumerate(scores[case_id]):
            writer.writerow([case_id, index, repr(float(value))])
    atomic_write_text(Path(path), text.getvalue())


SCORE_NORMALIZATIONS = ("none", "case_minmax", "case_rank")


def normalize_scores(scores: dict[str, np.ndarray], how: str) -> dict[str, np.ndarray]:
    """Rescales each case's scores; the order within a case (all that mining uses) never changes.

    - ``none``: unchanged.
    - ``case_minmax``: (s − min) / (max − min) per case, 0.5 for a constant case: margins become
      comparable between QC systems, so ``mining_tau``/``mining_min_margin`` mean the same.
    - ``case_rank``: rank / (K − 1) per case (ties averaged): only the order is kept.
    """
    if how not in SCORE_NORMALIZATIONS:
        raise ValueError(f"unknown score normalisation {how!r}; valid: {', '.join(SCORE_NORMALIZATIONS)}")
    if how == "none":
        return dict(scores)
    result = {}
    for case_id, values in scores.items():
        values = np.asarray(values, float)
        if how == "case_rank":
            result[case_id] = rank(values) / max(len(values) - 1, 1)
        else:
            spread = values.max() - values.min()
            result[case_id] = (values - values.min()) / spread if spread > 0 else np.full(len(values), 0.5)
    return result
