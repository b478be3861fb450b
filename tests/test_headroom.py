"""The headroom report's pure parts on hand-made masks: best-of-K against the plain prediction, the within-case
spread, and the share of D where the chosen mask is right, over all of D and over its decidable part (fast)."""

from types import SimpleNamespace

import numpy as np
import pytest

from nnunetv2_rndpo.mining import Pair
from nnunetv2_rndpo.reliability import headroom_summary, region_label_accuracy, region_verdict_counts


def test_headroom_summary_by_hand():
    dice = {"a": np.array([0.80, 0.90, 0.70]), "b": np.array([0.50, 0.50])}
    plain = {"a": 0.85, "b": 0.60}
    report = headroom_summary(dice, plain)
    assert report["headroom/cases"] == 2
    assert report["headroom/plain_dice"] == pytest.approx(0.725)
    assert report["headroom/best_of_k"] == pytest.approx((0.90 + 0.50) / 2)
    assert report["headroom/oracle_headroom"] == pytest.approx(0.70 - 0.725)  # b's proposals are all below plain
    assert report["headroom/proposal_dice_mean"] == pytest.approx((0.80 + 0.50) / 2)
    assert report["headroom/within_case_sd"] == pytest.approx((np.sqrt(2 / 3) * 0.1 + 0.0) / 2)
    assert report["headroom/best_above_plain"] == 0.5
    with pytest.raises(ValueError, match="no plain-prediction Dice for cases \\['b'\\]"):
        headroom_summary(dice, {"a": 0.85})


def test_region_verdict_counts_with_two_classes():
    label = np.array([0, 1, 2, 2, 1, 0, 9])
    chosen = np.array([0, 1, 1, 2, 2, 1, 1])
    rejected = np.array([0, 2, 0, 1, 0, 1, 0])
    # D = voxels 1, 2, 3, 4, 6 (voxel 5 agrees); voxel 6 is ignored. Chosen right at 1 and 3; rejected right
    # nowhere; at 2 (truth 2, masks say 1 and 0) and 4 (truth 1, masks 2 and 0) neither is right.
    assert region_verdict_counts(chosen, rejected, label, ignore_label=9) == (4, 2, 2)
    assert region_verdict_counts(chosen, rejected, label) == (5, 2, 2)  # the ignore label is no mask's label
    assert region_verdict_counts(rejected, chosen, label, ignore_label=9) == (4, 0, 2)
    assert region_verdict_counts(chosen, chosen, label) == (0, 0, 0)


def test_chosen_right_where_decidable_counts_only_voxels_a_verdict_can_fix():
    label = np.array([[1, 1, 2, 2, 0, 0]])
    masks = np.array([[[1, 1, 1, 1, 0, 0]],    # right at 0, 1, 4, 5; says 1 where the truth is 2
                      [[1, 0, 0, 2, 0, 0]],    # right at 0, 3, 4, 5
                      [[1, 1, 2, 2, 0, 0]]])   # the truth
    cache = SimpleNamespace(masks=lambda case: masks)
    pool = SimpleNamespace(label=lambda case: label)
    # 0 vs 1: D = voxels 1, 2, 3; mask 0 right at 1, mask 1 right at 3, neither at 2 (truth 2, masks 1 and 0)
    pair = Pair("a", 0, 1, 0.9, 0.1, 3)
    shares = region_label_accuracy([pair], cache, pool)
    assert shares["pairs/chosen_right_in_region"] == pytest.approx(1 / 3)
    assert shares["pairs/chosen_right_where_decidable"] == pytest.approx(1 / 2)
    # against the truth every voxel of D is decidable and the truth is right on all of it
    truth_first = Pair("a", 2, 0, 0.9, 0.1, 2)
    assert region_label_accuracy([truth_first], cache, pool) == {
        "pairs/chosen_right_in_region": 1.0, "pairs/chosen_right_where_decidable": 1.0,
        "pairs/best_verdict_where_decidable": 1.0}
    both = region_label_accuracy([pair, truth_first], cache, pool)
    assert both["pairs/chosen_right_where_decidable"] == pytest.approx((1 / 2 + 1) / 2)


def test_binary_masks_are_decidable_everywhere_in_d():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, (6, 7))
    masks = rng.integers(0, 2, (2, 6, 7))
    shares = region_label_accuracy([Pair("a", 0, 1, 1.0, 0.0, 1)], SimpleNamespace(masks=lambda c: masks),
                                   SimpleNamespace(label=lambda c: label))
    assert shares["pairs/chosen_right_in_region"] == shares["pairs/chosen_right_where_decidable"]
