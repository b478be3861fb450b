"""The boundary-profile judge: its profiles, the label's moves, the pairwise fit on a known order, its file (fast,
no nnU-Net; trained end to end by nnUNetv2_rndpo_train_judge in tests/test_e2e_toolkit.py)."""

import numpy as np
import pytest
import torch

from nnunetv2_rndpo.judge_training import fit_profile_judge
from nnunetv2_rndpo.judges import true_dice
from nnunetv2_rndpo.learned_judge import JudgeTraining, load_learned_judge
from nnunetv2_rndpo.profile_judge import (
    LABEL_MOVES,
    PROFILE_DISTANCES,
    ProfileJudge,
    boundary_profiles,
    fit_profile_ranker,
    label_moves,
)
from nnunetv2_rndpo.reliability import judge_reliability


def square_case(seed: int, shape=(1, 1, 40, 40), blur: float = 0.0):
    """A bright square (its label) on a dark, noisy image; the spatial shape is nnU-Net's 2D (1, X, Y)."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape[1:], np.int16)
    lo = 10 + seed % 5
    label[..., lo:lo + 14, 12:12 + 12 + seed % 3] = 1
    image = (label * 2.0 - 1.0 + rng.normal(0, 0.3 + blur, label.shape))[None].astype(np.float32)
    return image, label


@pytest.mark.parametrize("shape", [(1, 1, 30, 24), (2, 1, 30, 24), (1, 12, 30, 24)])
def test_profiles_have_one_entry_per_channel_class_distance_and_statistic(shape):
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    masks = np.zeros((3, *shape[1:]), np.uint8)
    masks[:, ..., 8:20, 6:18] = 1
    masks[1, ..., 8:20, 6:10] = 2
    masks[2, ..., 6:22, 4:20][masks[2, ..., 6:22, 4:20] == 0] = 1
    profiles = boundary_profiles(image, masks, [1, 2])
    assert profiles.shape == (3, 2 * shape[0] * 2 * len(PROFILE_DISTANCES))
    assert np.all(np.isfinite(profiles)) and len(np.unique(profiles.round(6), axis=0)) == 3
    assert not boundary_profiles(image, masks[[0, 0]], [1, 2]).any()  # masks that agree: no D, all 0


def test_the_true_boundary_has_the_bright_inside_and_the_dark_outside():
    image, label = square_case(0)
    image = np.where(label > 0, 1.0, -1.0)[None].astype(np.float32)  # no noise: exact shells
    masks = label_moves(label, [1])[[0, 2 * LABEL_MOVES.index(2) + 2]]  # the label and its dilation by 2
    intensity = boundary_profiles(image, masks, [1])[:, 0::2]  # (mask, distance) mean intensities
    inner, outer = PROFILE_DISTANCES.index(-1), PROFILE_DISTANCES.index(1)
    assert intensity[0, inner] == pytest.approx(1.0) and intensity[0, outer] == pytest.approx(-1.0)
    assert intensity[1, inner] == pytest.approx(-1.0)  # the grown mask's inner shell lies in the background


def test_label_moves_erode_and_dilate_each_class_and_keep_the_2d_shape():
    label = np.zeros((1, 20, 20), np.int16)
    label[0, 4:16, 4:10], label[0, 4:16, 10:16] = 1, 2
    moves = label_moves(label, [1, 2])
    assert moves.shape == (1 + 2 * len(LABEL_MOVES) * 3, 1, 20, 20) and np.array_equal(moves[0], label)
    eroded, dilated = moves[1], moves[2]  # class 1 by one voxel
    assert (eroded == 1).sum() < (label == 1).sum() < (dilated == 1).sum()
    assert np.array_equal(eroded == 2, label == 2) and np.array_equal(dilated == 2, label == 2)  # class 2 untouched


def test_the_fit_learns_where_the_boundary_is_and_ranks_a_held_out_case_in_the_known_order():
    """Trained on three cases' labels and moves, the judge orders a fourth case's label and its moves (its own
    boundaries 1-4 voxels inside and outside) as their Dice does, and does so on masks of a size it never saw."""
    cases = [square_case(s) for s in range(3)]
    features = [boundary_profiles(image, label_moves(label, [1]), [1]) for image, label in cases]
    targets = [true_dice(label_moves(label, [1]), label, [1]) for _, label in cases]
    weights, scale, stats = fit_profile_ranker(features, targets)
    assert stats["train/pairs"] == 3 * 36 and stats["train/pair_accuracy"] >= 0.9
    judge = ProfileJudge(weights, scale, [1], stats)
    image, label = square_case(4, blur=0.2)
    masks = label_moves(label, [1])
    order = judge_reliability({"c": judge.score(image, masks)}, {"c": true_dice(masks, label, [1])})
    assert order["pairwise/accuracy"] >= 0.9
    assert np.argmax(judge.score(image, masks)) == 0  # the label itself is the best
    again = fit_profile_ranker(features, targets)
    assert np.array_equal(again[0], weights)  # deterministic
    with pytest.raises(ValueError, match="no pair of masks of different quality"):
        fit_profile_ranker([features[0][:1]], [targets[0][:1]])


def test_fit_profile_judge_uses_the_label_moves_and_the_predictions_and_round_trips(tmp_path):
    cases = {f"c{s}": square_case(s) for s in range(3)}
    predictions = {"c0": np.stack([cases["c0"][1]] * 2)}
    judge = fit_profile_judge(cases, sorted(cases), predictions, [1], None, JudgeTraining(), progress=False)
    # 3 cases × 9 masks (+ 2 identical predictions of c0, equal to its label: 2 × 8 more ordered pairs)
    assert judge.metrics["train/pairs"] == 3 * 36 + 2 * 8 and judge.training["model"] == "boundary_profile"
    judge.save(tmp_path / "j.pth")
    loaded = load_learned_judge(tmp_path / "j.pth", torch.device("cpu"))
    image, label = square_case(3)
    masks = label_moves(label, [1])
    assert isinstance(loaded, ProfileJudge) and np.allclose(loaded.score(image, masks), judge.score(image, masks))
    with pytest.raises(ValueError, match="trained on images with 1 channel.*this one has 2: retrain it"):
        loaded.score(np.concatenate([image, image]), masks)
