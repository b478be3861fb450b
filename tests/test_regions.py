"""Region-based datasets: classes and regions exactly as nnU-Net's ``LabelManager`` gives them (ints and tuples).

``dataset.json`` labels ``{"background": 0, "whole": [1, 2], "b": 2}`` give the regions ``[(1, 2), 2]``: a region
made of one label is an int. Every consumer (metrics, objective, judges, proposals, learned judge, the
pseudo-label target) goes through :func:`nnunetv2_rndpo.metrics.region_labels`.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nnunetv2_rndpo.judges import agreement_scores, foreground_voxels, oracle_scores, uncertainty_scores
from nnunetv2_rndpo.learned_judge import corrupt_mask, judge_input
from nnunetv2_rndpo.metrics import class_key, dice_per_class, in_class, region_labels
from nnunetv2_rndpo.objective import agreement_loss, mask_log_likelihood, pair_log_ratios

BRATS_LIKE = {"background": 0, "whole": [1, 2], "b": 2}


def label_manager(labels: dict = BRATS_LIKE, regions_class_order=(1, 2)):
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    return LabelManager(labels, regions_class_order=list(regions_class_order) if regions_class_order else None)


def test_label_manager_gives_ints_and_tuples():
    # what the rest of this file relies on: nnU-Net 2.8.1 mixes the two
    assert label_manager().foreground_regions == [(1, 2), 2]


@pytest.mark.parametrize(("entry", "labels", "key"), [
    (2, (2,), "2"), (np.int64(2), (2,), "2"), ((1, 2), (1, 2), "(1, 2)"), ([1, 2], (1, 2), "(1, 2)"),
    ((2,), (2,), "(2,)"),
])
def test_region_labels_and_summary_keys(entry, labels, key):
    assert region_labels(entry) == labels
    assert class_key(entry) == key
    assert in_class(np.array([0, 1, 2, 3]), entry).tolist() == [v in labels for v in (0, 1, 2, 3)]


def test_empty_region_is_an_error():
    with pytest.raises(ValueError, match="at least one label"):
        region_labels(())


def test_dice_with_int_and_tuple_regions_matches_nnunet(tmp_path):
    import SimpleITK as sitk
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 3, (5, 6, 7)).astype(np.uint8)
    prediction = np.where(rng.random(reference.shape) < 0.8, reference, rng.integers(0, 3, reference.shape))
    regions = label_manager().foreground_regions
    ours = dice_per_class(prediction, reference, regions)
    assert set(ours) == {"(1, 2)", "2"}

    files = [str(tmp_path / f"{n}.nii.gz") for n in ("ref", "pred")]
    for f, array in zip(files, (reference, prediction.astype(np.uint8)), strict=True):
        sitk.WriteImage(sitk.GetImageFromArray(array), f)
    theirs = compute_metrics(files[0], files[1], SimpleITKIO(), regions, None)["metrics"]
    for region in regions:
        assert ours[class_key(region)] == pytest.approx(theirs[region]["Dice"])


def test_log_likelihood_int_region_equals_one_label_tuple():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    with_int, valid = mask_log_likelihood(logits, labels, regions=[(1, 2), 2])
    with_tuple, _ = mask_log_likelihood(logits, labels, regions=[(1, 2), (2,)])
    assert torch.equal(with_int, with_tuple) and valid.all()
    # by hand at one voxel: label 2 is in both regions
    z = logits[0, :, 0, 0]
    labels[0, 0, 0] = 2
    by_hand = torch.nn.functional.logsigmoid(z).sum()
    assert mask_log_likelihood(logits, labels, regions=[(1, 2), 2])[0][0, 0, 0] == pytest.approx(by_hand.item())


def test_pair_log_ratios_and_agreement_with_int_regions():
    torch.manual_seed(1)
    logits, reference = torch.randn(1, 2, 6, 6), torch.randn(1, 2, 6, 6)
    chosen = torch.randint(0, 3, (1, 6, 6))
    rejected = chosen.clone()
    rejected[0, :2] = 0
    ratios = pair_log_ratios(logits, reference, chosen, rejected, regions=[(1, 2), 2], ignore_label=3)
    assert torch.isfinite(ratios.chosen_logratios).all()
    assert torch.isfinite(agreement_loss(logits, chosen, rejected, regions=[(1, 2), 2], ignore_label=3)).all()


def test_judges_with_int_regions():
    regions = [(1, 2), 2]
    label = np.zeros((8, 8), np.uint8)
    label[2:6, 2:6] = 1
    label[3:5, 3:5] = 2
    worse = label.copy()
    worse[3:5, 3:5] = 1  # the inner region is lost
    masks = np.stack([label, worse, label])
    assert foreground_voxels(masks, regions).tolist() == [16, 16, 16]
    scores, dice = oracle_scores(masks, label, regions, 0.0, np.random.default_rng(0))
    assert dice.tolist() == [1.0, 0.5, 1.0]  # whole region right, region 2 empty vs 4 voxels
    assert np.argmin(agreement_scores(masks, regions)) == 1
    probabilities = np.stack([np.isin(label, (1, 2)), label == 2]).astype(np.float16)  # one channel per region
    assert np.argmin(uncertainty_scores(masks, probabilities, regions, has_regions=True)) == 1


def test_learned_judge_input_and_corruptions_with_int_regions():
    regions = [(1, 2), 2]
    label = np.zeros((8, 8), np.uint8)
    label[2:6, 2:6] = 1
    label[3:5, 3:5] = 2
    x = judge_input(label[None].astype(np.float32), label[None], regions)
    assert x.shape == (1, 1 + 2 * len(regions), 8, 8)  # image, mask and consensus per region, full resolution
    assert x[0, 1].sum() == 16 and x[0, 2].sum() == 4  # region (1, 2) holds labels 1 and 2; region 2 only 2
    corrupted = corrupt_mask(label, regions, np.random.default_rng(0))
    assert corrupted.shape == label.shape and set(np.unique(corrupted)) <= {0, 1, 2}


def test_threshold_proposals_of_a_region_dataset_use_nnunets_conversion():
    from nnunetv2_rndpo.proposals import ProposalSpec, propose_case

    lm = label_manager()
    logits = torch.zeros(2, 6, 6)
    logits[0, 1:5, 1:5] = 2.0  # whole
    logits[1, 2:4, 2:4] = 0.5  # b, less sure: σ(0.5) = 0.62
    predictor = SimpleNamespace(configuration_manager=SimpleNamespace(patch_size=(6, 6)), use_mirroring=False,
                                predict_sliding_window_return_logits=lambda image: logits.clone())
    specs = [ProposalSpec("mirror", ()), ProposalSpec("threshold", 1.5)]
    masks, probabilities = propose_case(predictor, torch.zeros(1, 6, 6), specs, lm, ())
    expected = np.zeros((6, 6), np.uint8)
    expected[1:5, 1:5] = 1
    expected[2:4, 2:4] = 2
    assert np.array_equal(masks[0], expected)  # regions_class_order [1, 2]: region 2 written last
    expected[2:4, 2:4] = 1  # 0.62 / 1.5 < 0.5: region b drops out, whole stays (0.88 / 1.5 > 0.5)
    assert np.array_equal(masks[1], expected)
    assert probabilities.shape == (2, 6, 6)


def test_pseudo_label_target_has_the_ignore_channel():
    from nnunetv2_rndpo.trainer import region_target

    label_map = torch.tensor([[[[0, 1, 2, 3]]]])
    target = region_target(label_map, [(1, 2), 2], ignore_label=3)
    assert target[0, :, 0].tolist() == [[0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert region_target(label_map, [(1, 2), 2], None).shape[1] == 2
