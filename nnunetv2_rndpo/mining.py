"""Pair mining: (chosen, rejected) proposals per case from the judge's scores.

Strategies (one validated string, :data:`MININGS`):

- ``top_bottom``  the judge's best versus its worst proposal (one pair per case).
- ``top_random``  the judge's best versus a uniformly drawn other proposal (one pair per case).
- ``margin``      every pair whose score gap is ≥ ``tau``, largest gap first.
- ``adjacent``    consecutive ranks (1st vs 2nd, 2nd vs 3rd, ...), best ranks first.
- ``quantile``    the best versus the proposal whose score is nearest to mean − 2·std of the case's
                  scores (a "clearly bad but typical" rejection rather than the single worst outlier).
- ``local``       each hybrid (:mod:`nnunetv2_rndpo.hybrids`: the anchor proposal with one part of its
                  disagreement with another proposal swapped in) against its anchor, the higher-scored of the
                  two chosen, largest parts first: the two masks differ in that one part only, so one verdict
                  covers one place. Needs the hybrids' anchors; the other strategies use the K base
                  proposals only and never a hybrid.

Filters, applied to every strategy's candidates in order: judge margin ≥ ``min_margin`` (a margin of 0
is always dropped: tied scores state no preference),
``min_region`` ≤ |D| ≤ ``max_region`` (|D| = voxels where the two whole-case masks differ; |D| = 0 is
always dropped), then at most ``max_pairs_per_case`` pairs. Ties in scores go to the lower index.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nnunetv2_rndpo.hybrids import HybridCache

if TYPE_CHECKING:  # type hints only: proposals imports torch
    from nnunetv2_rndpo.pool import PreprocessedPool
    from nnunetv2_rndpo.proposals import ProposalCache

MININGS = ("top_bottom", "top_random", "margin", "adjacent", "quantile", "local")


@dataclass
class Pair:
    """One preference pair of a case; indices refer to the case's proposals."""

    case_id: str
    chosen: int
    rejected: int
    chosen_score: float
    rejected_score: float
    region_size: int
    chosen_dice: float | None = None
    rejected_dice: float | None = None


def pairs_document(pairs: list[Pair], judge_metrics: dict, cache: ProposalCache | None = None) -> dict:
    """The content of ``rndpo_pairs.json`` (what the trainer writes and ``nnUNetv2_rndpo_mine`` writes)."""
    document = {"judge_metrics": judge_metrics, "pairs": [vars(p) for p in pairs]}
    if cache is not None:
        document["proposals"] = str(cache.folder)
    return document


def read_pairs_file(path: str | os.PathLike, pool: PreprocessedPool | None = None,
                    cache: ProposalCache | None = None) -> tuple[list[Pair], dict]:
    """Reads ``rndpo_pairs.json``, checking cases and proposal indices against the pool and the cache.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a pairs file, or pairs that refer to cases/proposals that do not exist, or made
            from other proposals than ``cache``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {path} does not exist; write it with nnUNetv2_rndpo_mine")
    try:
        document = json.loads(path.read_text())
        pairs = [Pair(**p) for p in document["pairs"]]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a pairs file written by nnUNetv2_rndpo_mine ({error})") from None
    # the key (folder name) identifies the proposals; the root may be spelled differently (symlinks, mounts)
    if cache is not None and document.get("proposals") not in (None, str(cache.folder)) and (
            Path(document["proposals"]).name != cache.folder.name):
        raise ValueError(
            f"pairs file {path} was mined from proposals {document['proposals']} but this run's proposals are "
            f"{cache.folder} (another base model, sources, K or seed). Mine again from the current proposals.")
    if pool is not None:
        unknown = sorted({p.case_id for p in pairs} - set(pool.case_ids))
        if unknown:
            raise ValueError(f"pairs file {path} names cases not in the unlabeled pool: {unknown[:5]}")
        if cache is not None:
            for p in pairs:
                k = len(cache.masks(p.case_id))
                if not (0 <= p.chosen < k and 0 <= p.rejected < k):
                    raise ValueError(f"pairs file {path}: case {p.case_id!r} has proposals 0 ... {k - 1}, "
                                     f"but a pair uses {p.chosen} and {p.rejected}")
    return pairs, document.get("judge_metrics", {})


@dataclass(frozen=True)
class MiningParams:
    """How pairs are mined and filtered (see the module docstring); mirrors the ``mining*`` config keys."""

    strategy: str = "top_bottom"
    tau: float = 0.05
    min_margin: float = 0.0
    min_region: int = 1
    max_region: int | None = None
    max_pairs_per_case: int = 1

    def __post_init__(self) -> None:
        if self.strategy not in MININGS:
            raise ValueError(f"unknown mining {self.strategy!r}; valid: {', '.join(MININGS)}")
        if self.max_pairs_per_case < 1:
            raise ValueError(f"max_pairs_per_case must be >= 1, got {self.max_pairs_per_case}")
        if self.max_region is not None and self.max_region < self.min_region:
            raise ValueError(f"max_region {self.max_region} is below min_region {self.min_region}")

    @classmethod
    def from_config(cls, config) -> MiningParams:
        """From an :class:`~nnunetv2_rndpo.config.RNDPOConfig`."""
        return cls(config.mining, config.mining_tau, config.mining_min_margin, config.mining_min_region,
                   config.mining_max_region, config.mining_max_pairs_per_case)


def candidate_pairs(scores: np.ndarray, strategy: str, rng: np.random.Generator,
                    tau: float = 0.05) -> list[tuple[int, int]]:
    """Candidate ``(chosen, rejected)`` index pairs of one case, in the strategy's order of preference.

    Args:
        scores: ``(K,)`` judge scores, higher = better.
        strategy: one of :data:`MININGS`.
        rng: draws the partner for ``top_random``.
        tau: minimum score gap for ``margin``.
    """
    if strategy not in MININGS:
        raise ValueError(f"unknown mining {strategy!r}; valid: {', '.join(MININGS)}")
    if strategy == "local":
        raise ValueError("mining 'local' pairs proposals with their hybrids: use local_candidates with the hybrids' "
                         "anchors (mine_pairs does, given hybrid_anchors)")
    order = [int(i) for i in np.argsort(-scores, kind="stable")]  # best first, ties to the lower index
    best = order[0]
    if strategy == "top_bottom":
        return [(best, int(np.argmin(scores)))]
    if strategy == "top_random":
        return [(best, int(rng.choice([k for k in range(len(scores)) if k != best])))]
    if strategy == "adjacent":
        return list(zip(order[:-1], order[1:], strict=True))
    if strategy == "quantile":
        # Assumption: "near mean − 2σ" = the proposal (other than the best) whose score is closest to it.
        target = scores.mean() - 2 * scores.std()
        others = [k for k in range(len(scores)) if k != best]
        return [(best, min(others, key=lambda k: (abs(scores[k] - target), k)))]
    if strategy == "margin":
        pairs = [(i, j) for i in order for j in order if scores[i] - scores[j] >= tau and i != j]
        return sorted(pairs, key=lambda p: (-(scores[p[0]] - scores[p[1]]), p))
    raise ValueError(f"unknown mining {strategy!r}; valid: {', '.join(MININGS)}")


def local_candidates(scores: np.ndarray, hybrid_anchors: np.ndarray) -> list[tuple[int, int]]:
    """``local`` candidates: each hybrid against its anchor, ``(chosen, rejected)`` by score, in hybrid order.

    Args:
        scores: ``(K + H,)`` judge scores of the base proposals and then the hybrids.
        hybrid_anchors: ``(H,)`` the base index each hybrid was made from (hybrid h has index K + h).
    """
    first = len(scores) - len(hybrid_anchors)
    pairs = []
    for h, anchor in enumerate(hybrid_anchors):
        hybrid, anchor = first + h, int(anchor)
        pairs.append((hybrid, anchor) if scores[hybrid] > scores[anchor] else (anchor, hybrid))
    return pairs


def mine_pairs(
    case_id: str,
    masks: np.ndarray,
    scores: np.ndarray,
    params: MiningParams,
    rng: np.random.Generator,
    true_dice: np.ndarray | None = None,
    hybrid_anchors: np.ndarray | None = None,
) -> list[Pair]:
    """Mines the pairs of one case (possibly none).

    Args:
        masks: ``(K + H, *spatial)`` proposals, the last H of them hybrids (H = 0 without hybrids).
        scores: ``(K + H,)`` judge scores, higher = better.
        params: strategy and filters.
        rng: the strategy's randomness (``top_random``).
        true_dice: ``(K + H,)`` Dice to hidden ground truth, recorded for reports when known.
        hybrid_anchors: ``(H,)`` the anchor of each hybrid; required by ``local``.

    Raises:
        ValueError: ``local`` without hybrids.
    """
    num_hybrids = 0 if hybrid_anchors is None else len(hybrid_anchors)
    if params.strategy == "local":
        if hybrid_anchors is None:
            raise ValueError("mining 'local' needs hybrids of the proposals: the trainer makes them when mining is "
                             "'local'; the commands with --hybrids N")
        candidates = local_candidates(scores, hybrid_anchors)
    else:
        candidates = candidate_pairs(scores[:len(scores) - num_hybrids], params.strategy, rng, params.tau)
    pairs = []
    for chosen, rejected in candidates:
        margin = float(scores[chosen] - scores[rejected])
        if margin <= 0 or margin < params.min_margin:
            continue
        region_size = int(np.count_nonzero(masks[chosen] != masks[rejected]))
        if region_size == 0 or region_size < params.min_region:
            continue
        if params.max_region is not None and region_size > params.max_region:
            continue
        pairs.append(Pair(
            case_id=case_id, chosen=chosen, rejected=rejected, chosen_score=float(scores[chosen]),
            rejected_score=float(scores[rejected]), region_size=region_size,
            chosen_dice=None if true_dice is None else float(true_dice[chosen]),
            rejected_dice=None if true_dice is None else float(true_dice[rejected]),
        ))
        if len(pairs) == params.max_pairs_per_case:
            break
    return pairs


def mine_pool(
    cache: ProposalCache, case_ids: list[str], scores: dict[str, np.ndarray], params: MiningParams, seed: int,
    dice: dict[str, np.ndarray] | None = None,
) -> tuple[list[Pair], dict[str, float]]:
    """Mines every case of ``case_ids`` with one seeded generator; returns the pairs and their statistics.

    Statistics: :func:`~nnunetv2_rndpo.mining.pair_statistics` plus ``pairs/identical_cases`` (cases that
    gave no pair) and, when hidden labels exist, ``judge/oracle_pair_acc``. With a
    :class:`~nnunetv2_rndpo.hybrids.HybridCache` the hybrids' anchors go to ``local`` mining.
    """
    rng = np.random.default_rng(seed)
    pairs, empty = [], 0
    for case_id in case_ids:
        anchors = cache.hybrids(case_id).anchors if isinstance(cache, HybridCache) else None
        mined = mine_pairs(case_id, cache.masks(case_id), scores[case_id], params, rng,
                           None if dice is None else dice[case_id], anchors)
        empty += not mined
        pairs += mined
    stats = pair_statistics(pairs, len(case_ids))
    stats["pairs/identical_cases"] = empty
    if "pairs/oracle_acc" in stats:
        stats["judge/oracle_pair_acc"] = stats["pairs/oracle_acc"]
    return pairs, stats


def pair_statistics(pairs: list[Pair], num_cases: int) -> dict[str, float]:
    """Summary of mined pairs: count, cases covered, judge margins, |D| quantiles and oracle accuracy.

    ``pairs/oracle_acc`` (share of pairs whose chosen mask has the higher true Dice; ties count 0.5) is
    present only when every pair records true Dice, with the same share among the pairs whose |D| is at most
    the median (``pairs/oracle_acc_small_region``) and above it (``_large_region``; NaN if there are none).
    """
    stats: dict[str, float] = {"pairs/count": len(pairs), "pairs/cases": len({p.case_id for p in pairs}),
                               "pairs/pool_cases": num_cases}
    if not pairs:
        return stats
    margins = np.array([p.chosen_score - p.rejected_score for p in pairs])
    regions = np.array([p.region_size for p in pairs])
    stats.update({"judge/margin_mean": float(margins.mean()), "judge/margin_min": float(margins.min()),
                  "judge/margin_max": float(margins.max())})
    for q in (0, 25, 50, 75, 100):
        stats[f"region/size_p{q}"] = float(np.percentile(regions, q))
    if all(p.chosen_dice is not None for p in pairs):
        correct = np.array([1.0 if p.chosen_dice > p.rejected_dice else 0.5 if p.chosen_dice == p.rejected_dice else 0.0
                            for p in pairs])
        stats["pairs/oracle_acc"] = float(correct.mean())
        # is the judge wrong more often where the masks disagree most? (RN-DPO's premise)
        small = regions <= np.median(regions)
        stats["pairs/oracle_acc_small_region"] = float(correct[small].mean())
        stats["pairs/oracle_acc_large_region"] = float(correct[~small].mean()) if (~small).any() else math.nan
    return stats


def require_trainable_pairs(pairs: list[Pair], min_region_voxels: int, num_cases: int) -> None:
    """Stops before training when no pair can enter the preference loss.

    A pair is skipped in a training step when its patch holds fewer than ``min_region_voxels``
    disagreeing voxels; a patch never holds more than the whole case's |D| (``region_size``).

    Raises:
        ValueError: no pairs, or every pair's whole-case |D| is below ``min_region_voxels`` (every step
            would skip every pair and train for nothing); the message says which key to change.
    """
    if not pairs:
        raise ValueError(
            f"No preference pairs from the {num_cases} pool cases: the proposals of every case are identical, "
            "their scores tied, or the pairs were filtered out, so there is nothing to learn. Add proposal sources "
            "(e.g. 'threshold', 'temperature'), raise num_proposals, relax the mining_* filters or use "
            "mining='top_random'.")
    largest = max(p.region_size for p in pairs)
    if largest < min_region_voxels:
        raise ValueError(
            f"Every one of the {len(pairs)} pairs would be skipped: the largest disagreement between a chosen and "
            f"a rejected mask is {largest} voxels, below min_region_voxels={min_region_voxels}. Lower "
            f"min_region_voxels (e.g. to {max(1, largest)}) in the file named by $nnUNet_rndpo_config, or make "
            "proposals that differ more (more proposal_sources, mining='margin').")
