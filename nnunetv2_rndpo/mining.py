"""Pair mining: (chosen, rejected) proposals per case from the judge's scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnunetv2_rndpo.config import MININGS


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


def mine_pair(
    case_id: str,
    masks: np.ndarray,
    scores: np.ndarray,
    mining: str,
    rng: np.random.Generator,
    true_dice: np.ndarray | None = None,
) -> Pair | None:
    """Mines one pair for a case, or returns None when the two masks are identical (|D| = 0).

    - ``top_bottom``: the judge's best versus its worst proposal.
    - ``top_random``: the judge's best versus a uniformly drawn other proposal.
    Ties go to the lower index.

    Args:
        masks: ``(K, *spatial)`` proposals.
        scores: ``(K,)`` judge scores, higher = better.
        mining: one of :data:`nnunetv2_rndpo.config.MININGS`.
        rng: draws the partner for ``top_random``.
        true_dice: ``(K,)`` Dice to hidden ground truth, recorded for reports when known.
    """
    if mining not in MININGS:
        raise ValueError(f"unknown mining {mining!r}; valid: {', '.join(MININGS)}")
    chosen = int(np.argmax(scores))
    if mining == "top_bottom":
        rejected = int(np.argmin(scores))
    else:
        others = [k for k in range(len(scores)) if k != chosen]
        rejected = int(rng.choice(others))
    region_size = int(np.count_nonzero(masks[chosen] != masks[rejected]))
    if region_size == 0:
        return None
    return Pair(
        case_id=case_id,
        chosen=chosen,
        rejected=rejected,
        chosen_score=float(scores[chosen]),
        rejected_score=float(scores[rejected]),
        region_size=region_size,
        chosen_dice=None if true_dice is None else float(true_dice[chosen]),
        rejected_dice=None if true_dice is None else float(true_dice[rejected]),
    )
