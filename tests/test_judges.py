"""The judges: agreement, the oracle (seeded noise, size bias), uncertainty, external scores and their CSV
checks, score normalisation (fast, no training; the calibration is in test_judge_calibration.py, the learned
judge in test_learned_judge.py)."""

import numpy as np
import pytest

from nnunetv2_rndpo.judges import (
    agreement_scores,
    normalize_scores,
    oracle_scores,
    read_external_scores,
    true_dice,
    uncertainty_scores,
    write_scores_csv,
)
from nnunetv2_rndpo.reliability import judge_reliability


def test_agreement_prefers_the_consensus():
    base = np.zeros((8, 8), np.uint8)
    base[2:6, 2:6] = 1
    outlier = np.zeros_like(base)
    outlier[0:2, 0:8] = 1
    scores = agreement_scores(np.stack([base, base, outlier]), [1])
    assert scores[0] == scores[1] > scores[2]


def test_oracle_noise_is_seeded():
    masks = np.stack([np.eye(4, dtype=np.uint8), np.ones((4, 4), np.uint8)])
    label = np.eye(4, dtype=np.uint8)
    clean, true_dice = oracle_scores(masks, label, [1], 0.0, np.random.default_rng(0))
    assert clean.tolist() == true_dice.tolist() and true_dice[0] == 1.0
    a, _ = oracle_scores(masks, label, [1], 0.5, np.random.default_rng(3))
    b, _ = oracle_scores(masks, label, [1], 0.5, np.random.default_rng(3))
    assert a.tolist() == b.tolist() and a.tolist() != clean.tolist()


def test_external_scores_round_trip(tmp_path):
    scores = {"a": np.array([0.1, 0.9]), "b": np.array([0.5, 0.2])}
    write_scores_csv(tmp_path / "s.csv", scores)
    read = read_external_scores(tmp_path / "s.csv", {"a": 2, "b": 2})
    assert {k: v.tolist() for k, v in read.items()} == {k: v.tolist() for k, v in scores.items()}


GOOD = "case_id,proposal,score\na,0,0.1\na,1,0.2\nb,0,0.3\nb,1,0.4\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is empty"),
        ("case,proposal,score\na,0,1\n", "has header 'case,proposal,score'; expected exactly 'case_id,proposal,score'"),
        (GOOD + "c,0,0.5\n", "line 6: unknown case 'c'"),
        (GOOD + "a,2,0.5\n", "line 6: unknown proposal index 2 for case 'a'; valid: 0 ... 1"),
        (GOOD + "a,x,0.5\n", "line 6: proposal 'x' is not an integer index"),
        (GOOD.replace("0.4", "nan"), "line 5: score 'nan' is not finite"),
        (GOOD.replace("0.4", "inf"), "line 5: score 'inf' is not finite"),
        (GOOD.replace("0.4", "good"), "line 5: score 'good' is not a number"),
        (GOOD + "a,1,0.3\n", "line 6: duplicate row for case 'a' proposal 1"),
        ("case_id,proposal,score\na,0,0.1\na,1,0.2\n", "no scores for 1 pool case\\(s\\): \\['b'\\]"),
        ("case_id,proposal,score\na,0,0.1\nb,0,0.3\nb,1,0.4\n", "case 'a' has no score for proposal\\(s\\) \\[1\\]"),
        ("case_id,proposal,score\na,0\n", "expected 3 columns"),
    ],
)
def test_external_scores_errors(tmp_path, text, message):
    path = tmp_path / "s.csv"
    path.write_text(text)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=message):
        read_external_scores(path, {"a": 2, "b": 2})
    assert path.read_bytes() == before


def test_external_scores_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="judge_scores file .* does not exist"):
        read_external_scores(tmp_path / "nope.csv", {"a": 2})


def ranked_case(rng: np.random.Generator, k: int = 6, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A label square and ``k`` proposals: the square eroded or dilated by different amounts."""
    label = np.zeros((size, size), np.uint8)
    label[4:12, 4:12] = 1
    masks = np.zeros((k, size, size), np.uint8)
    for j, grow in enumerate(rng.permutation(np.arange(-3, k - 3))):
        masks[j, 4 - grow: 12 + grow, 4 - grow: 12 + grow] = 1
    return masks, label


def test_oracle_sigma_zero_ranks_exactly_and_large_sigma_is_a_coin():
    rng = np.random.default_rng(0)
    cases = [ranked_case(rng) for _ in range(300)]
    dice = {str(i): true_dice(m, lab, [1]) for i, (m, lab) in enumerate(cases)}
    exact = {str(i): oracle_scores(m, lab, [1], 0.0, rng)[0] for i, (m, lab) in enumerate(cases)}
    report = judge_reliability(exact, dice)
    assert report["pairwise/accuracy"] == 1.0 and report["top1/regret"] == 0.0
    assert report["spearman/per_case"] == pytest.approx(1.0) and report["spearman/pooled"] == pytest.approx(1.0)
    noisy = {str(i): oracle_scores(m, lab, [1], 100.0, rng)[0] for i, (m, lab) in enumerate(cases)}
    assert abs(judge_reliability(noisy, dice)["pairwise/accuracy"] - 0.5) < 0.05


def test_oracle_size_bias_prefers_larger_masks():
    masks, label = ranked_case(np.random.default_rng(1))
    sizes = masks.reshape(len(masks), -1).sum(1)
    scores, dice = oracle_scores(masks, label, [1], 0.0, np.random.default_rng(0), size_bias=10.0)
    assert int(np.argmax(scores)) == int(np.argmax(sizes)) != int(np.argmax(dice))
    scores, _ = oracle_scores(masks, label, [1], 0.0, np.random.default_rng(0), size_bias=-10.0)
    assert int(np.argmax(scores)) == int(np.argmin(sizes))


def test_uncertainty_is_soft_dice_to_the_mean_probability():
    probabilities = np.zeros((2, 4, 4), np.float32)
    probabilities[1, :2] = 1.0  # the model is sure about the top half
    probabilities[0] = 1 - probabilities[1]
    top, all_, none = np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    top[:2] = 1
    scores = uncertainty_scores(np.stack([top, all_, none]), probabilities, [1])
    assert scores.tolist() == pytest.approx([1.0, 2 * 8 / (16 + 8), 0.0])
    empty = uncertainty_scores(np.stack([none]), np.stack([np.ones((4, 4)), np.zeros((4, 4))]), [1])
    assert empty.tolist() == [1.0]  # nothing predicted where nothing is probable


def test_normalize_scores_keeps_order():
    scores = {"a": np.array([1.0, 3.0, 2.0]), "b": np.array([5.0, 5.0])}
    minmax = normalize_scores(scores, "case_minmax")
    assert minmax["a"].tolist() == [0.0, 1.0, 0.5] and minmax["b"].tolist() == [0.5, 0.5]
    assert normalize_scores(scores, "case_rank")["a"].tolist() == [0.0, 1.0, 0.5]
    assert normalize_scores(scores, "none")["a"] is scores["a"]
    with pytest.raises(ValueError, match="unknown score normalisation 'z'; valid: none, case_minmax, case_rank"):
        normalize_scores(scores, "z")
