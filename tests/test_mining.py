"""Mining strategies and filters, their parameters and the pair statistics (fast, no training; ``local``
mining is in test_hybrids.py)."""

import numpy as np
import pytest

from nnunetv2_rndpo.mining import MININGS, MiningParams, Pair, candidate_pairs, mine_pairs, pair_statistics


def test_mining_top_bottom_and_top_random():
    masks = np.stack([np.full((3, 3), k % 2, np.uint8) for k in range(4)])
    scores = np.array([0.2, 0.9, 0.1, 0.5])
    (pair,) = mine_pairs("c", masks, scores, MiningParams("top_bottom"), np.random.default_rng(0),
                         true_dice=np.array([1, 2, 3, 4.0]))
    assert (pair.chosen, pair.rejected, pair.region_size) == (1, 2, 9)
    assert (pair.chosen_dice, pair.rejected_dice) == (2.0, 3.0)
    partners = {p.rejected for s in range(20)
                for p in mine_pairs("c", masks, scores, MiningParams("top_random"), np.random.default_rng(s))}
    assert 1 not in partners and partners >= {0, 2}


def test_identical_masks_give_no_pair():
    masks = np.zeros((3, 4, 4), np.uint8)
    assert mine_pairs("c", masks, np.array([0.1, 0.5, 0.3]), MiningParams("top_bottom"), np.random.default_rng(0)) == []
    with pytest.raises(ValueError, match="unknown mining 'best'"):
        mine_pairs("c", masks, np.array([0.1, 0.5, 0.3]), MiningParams("best"), np.random.default_rng(0))


def distinct_masks(k: int, size: int = 8) -> np.ndarray:
    """``k`` masks that all differ: mask j has the first j + 1 voxels of a flat image set."""
    masks = np.zeros((k, size * size), np.uint8)
    for j in range(k):
        masks[j, : j + 1] = 1
    return masks.reshape(k, size, size)


SCORES = np.array([0.2, 0.9, 0.1, 0.5, 0.45])


@pytest.mark.parametrize(
    "strategy, expected",
    [
        ("top_bottom", [(1, 2)]),
        ("adjacent", [(1, 3), (3, 4), (4, 0), (0, 2)]),
        # gaps 0.8, 0.7, 0.45, 0.4, 0.4 (tie: lower indices first), ...; 0.5 − 0.45 < tau in floating point
        ("margin", [(1, 2), (1, 0), (1, 4), (1, 3), (3, 2), (4, 2), (3, 0), (4, 0), (0, 2)]),
        # mean − 2σ = 0.43 − 2·0.2795 < 0.1: the lowest score is nearest
        ("quantile", [(1, 2)]),
    ],
)
def test_candidate_pairs(strategy, expected):
    assert candidate_pairs(SCORES, strategy, np.random.default_rng(0), tau=0.05) == expected


def test_quantile_picks_near_mean_minus_two_sigma_not_the_outlier():
    scores = np.array([0.9, 0.85, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.7, -5.0])
    target = scores.mean() - 2 * scores.std()
    chosen, rejected = candidate_pairs(scores, "quantile", np.random.default_rng(0))[0]
    assert chosen == 0 and rejected == int(np.argmin(np.abs(scores[1:] - target))) + 1


def test_top_random_is_seeded_and_never_pairs_the_best_with_itself():
    draws = [candidate_pairs(SCORES, "top_random", np.random.default_rng(s))[0] for s in range(30)]
    assert all(c == 1 and r != 1 for c, r in draws) and len({r for _, r in draws}) == 4
    assert draws == [candidate_pairs(SCORES, "top_random", np.random.default_rng(s))[0] for s in range(30)]


@pytest.mark.parametrize("strategy", [m for m in MININGS if m != "local"])  # local: tests/test_hybrids.py
def test_every_strategy_mines_ordered_pairs_with_both_scores(strategy):
    masks, dice = distinct_masks(5), np.array([0.3, 0.8, 0.1, 0.6, 0.5])
    params = MiningParams(strategy, tau=0.0, max_pairs_per_case=10)
    pairs = mine_pairs("c", masks, SCORES, params, np.random.default_rng(0), dice)
    assert pairs and all(p.chosen_score >= p.rejected_score for p in pairs)
    assert all(p.chosen_dice == dice[p.chosen] and p.region_size > 0 for p in pairs)


def test_filters_margin_region_and_cap():
    masks = distinct_masks(5)  # |D| between masks i and j = |i − j|
    rng = np.random.default_rng(0)
    margin = mine_pairs("c", masks, SCORES, MiningParams("margin", tau=0.0, max_pairs_per_case=20), rng)
    assert len(margin) == 10
    assert all(p.chosen_score - p.rejected_score >= 0.3 for p in
               mine_pairs("c", masks, SCORES, MiningParams("margin", 0.0, 0.3, max_pairs_per_case=20), rng))
    assert all(2 <= p.region_size <= 3 for p in
               mine_pairs("c", masks, SCORES, MiningParams("margin", 0.0, min_region=2, max_region=3,
                                                             max_pairs_per_case=20), rng))
    capped = mine_pairs("c", masks, SCORES, MiningParams("margin", 0.0, max_pairs_per_case=2), rng)
    assert [(p.chosen, p.rejected) for p in capped] == [(1, 2), (1, 0)]  # largest gaps first


def test_mining_params_errors():
    with pytest.raises(ValueError, match="unknown mining 'best'; valid: top_bottom"):
        MiningParams("best")
    with pytest.raises(ValueError, match="max_pairs_per_case must be >= 1"):
        MiningParams(max_pairs_per_case=0)
    with pytest.raises(ValueError, match="max_region 1 is below min_region 5"):
        MiningParams(min_region=5, max_region=1)


def test_pair_statistics():
    pairs = [Pair("a", 0, 1, 0.9, 0.1, 10, 0.8, 0.2), Pair("b", 0, 1, 0.5, 0.4, 30, 0.1, 0.3)]
    stats = pair_statistics(pairs, 3)
    assert stats["pairs/count"] == 2 and stats["pairs/pool_cases"] == 3
    assert stats["judge/margin_mean"] == pytest.approx(0.45) and stats["region/size_p50"] == 20
    assert stats["pairs/oracle_acc"] == 0.5
    # split at the median |D| (20): the small-|D| pair is right, the large-|D| one wrong
    assert stats["pairs/oracle_acc_small_region"] == 1.0 and stats["pairs/oracle_acc_large_region"] == 0.0
    assert "pairs/oracle_acc" not in pair_statistics([Pair("a", 0, 1, 0.9, 0.1, 10)], 1)
