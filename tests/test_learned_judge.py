"""The learned judge's parts: corruptions, crops around D, the within-case ranking objective, the network
and its file (fast, no nnU-Net training; the end-to-end run is tests/test_e2e_toolkit.py)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nnunetv2_rndpo.judges import true_dice
from nnunetv2_rndpo.learned_judge import (
    CORRUPTIONS,
    JudgeTraining,
    LearnedJudge,
    RankingNet,
    corrupt_mask,
    crop,
    disagreement_region,
    judge_input,
    load_learned_judge,
    move_boundary,
    pairwise_margins,
    pairwise_ranking_loss,
    perturbed_predictions,
    ranking_step,
    region_mean,
    step_masks,
    tile_windows,
    window_start,
)
from nnunetv2_rndpo.reliability import judge_reliability


def two_class_label(shape=(20, 20)) -> np.ndarray:
    label = np.zeros(shape, np.int16)
    label[5:12, 5:12] = 1
    label[14:18, 14:18] = 2
    return label


# ---------------------------------------------------------------- corruptions


@pytest.mark.parametrize("operation", range(len(CORRUPTIONS)))
def test_corruptions_keep_shape_and_labels(operation):
    label = two_class_label()
    rng = np.random.default_rng(operation)
    for _ in range(10):
        mask = corrupt_mask(label, [1, 2], rng)
        assert mask.shape == label.shape and set(np.unique(mask)) <= {0, 1, 2}
    dice = [true_dice(corrupt_mask(label, [1, 2], np.random.default_rng(s))[None], label, [1, 2])[0] for s in range(30)]
    assert min(dice) < 1.0


def test_corruptions_and_step_masks_are_seeded_and_change_dice():
    label = two_class_label()
    assert np.array_equal(corrupt_mask(label, [1, 2], np.random.default_rng(4)),
                          corrupt_mask(label, [1, 2], np.random.default_rng(4)))
    predictions = np.stack([label, np.roll(label, 1, 0)]).astype(np.uint8)
    first = step_masks(label, predictions, [1, 2], 6, np.random.default_rng(1))
    assert first.shape == (6, 20, 20) and np.array_equal(first, step_masks(label, predictions, [1, 2], 6,
                                                                            np.random.default_rng(1)))
    assert len(np.unique(true_dice(first, label, [1, 2]))) > 1


def test_boundary_moves_erode_and_dilate_equally_often():
    label = two_class_label()
    sizes = [int((move_boundary(label, [1, 2], np.random.default_rng(s)) > 0).sum()) for s in range(40)]
    base = int((label > 0).sum())
    assert base not in sizes  # every move changes the mask
    smaller = sum(size < base for size in sizes)
    assert 10 <= smaller <= 30  # neither direction dominates, so size alone cannot order the masks


def test_perturbed_predictions_are_seeded_and_restore_the_weights():
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 2, 3, padding=1)
    original = {k: v.clone() for k, v in network.state_dict().items()}

    class Predictor:
        def __init__(self):
            self.network = network

        def predict_sliding_window_return_logits(self, image):
            return self.network(image[None])[0]

    images = {"a": np.random.default_rng(0).normal(size=(1, 12, 12)).astype(np.float32)}
    base = SimpleNamespace(predictor=Predictor, device=torch.device("cpu"), cascade_labels=None,
                           label_manager=LabelManager({"background": 0, "target": 1}, regions_class_order=None))
    pool = SimpleNamespace(image=images.get)
    masks = perturbed_predictions(base, pool, ["a"], (0.0, 1.0), seed=3, progress=False)
    again = perturbed_predictions(base, pool, ["a"], (0.0, 1.0), seed=3, progress=False)
    assert len(masks["a"]) == 2 and masks["a"][0].shape == (12, 12)
    assert all(np.array_equal(x, y) for x, y in zip(masks["a"], again["a"], strict=True))
    assert not np.array_equal(masks["a"][0], masks["a"][1])  # σ = 1 changes the prediction, σ = 0 does not
    assert all(torch.equal(v, original[k]) for k, v in network.state_dict().items())


# ---------------------------------------------------------------- crops around D


def test_disagreement_region_is_where_any_mask_differs():
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[1, 0, 0] = 1
    masks[2, 3, 3] = 1
    region = disagreement_region(masks)
    assert region.sum() == 2 and region[0, 0] and region[3, 3]


def test_window_is_bounded_inside_the_image_and_padded_where_the_image_is_smaller():
    # shifted inside at both borders
    assert window_start((2, 58), (16, 16), (100, 60)) == (0, 44)
    assert window_start((50, 30), (16, 16), (100, 60)) == (42, 22)
    image = np.arange(2 * 10 * 6, dtype=np.float32).reshape(2, 10, 6)
    window = crop(image, window_start((5, 3), (8, 8), (10, 6)), (8, 8))
    assert window.shape == (2, 8, 8)  # bounded size, leading axis kept
    assert np.all(window[:, :, 6:] == 0) and np.array_equal(window[:, :, :6], image[:, 1:9, :])


@pytest.mark.parametrize("shape, size", [((40, 30), (8, 8)), ((12, 10, 9), (4, 4, 4)), ((6, 6), (16, 16))])
def test_tiles_cover_d_exactly_once_with_bounded_windows(shape, size):
    rng = np.random.default_rng(0)
    region = rng.random(shape) < 0.1
    covered = np.zeros(shape, int)
    for start, core in tile_windows(region, size):
        assert core.shape == size
        placed = np.zeros([max(n, s + w) for n, s, w in zip(shape, start, size, strict=True)], bool)
        placed[tuple(slice(s, s + w) for s, w in zip(start, size, strict=True))] = core
        assert not placed[tuple(slice(n, None) for n in shape)].any()  # padding never counts as D
        covered += placed[tuple(slice(0, n) for n in shape)]
    assert np.array_equal(covered, region.astype(int))
    assert tile_windows(np.zeros(shape, bool), size) == []


def test_judge_input_channels_are_image_mask_and_consensus():
    image = np.ones((1, 4, 4), np.float32)
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[0, :2] = 1
    x = judge_input(image, masks, [1])
    assert x.shape == (2, 3, 4, 4)
    assert torch.equal(x[0, 1], torch.as_tensor(masks[0]).float()) and torch.allclose(x[1, 2], x[0, 2])
    assert x[0, 2, 0, 0] == 0.5 and x[0, 2, 3, 3] == 0


# ---------------------------------------------------------------- ranking objective


def differences(scores: torch.Tensor) -> torch.Tensor:
    return scores[:, None] - scores[None, :]


def test_right_order_has_lower_loss_than_wrong_order():
    targets = torch.tensor([0.9, 0.8, 0.5])
    right = pairwise_ranking_loss(differences(torch.tensor([3.0, 2.0, 1.0])), targets)
    wrong = pairwise_ranking_loss(differences(torch.tensor([1.0, 2.0, 3.0])), targets)
    assert right < wrong
    # hand-checked: pairs (0,1), (0,2), (1,2) with score gaps 1, 2, 1
    expected = np.mean([np.log1p(np.exp(-1)), np.log1p(np.exp(-2)), np.log1p(np.exp(-1))])
    assert float(right) == pytest.approx(expected)


def test_gradient_raises_the_better_mask_and_ties_give_no_pair():
    scores = torch.zeros(3, requires_grad=True)
    pairwise_ranking_loss(differences(scores), torch.tensor([0.5, 0.9, 0.7])).backward()
    # descent raises the best, lowers the worst; the middle one is pushed up and down equally at equal scores
    assert scores.grad[1] < 0 < scores.grad[0] and float(scores.grad[2]) == pytest.approx(0)
    flat = torch.zeros(2, requires_grad=True)
    loss = pairwise_ranking_loss(differences(flat), torch.tensor([0.8, 0.8]))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(flat.grad, torch.zeros(2))


def test_pair_margins_are_means_over_the_pairs_own_disagreement():
    masks = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]])
    maps = torch.tensor([[0.0, 1.0, 5.0, 5.0], [0.0, 3.0, 5.0, 5.0], [4.0, 3.0, 5.0, 5.0]])
    margins = pairwise_margins(maps, masks)
    assert margins[1, 0] == 2.0  # differ in voxel 1 only: 3 − 1
    assert margins[2, 0] == pytest.approx((4 + 2) / 2)  # differ in voxels 0 and 1
    assert torch.equal(margins, -margins.T) and torch.equal(margins.diagonal(), torch.zeros(3))


def test_region_mean_ignores_voxels_outside_d():
    maps = torch.tensor([[[1.0, 5.0], [9.0, 9.0]], [[3.0, 5.0], [0.0, 0.0]]])
    region = torch.tensor([[True, False], [False, False]])
    assert torch.equal(region_mean(maps, region), torch.tensor([1.0, 3.0]))
    assert torch.equal(region_mean(maps, torch.zeros(2, 2, dtype=torch.bool)), torch.zeros(2))


def test_ranking_steps_learn_a_known_order():
    """Masks of a disc shifted by 0 … 4 voxels from an edge in the image: the less shifted the better. Ranking
    steps on them lower the loss and order fresh shifts right."""
    grid = np.mgrid[:24, :24]

    def case(offset: int, center: tuple[int, int]):
        disc = ((grid[0] - center[0]) ** 2 + (grid[1] - center[1]) ** 2) < 36
        image = (disc * 2.0 - 1.0)[None].astype(np.float32)
        masks = np.stack([np.roll(disc, offset + k, 1) for k in range(5)]).astype(np.uint8)
        return image, disc.astype(np.int16), masks

    torch.manual_seed(0)
    network = RankingNet(3, 2, width=8)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    losses = []
    for step in range(40):
        image, label, masks = case(0, (10 + step % 4, 11))
        order = rng.permutation(5)
        losses.append(ranking_step(network, optimizer, image, label, masks[order], [1], (16, 16), None, rng))
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    judge = LearnedJudge(network, [1], 3, 2, (16, 16), 8, {})
    image, label, masks = case(0, (12, 12))
    scores = judge.score(image, masks)
    assert judge_reliability({"c": scores}, {"c": true_dice(masks, label, [1])})["pairwise/accuracy"] >= 0.9


# ---------------------------------------------------------------- the judge and its file


@pytest.mark.parametrize("shape, dim", [((1, 1, 30, 20), 2), ((1, 20, 30, 20), 3), ((2, 30, 20), 2)])
def test_learned_judge_scores_and_round_trips(shape, dim, tmp_path):
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    masks = np.zeros((3, *shape[1:]), np.uint8)
    masks[1, ..., 5:9, 5:9] = 1
    masks[2, ..., 4:10, 4:10] = 1
    in_channels = shape[0] + 2
    torch.manual_seed(0)
    judge = LearnedJudge(RankingNet(in_channels, dim, 4), [1], in_channels, dim, (8,) * dim, 4, {"val/cases": 2})
    scores = judge.score(image, masks)
    assert scores.shape == (3,) and np.all(np.isfinite(scores)) and len(np.unique(scores)) > 1
    assert np.array_equal(judge.score(image, masks[[0, 0]]), np.zeros(2))  # identical masks: no D, no preference
    judge.save(tmp_path / "j.pth")
    loaded = load_learned_judge(tmp_path / "j.pth")
    assert np.allclose(loaded.score(image, masks), scores) and loaded.metrics == {"val/cases": 2}


def test_learned_judge_missing_or_old_file_says_how_to_train_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="Train it first with nnUNetv2_rndpo_train_judge"):
        load_learned_judge(tmp_path / "nope.pth", torch.device("cpu"))
    torch.save({"state_dict": {}, "classes": [1], "in_channels": 2, "dim": 2, "metrics": {}}, tmp_path / "old.pth")
    with pytest.raises(ValueError, match="earlier version of nnunetv2_rndpo .* Retrain it: nnUNetv2_rndpo_train_judge"):
        load_learned_judge(tmp_path / "old.pth")


@pytest.mark.parametrize("changes, message", [
    ({"epochs": 0}, "--epochs must be >= 1"), ({"masks_per_step": 1}, "--samples-per-case .* must be >= 2"),
    ({"crop_size": 4}, "--crop-size must be >= 8"), ({"weight_noise": (-0.1,)}, "--weight-noise values >= 0"),
    ({"masks": "proposals"}, "--training-masks must be one of"), ({"targets": "size"}, "--targets must be one of"),
    ({"model": "unet"}, "--model must be one of")])
def test_training_settings_are_validated(changes, message):
    with pytest.raises(ValueError, match=message):
        JudgeTraining(**changes)



def test_size_free_targets_order_masks_only_beyond_their_size():
    """Two masks of different size: any two Dice values lie on a line in size, so size-free targets order
    nothing (loss 0). Masks of one size (shifted) keep their order, and the step's loss is the plain one."""
    label = np.zeros((16, 16), np.int16)
    label[5:10, 5:10] = 1
    image = (label * 2.0 - 1.0)[None].astype(np.float32)
    grown = np.stack([label, np.pad(np.ones((7, 7), np.int16), ((4, 5), (4, 5)))]).astype(np.uint8)
    shifted = np.stack([np.roll(label, k, 1) for k in range(3)]).astype(np.uint8)

    def loss(masks, size_free):
        torch.manual_seed(0)
        network = RankingNet(3, 2, width=4)
        optimizer = torch.optim.SGD(network.parameters(), lr=0.0)
        return ranking_step(network, optimizer, image, label, masks, [1], (16, 16), None, np.random.default_rng(0),
                            size_free=size_free)

    assert loss(grown, False) > 0 and loss(grown, True) == 0
    assert loss(shifted, True) == pytest.approx(loss(shifted, False)) and loss(shifted, False) > 0
