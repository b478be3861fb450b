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
                          the two masks carries the true label (with more than one foreground class both can be
                          wrong there, and no verdict can help); with one class every voxel of D is decidable.
- ``pairs/best_verdict_where_decidable``  the mean over pairs of max(right, wrong) / decidable voxels: the most a
                          single verdict on the pair can be right on (either order), the ceiling of
                          ``chosen_right_where_decidable`` for these masks. Below it, the judge's verdicts go
                          against the voxel majority (a Dice oracle can: Dice weighs a gained and a removed
                          voxel differently); at it, only smaller or more uniform parts can raise the share.

The proposals' headroom (:func:`headroom_summary`, ``headroom/*``): how much a perfect judge could gain over
nnU-Net's own prediction from this proposal set, before any judge is involved.

Voxels carrying nnU-Net's ignore label count neither in the true Dice nor in D.
"""

from __future__ import annotations

import json
import math

import numpy as np

from nnunetv2_rndpo.metrics import spearman


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
        raise ValueError(f"no true Dice for cases {missing[:5]}: a reliability report needs ground truth for every "
                         "case")
    per_case = [spearman(scores[c], dice[c]) for c in cases]
    per_case = [r for r in per_case if not math.isnan(r)]
    correct = counted = 0
    for c in cases:
        a, n = pairwise_accuracy(scores[c], dice[c])
        correct, counted = correct + a, counted + n
    regret = [float(dice[c].max() - dice[c][int(np.argmax(scores[c]))]) for c in cases]
    # pooled and per-case Spearman and the within-case pair accuracy side by side: only the last two say how
    # good the judge's DPO pairs are (a pooled ρ is high from differences between cases alone)
    return {
        "cases": len(cases),
        "spearman/pooled": spearman(np.concatenate([scores[c] for c in cases]),
                                    np.concatenate([dice[c] for c in cases])),
        "spearman/per_case": float(np.mean(per_case)) if per_case else math.nan,
        "pairwise/accuracy": correct / counted if counted else math.nan,
        "spearman/cases": len(per_case),
        "pairwise/pairs": counted,
        "top1/regret": float(np.mean(regret)),
        "top1/best_dice_mean": float(np.mean([dice[c].max() for c in cases])),
        "top1/chosen_dice_mean": float(np.mean([dice[c][int(np.argmax(scores[c]))] for c in cases])),
    }


def mining_reliability(cache, scores: dict[str, np.ndarray], dice: dict[str, np.ndarray], seed: int,
                       tau: float = 0.05) -> dict[str, float]:
    """``mining/<strategy>/pairs`` and ``/oracle_acc`` for every strategy, no filters, all pairs of a case
    (``local`` only when ``cache`` holds hybrids)."""
    from nnunetv2_rndpo.hybrids import HybridCache
    from nnunetv2_rndpo.mining import MININGS, MiningParams, mine_pool

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


def region_verdict_counts(chosen: np.ndarray, rejected: np.ndarray, label: np.ndarray,
                          ignore_label: int | None = None) -> tuple[int, int, int]:
    """``(|D|, chosen right in D, decidable voxels of D)`` of one pair against the true label.

    D = voxels where ``chosen`` ≠ ``rejected`` (not ``ignore_label`` in ``label``); decidable = voxels of D
    where exactly one of the two masks carries the true label (in D they differ, so at most one does).
    All arrays share one shape.
    """
    region = chosen != rejected
    if ignore_label is not None:
        region &= label != ignore_label
    chosen_right = region & (chosen == label)
    decidable = chosen_right | (region & (rejected == label))
    return int(region.sum()), int(chosen_right.sum()), int(decidable.sum())


def region_label_accuracy(pairs, cache, pool, ignore_label: int | None = None) -> dict[str, float]:
    """``pairs/chosen_right_in_region``, ``pairs/chosen_right_where_decidable`` and
    ``pairs/best_verdict_where_decidable`` (see the module docstring)
    for ``pairs`` of ``cache``'s proposals, against ``pool``'s hidden labels (preprocessed space): means over
    pairs of per-pair shares (pairs with an empty D, or no decidable voxel, are left out of that mean). Voxels
    the label marks ``ignore_label`` are not counted in D: their true label is unknown. Empty when a case has
    no hidden label."""
    in_region, where_decidable, best_verdict = [], [], []
    for pair in pairs:
        label = pool.label(pair.case_id)
        if label is None:
            return {}
        masks = cache.masks(pair.case_id)
        region, right, decidable = region_verdict_counts(masks[pair.chosen], masks[pair.rejected], label,
                                                         ignore_label)
        if region:
            in_region.append(right / region)
        if decidable:
            where_decidable.append(right / decidable)
            best_verdict.append(max(right, decidable - right) / decidable)
    if not in_region:
        return {}
    result = {"pairs/chosen_right_in_region": float(np.mean(in_region))}
    if where_decidable:
        result["pairs/chosen_right_where_decidable"] = float(np.mean(where_decidable))
        result["pairs/best_verdict_where_decidable"] = float(np.mean(best_verdict))
    return result


def headroom_summary(dice: dict[str, np.ndarray], plain_dice: dict[str, float]) -> dict[str, float]:
    """What a perfect judge could gain from a proposal set over nnU-Net's own prediction.

    Means over the cases of ``dice`` of:
    ``headroom/plain_dice`` (Dice of nnU-Net's TTA prediction), ``headroom/best_of_k`` (max_k Dice_k),
    ``headroom/proposal_dice_mean`` (mean_k Dice_k), ``headroom/within_case_sd`` (the proposals' population
    standard deviation within the case); ``headroom/oracle_headroom`` = best_of_k − plain_dice, and
    ``headroom/best_above_plain`` = share of cases whose best proposal beats the plain prediction.

    Args:
        dice: ``{case: (K,) true Dice of the proposals}``.
        plain_dice: ``{case: true Dice of the plain prediction}`` for the same cases.
    """
    cases = sorted(dice)
    missing = [c for c in cases if c not in plain_dice]
    if missing:
        raise ValueError(f"no plain-prediction Dice for cases {missing[:5]}")
    best = np.array([dice[c].max() for c in cases])
    plain = np.array([plain_dice[c] for c in cases])
    return {
        "headroom/cases": len(cases),
        "headroom/plain_dice": float(plain.mean()),
        "headroom/best_of_k": float(best.mean()),
        "headroom/oracle_headroom": float(best.mean() - plain.mean()),
        "headroom/proposal_dice_mean": float(np.mean([dice[c].mean() for c in cases])),
        "headroom/within_case_sd": float(np.mean([dice[c].std() for c in cases])),
        "headroom/best_above_plain": float(np.mean(best > plain)),
    }


def expected_pair_accuracy(dice: dict[str, np.ndarray], sizes: dict[str, np.ndarray], sigma: float,
                           size_bias: float = 0.0) -> float:
    """Expected ``pairwise/accuracy`` of the oracle judge (:func:`~nnunetv2_rndpo.judges.oracle_scores`) with
    noise ``sigma`` and size bias B on these proposals, over its noise.

    The judge's score is s_k = Dice_k + B·(v_k − v̄)/v̄ + N(0, σ²); for a pair i, j of one case with
    Dice_i ≠ Dice_j and m = sign(Dice_i − Dice_j)·(s̄_i − s̄_j) (s̄ = the score without noise), the noise
    difference is N(0, 2σ²), so P(ordered right) = Φ(m / (σ√2)) = (1 + erf(m / 2σ)) / 2 (σ = 0: 1, 0.5, 0
    for m > 0, = 0, < 0). The mean is over all such pairs of all cases, as ``pairwise/accuracy`` counts them.

    Args:
        dice: ``{case: (K,) true Dice}``.
        sizes: ``{case: (K,) foreground voxels}`` (:func:`~nnunetv2_rndpo.judges.foreground_voxels`).
    """
    probabilities = []
    for case in sorted(dice):
        d, v = np.asarray(dice[case], float), np.asarray(sizes[case], float)
        mean = d + (size_bias * (v - v.mean()) / v.mean() if size_bias and v.mean() > 0 else 0.0)
        for i in range(len(d)):
            for j in range(i + 1, len(d)):
                if d[i] == d[j]:
                    continue
                m = np.sign(d[i] - d[j]) * (mean[i] - mean[j])
                probabilities.append((1 + math.erf(m / (2 * sigma))) / 2 if sigma > 0 else 0.5 + 0.5 * np.sign(m))
    return float(np.mean(probabilities)) if probabilities else math.nan


def calibrate_judge_sigma(dice: dict[str, np.ndarray], sizes: dict[str, np.ndarray], target_accuracy: float,
                          size_bias: float = 0.0) -> float:
    """The noise σ at which the oracle judge with size bias B orders ``target_accuracy`` of the within-case
    pairs right (:func:`expected_pair_accuracy`), by bisection on log σ.

    This calibrates the simulated judge the way DPO uses it: every pair compares two proposals of one case,
    so a "weak judge" is one that is right on a given share of such pairs; a pooled correlation can be high
    from differences between cases alone. Returns 0 when even σ = 0 is not above the target (the size bias
    alone already makes the judge that weak); the accuracy reached is then that of σ = 0.

    Raises:
        ValueError: the target is not in (0.5, 1], or no pair of any case has different Dice.
    """
    if not 0.5 < target_accuracy <= 1:
        raise ValueError(f"target pair accuracy must be in (0.5, 1] (0.5 is a coin), got {target_accuracy}")
    noiseless = expected_pair_accuracy(dice, sizes, 0.0, size_bias)
    if math.isnan(noiseless):
        raise ValueError("cannot calibrate the judge: no case has two proposals with different true Dice")
    if noiseless <= target_accuracy:
        return 0.0
    low, high = 1e-8, 1.0
    while expected_pair_accuracy(dice, sizes, high, size_bias) > target_accuracy and high < 1e6:
        high *= 10
    for _ in range(60):
        middle = math.sqrt(low * high)
        if expected_pair_accuracy(dice, sizes, middle, size_bias) > target_accuracy:
            low = middle
        else:
            high = middle
    return float(math.sqrt(low * high))


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
