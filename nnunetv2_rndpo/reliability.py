"""How reliable is a judge? Its scores against the true Dice of the same proposals.

Needs ground truth for the judged cases: the hidden labels of ``labelsUnlabeled/`` (never used for
training), or labeled cases (the learned judge's held-out validation). Metrics, each over the cases of
one run (docs/toolkit.md):

- ``spearman/per_case``   mean over cases of Spearman's ρ between scores and true Dice (cases where
                          either is constant are skipped, ``spearman/cases`` counts the rest);
- ``spearman/pooled``     ρ over all (case, proposal) pairs together (also rewards ranking across cases);
- ``pairwise/accuracy``   over all within-case proposal pairs with different true Dice, the share the judge
                          orders correctly (a score tie counts 0.5): the chance that a mined pair is right;
- ``top1/regret``         mean over cases of max_k Dice_k − Dice_{argmax_k score_k};
- ``mining/<strategy>/*`` pairs and oracle accuracy of the pairs each mining strategy would mine;
- ``pairs/chosen_right_in_region``  for mined pairs: the mean over pairs of the share of the disagreement
                          region D where the chosen mask carries the true label. The preference loss pushes
                          every voxel of D towards the chosen mask, so this is the share of that push that
                          is right; a pair can be "right" (higher Dice) and still push half of D the wrong way.
- ``pairs/chosen_right_where_decidable``  the same share counted only on the voxels of D where exactly one of
                          the two masks carries the true label (elsewhere neither is right and no verdict helps).

Voxels carrying nnU-Net's ignore label count neither in the true Dice nor in D.
"""

from __future__ import annotations

import json
import math

import numpy as np


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


def pairwise_accuracy(scores: np.ndarray, dice: np.ndarray) -> tuple[float, int]:
    """``(correct, counted)`` over the pairs i < j of one case with Dice_i ≠ Dice_j (score tie = 0.5)."""
    correct, counted = 0.0, 0
    for i in range(len(scores)):
        for j in range(i + 1, len(scores)):
            if dice[i] == dice[j]:
                continue
            counted += 1
            agree = np.sign(scores[i] - scores[j]) * np.sign(dice[i] - dice[j])
            correct += 1.0 if agree > 0 else 0.5 if agree == 0 else 0.0
    return correct, counted


def judge_reliability(scores: dict[str, np.ndarray], dice: dict[str, np.ndarray]) -> dict[str, float]:
    """The ranking metrics of the module docstring (without mining) over the cases in ``scores``.

    Args:
        scores: ``{case: (K,) judge scores}``.
        dice: ``{case: (K,) true Dice}`` for the same cases.
    """
    cases = sorted(scores)
    missing = [c for c in cases if c not in dice]
    if missing:
        raise ValueError(f"no true Dice for cases {missing[:5]}: a reliability report needs ground truth for every case")
    per_case = [spearman(scores[c], dice[c]) for c in cases]
    per_case = [r for r in per_case if not math.isnan(r)]
    correct = counted = 0
    for c in cases:
        a, n = pairwise_accuracy(scores[c], dice[c])
        correct, counted = correct + a, counted + n
    regret = [float(dice[c].max() - dice[c][int(np.argmax(scores[c]))]) for c in cases]
    return {
        "cases": len(cases),
        "spearman/per_case": float(np.mean(per_case)) if per_case else math.nan,
        "spearman/cases": len(per_case),
        "spearman/pooled": spearman(np.concatenate([scores[c] for c in cases]), np.concatenate([dice[c] for c in cases])),
        "pairwise/accuracy": correct / counted if counted else math.nan,
        "pairwise/pairs": counted,
        "top1/regret": float(np.mean(regret)),
        "top1/best_dice_mean": float(np.mean([dice[c].max() for c in cases])),
        "top1/chosen_dice_mean": float(np.mean([dice[c][int(np.argmax(scores[c]))] for c in cases])),
    }


def mining_reliability(cache, scores: dict[str, np.ndarray], dice: dict[str, np.ndarray], seed: int,
                       tau: float = 0.05) -> dict[str, float]:
    """``mining/<strategy>/pairs`` and ``/oracle_acc`` for every strategy, no filters, all pairs of a case
    (``local`` only when ``cache`` holds hybrids)."""
    from nnunetv2_rndpo.config import MININGS
    from nnunetv2_rndpo.hybrids import HybridCache
    from nnunetv2_rndpo.mining import MiningParams
    from nnunetv2_rndpo.pipeline import mine_pool

    result: dict[str, float] = {}
    cases = sorted(scores)
    cap = max(len(s) for s in scores.values()) ** 2
    for strategy in MININGS:
        if strategy == "local" and not isinstance(cache, HybridCache):
            continue
        _, stats = mine_pool(cache, cases, scores, MiningParams(strategy, tau=tau, max_pairs_per_case=cap), seed, dice)
        result[f"mining/{strategy}/pairs"] = stats["pairs/count"]
        result[f"mining/{strategy}/oracle_acc"] = stats.get("pairs/oracle_acc", math.nan)
    return result


def region_label_accuracy(pairs, cache, pool, ignore_label: int | None = None) -> dict[str, float]:
    """``pairs/chosen_right_in_region`` and ``pairs/chosen_right_where_decidable`` (see the module docstring)
    for ``pairs`` of ``cache``'s proposals, against ``pool``'s hidden labels (preprocessed space). Voxels the
    label marks ``ignore_label`` are not counted in D: their true label is unknown. Empty when a case has no
    hidden label; the decidable share is the mean over the pairs with a decidable voxel."""
    shares, decidable_shares = [], []
    for pair in pairs:
        label = pool.label(pair.case_id)
        if label is None:
            return {}
        masks = cache.masks(pair.case_id)
        chosen, rejected = masks[pair.chosen], masks[pair.rejected]
        region = chosen != rejected
        if ignore_label is not None:
            region &= label != ignore_label
        if region.any():
            chosen_right, rejected_right = chosen[region] == label[region], rejected[region] == label[region]
            shares.append(float(np.mean(chosen_right)))
            decidable = chosen_right != rejected_right
            if decidable.any():
                decidable_shares.append(float(np.mean(chosen_right[decidable])))
    if not shares:
        return {}
    result = {"pairs/chosen_right_in_region": float(np.mean(shares))}
    if decidable_shares:
        result["pairs/chosen_right_where_decidable"] = float(np.mean(decidable_shares))
    return result


def format_table(report: dict[str, float], title: str) -> str:
    """A two-column text table of a report, NaN shown as '-'."""
    width = max(len(k) for k in report)
    lines = [title, "-" * (width + 12)]
    for key, value in report.items():
        text = "-" if isinstance(value, float) and math.isnan(value) else (
            f"{value:.4f}" if isinstance(value, float) else str(value))
        lines.append(f"{key:<{width}}  {text:>9}")
    return "\n".join(lines)


def report_json(report: dict) -> str:
    """JSON with NaN written as null."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}
    return json.dumps(clean, indent=1)
