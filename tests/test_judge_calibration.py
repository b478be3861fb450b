"""The simulated judge calibrated the way DPO uses it: to a within-case pair accuracy, with the size bias (fast)."""

import math

import numpy as np
import pytest

from nnunetv2_rndpo.judges import oracle_scores
from nnunetv2_rndpo.reliability import calibrate_judge_sigma, expected_pair_accuracy, judge_reliability


def test_expected_pair_accuracy_by_hand():
    dice, sizes = {"a": np.array([0.8, 0.7])}, {"a": np.array([10.0, 10.0])}
    # m = 0.1; the noise difference has sd σ√2 = 0.1, so P(right) = Φ(1)
    assert expected_pair_accuracy(dice, sizes, 0.1 / math.sqrt(2)) == pytest.approx(0.841345, abs=1e-6)
    assert expected_pair_accuracy(dice, sizes, 0.0) == 1.0
    # a bias of 0.1 towards the larger (worse) mask: 0.8 − 0.05 vs 0.7 + 0.05, a tie without noise
    biased = {"a": np.array([5.0, 15.0])}
    assert expected_pair_accuracy(dice, biased, 0.0, size_bias=0.1) == 0.5
    assert expected_pair_accuracy(dice, biased, 0.3, size_bias=0.1) == pytest.approx(0.5)
    assert expected_pair_accuracy(dice, biased, 0.0, size_bias=0.2) == 0.0  # wrong every time without noise
    # equal Dice states no order and is not counted
    assert math.isnan(expected_pair_accuracy({"a": np.array([0.5, 0.5])}, sizes, 0.1))


def test_calibrated_sigma_gives_the_target_within_case_accuracy():
    rng = np.random.default_rng(0)
    dice = {f"c{i}": rng.uniform(0.6, 0.9) + rng.normal(0, 0.01, 8) for i in range(40)}  # cases differ far more
    sizes = {c: rng.uniform(900, 1100, 8) for c in dice}
    sigma = calibrate_judge_sigma(dice, sizes, 0.70, size_bias=0.05)
    assert expected_pair_accuracy(dice, sizes, sigma, 0.05) == pytest.approx(0.70, abs=1e-6)
    assert calibrate_judge_sigma(dice, sizes, 0.85, 0.05) < sigma  # a better judge has less noise
    # drawn the way the oracle judge draws it, the measured within-case accuracy is the target
    accuracies, pooled = [], []
    for seed in range(20):
        draw = np.random.default_rng(seed)
        scores = {}
        for c in dice:
            base = dice[c] + 0.05 * (sizes[c] - sizes[c].mean()) / sizes[c].mean()
            scores[c] = base + draw.normal(0, sigma, 8)
        report = judge_reliability(scores, dice)
        accuracies.append(report["pairwise/accuracy"])
        pooled.append(report["spearman/pooled"])
    assert np.mean(accuracies) == pytest.approx(0.70, abs=0.01)
    assert np.mean(pooled) > 0.9  # the pooled ρ of the same judge looks excellent: it ranks the cases


def test_calibration_limits_and_errors():
    dice, sizes = {"a": np.array([0.8, 0.7])}, {"a": np.array([5.0, 15.0])}
    assert calibrate_judge_sigma(dice, sizes, 0.7, size_bias=0.1) == 0.0  # the bias alone makes it a coin
    with pytest.raises(ValueError, match="target pair accuracy must be in \\(0.5, 1\\]"):
        calibrate_judge_sigma(dice, sizes, 0.5)
    with pytest.raises(ValueError, match="no case has two proposals with different true Dice"):
        calibrate_judge_sigma({"a": np.array([0.5, 0.5])}, sizes, 0.7)


def test_oracle_scores_match_the_model_the_calibration_assumes():
    masks = np.zeros((2, 10), np.uint8)
    masks[0, :4] = 1
    masks[1, :6] = 1
    label = np.zeros(10, np.uint8)
    label[:4] = 1
    scores, dice = oracle_scores(masks, label, [1], 0.0, np.random.default_rng(0), size_bias=0.1)
    # sizes 4 and 6, mean 5: bias −0.02 and +0.02 on Dice 1 and 0.8
    assert scores.tolist() == pytest.approx([0.98, 0.82]) and dice.tolist() == pytest.approx([1.0, 0.8])


def test_judge_pair_accuracy_is_a_validated_key():
    from nnunetv2_rndpo.config import RNDPOConfig
    from nnunetv2_rndpo.pipeline import JudgeSettings

    config = RNDPOConfig(judge="oracle", judge_pair_accuracy=0.7, judge_size_bias=0.05)
    assert JudgeSettings.from_config(config).pair_accuracy == 0.7
    with pytest.raises(ValueError, match="config key 'judge_pair_accuracy': 0.5 is out of range; must be > 0.5"):
        RNDPOConfig(judge_pair_accuracy=0.5)
    with pytest.raises(ValueError, match="judge_sigma and judge_pair_accuracy both set"):
        RNDPOConfig(judge_pair_accuracy=0.7, judge_sigma=0.01)


def test_reliability_reports_put_pooled_and_per_case_rho_and_pair_accuracy_side_by_side():
    report = judge_reliability({"a": np.array([1.0, 2.0, 3.0])}, {"a": np.array([0.1, 0.2, 0.3])})
    assert list(report)[1:4] == ["spearman/pooled", "spearman/per_case", "pairwise/accuracy"]


def test_score_pool_calibrates_the_oracle_on_the_cases_it_scores():
    from types import SimpleNamespace

    from nnunetv2_rndpo.pipeline import JudgeSettings, oracle_sigma, score_pool

    rng = np.random.default_rng(1)
    labels = {f"c{i}": (rng.random((12, 12)) < 0.4).astype(np.uint8) for i in range(30)}
    # proposals = the label with a growing number of flipped voxels: a known order within each case
    masks = {}
    for c, label in labels.items():
        flips = rng.permutation(label.size)
        masks[c] = np.stack([np.where(np.isin(np.arange(label.size), flips[: 2 * k]).reshape(label.shape),
                                      1 - label, label) for k in range(6)]).astype(np.uint8)
    base = SimpleNamespace(classes=[1], label_manager=SimpleNamespace(ignore_label=None, has_regions=False))
    pool = SimpleNamespace(case_ids=sorted(labels), has_labels=True, label=labels.__getitem__,
                           source_digest=lambda c: None)
    cache = SimpleNamespace(masks=masks.__getitem__, has_case=lambda c, digest=None: True)
    weak = JudgeSettings("oracle", size_bias=0.05, pair_accuracy=0.7, seed=3)
    sigma = oracle_sigma(base, pool, cache, weak)
    assert sigma > 0 and oracle_sigma(base, pool, cache, JudgeSettings("oracle", sigma=0.02)) == 0.02
    dice = {c: np.array([float(2 * (m & labels[c]).sum() / (m.sum() + labels[c].sum())) for m in masks[c]])
            for c in labels}
    measured = [judge_reliability(score_pool(base, pool, cache, JudgeSettings("oracle", size_bias=0.05,
                                                                              pair_accuracy=0.7, seed=s),
                                             progress=False), dice)["pairwise/accuracy"] for s in range(5)]
    assert np.mean(measured) == pytest.approx(0.7, abs=0.03)
    exact = score_pool(base, pool, cache, JudgeSettings("oracle"), progress=False)
    assert judge_reliability(exact, dice)["pairwise/accuracy"] == 1.0
