"""How reliable a judge is (reliability.py): ranks, Spearman, pairwise accuracy, top-1 regret and the share of
the push that is right, ignore label included (fast; the calibration is in test_judge_calibration.py, the
headroom report in test_headroom.py)."""

import math

import numpy as np
import pytest

from nnunetv2_rndpo.judges import oracle_scores, true_dice
from nnunetv2_rndpo.metrics import rank, spearman
from nnunetv2_rndpo.mining import Pair
from nnunetv2_rndpo.reliability import judge_reliability, pairwise_accuracy


def test_rank_spearman_and_pairwise_accuracy_by_hand():
    assert rank(np.array([3.0, 1.0, 3.0])).tolist() == [1.5, 0.0, 1.5]
    assert spearman(np.array([1, 2, 3]), np.array([10, 20, 30])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)
    assert math.isnan(spearman(np.array([1, 1, 1]), np.array([1, 2, 3])))
    # pairs (0,1) right, (0,2) tie in score → 0.5, (1,2) wrong; Dice ties are not counted
    assert pairwise_accuracy(np.array([0.5, 0.1, 0.5]), np.array([0.9, 0.3, 0.2])) == (1.5, 3)
    assert pairwise_accuracy(np.array([0.1, 0.2]), np.array([0.5, 0.5])) == (0.0, 0)


def test_top1_regret():
    report = judge_reliability({"a": np.array([0.1, 0.9]), "b": np.array([0.9, 0.1])},
                               {"a": np.array([0.8, 0.6]), "b": np.array([0.7, 0.5])})
    assert report["top1/regret"] == pytest.approx(0.1) and report["pairwise/accuracy"] == 0.5
    with pytest.raises(ValueError, match="no true Dice for cases \\['b'\\]"):
        judge_reliability({"a": np.array([0.1, 0.9]), "b": np.array([0.9, 0.1])}, {"a": np.array([0.8, 0.6])})


def test_region_label_accuracy_is_the_share_of_the_push_that_is_right():
    from types import SimpleNamespace

    from nnunetv2_rndpo.reliability import region_label_accuracy

    label = np.array([1, 1, 0, 0])
    masks = np.array([[1, 0, 1, 0],    # against the truth (mask 1) it differs at voxels 1 and 2, wrong at both
                      [1, 1, 0, 0],    # the truth
                      [0, 0, 0, 0]])   # against mask 0 it differs at voxels 0 and 2: mask 0 right at 0, wrong at 2
    cache = SimpleNamespace(masks=lambda case: masks)
    pool = SimpleNamespace(label=lambda case: label)
    wrong = Pair("a", 0, 1, 0.9, 0.1, 2)
    half = Pair("a", 0, 2, 0.9, 0.1, 2)
    # the wrong order of a pair whose D is all one way: the other verdict would be right on all of it
    assert region_label_accuracy([wrong], cache, pool) == {"pairs/chosen_right_in_region": 0.0,
                                                           "pairs/chosen_right_where_decidable": 0.0,
                                                           "pairs/best_verdict_where_decidable": 1.0}
    # a pair right on half of D either way: no verdict does better than half
    assert region_label_accuracy([half], cache, pool) == {"pairs/chosen_right_in_region": 0.5,
                                                          "pairs/chosen_right_where_decidable": 0.5,
                                                          "pairs/best_verdict_where_decidable": 0.5}
    assert region_label_accuracy([wrong, half], cache, pool)["pairs/chosen_right_in_region"] == 0.25
    # three classes: at voxel 1 the truth is 2 and the masks say 1 and 0, neither right: not decidable
    three = SimpleNamespace(masks=lambda case: np.array([[1, 1, 0], [1, 0, 1]]))
    truth = SimpleNamespace(label=lambda case: np.array([1, 2, 1]))
    assert region_label_accuracy([Pair("a", 1, 0, 0.9, 0.1, 2)], three, truth) == {
        "pairs/chosen_right_in_region": 0.5, "pairs/chosen_right_where_decidable": 1.0,
        "pairs/best_verdict_where_decidable": 1.0}
    assert region_label_accuracy([wrong], cache, SimpleNamespace(label=lambda case: None)) == {}


def test_ignore_label_voxels_count_neither_in_true_dice_nor_in_the_push():
    from types import SimpleNamespace

    from nnunetv2_rndpo.reliability import region_label_accuracy

    # voxels 2 and 3 carry the ignore label 9: what a proposal says there is neither right nor wrong
    label = np.array([1, 1, 9, 9])
    masks = np.array([[1, 1, 0, 0],    # right on every counted voxel
                      [1, 1, 1, 1]])   # differs from mask 0 only where the label is ignored
    assert true_dice(masks, label, [1]).tolist() == [1.0, 2 / 3]  # without it, voxels 2, 3 are false positives
    assert true_dice(masks, label, [1], ignore_label=9).tolist() == [1.0, 1.0]
    scores, dice = oracle_scores(masks, label, [1], 0.0, np.random.default_rng(0), ignore_label=9)
    assert dice.tolist() == [1.0, 1.0] and scores.tolist() == [1.0, 1.0]
    cache = SimpleNamespace(masks=lambda case: np.array([[1, 0, 0, 0], [1, 1, 1, 1]]))
    pool = SimpleNamespace(label=lambda case: label)
    pair = Pair("a", 1, 0, 0.9, 0.1, 3)  # D = voxels 1, 2, 3; only voxel 1 is counted, where mask 1 is right
    assert region_label_accuracy([pair], cache, pool)["pairs/chosen_right_in_region"] == 1 / 3
    assert region_label_accuracy([pair], cache, pool, ignore_label=9) == {"pairs/chosen_right_in_region": 1.0,
                                                                          "pairs/chosen_right_where_decidable": 1.0,
                                                                          "pairs/best_verdict_where_decidable": 1.0}
