"""Dice as nnU-Net reports it, and the peak / sustained / final / worst-drop reducers."""

import math

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_rndpo.metrics import curve_summary, dice_per_class, foreground_mean, without_size_trend


def test_dice_by_hand():
    reference = np.array([0, 1, 1, 1, 2, 2])
    prediction = np.array([0, 1, 1, 0, 2, 1])
    dice = dice_per_class(prediction, reference, [1, 2])
    assert dice == {"1": pytest.approx(2 * 2 / (2 * 2 + 1 + 1)), "2": pytest.approx(2 / 3)}


def test_empty_mask_rule():
    empty = np.zeros((3, 3), int)
    assert math.isnan(dice_per_class(empty, empty, [1])["1"])
    assert dice_per_class(empty, empty, [1], empty_value=1.0)["1"] == 1.0
    assert foreground_mean({"1": math.nan, "2": 0.5}) == 0.5
    assert math.isnan(foreground_mean({"1": math.nan}))


@pytest.mark.parametrize("ignore_label", [None, 3])
def test_matches_nnunet_compute_metrics(tmp_path, ignore_label):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 4 if ignore_label else 3, (6, 7, 8)).astype(np.uint8)
    prediction = rng.integers(0, 3, (6, 7, 8)).astype(np.uint8)
    prediction[reference == 2] = 2  # make class 2 good and class 1 poor
    files = []
    for name, array in (("ref", reference), ("pred", prediction)):
        files.append(str(tmp_path / f"{name}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(array), files[-1])
    classes = [1, 2, (1, 2)]
    theirs = compute_metrics(files[0], files[1], SimpleITKIO(), classes, ignore_label)["metrics"]
    ours = dice_per_class(prediction, reference, classes, ignore_label=ignore_label)
    for c in classes:
        assert ours[str(c)] == pytest.approx(theirs[c]["Dice"])


def test_curve_summary_by_hand():
    summary = curve_summary([0.80, 0.85, 0.83, 0.78, 0.82])
    assert summary["base"] == 0.80
    assert summary["peak"] == 0.85
    assert summary["sustained"] == pytest.approx((0.78 + 0.82) / 2)  # last half of the 4 evaluations
    assert summary["final"] == 0.82
    assert summary["worst_drop"] == pytest.approx(0.02)
    assert summary["delta_peak"] == pytest.approx(0.05)
    assert summary["delta_final"] == pytest.approx(0.02)


def test_curve_summary_odd_length_takes_the_middle_point():
    summary = curve_summary([0.5, 0.6, 0.7, 0.9])
    assert summary["sustained"] == pytest.approx((0.7 + 0.9) / 2)
    assert curve_summary([0.5, 0.4])["worst_drop"] == pytest.approx(0.1)


@pytest.mark.parametrize("curve, message", [([0.5], "at least one more point"), ([0.5, math.nan], "non-finite")])
def test_curve_summary_rejects_bad_curves(curve, message):
    with pytest.raises(ValueError, match=message):
        curve_summary(curve)


def test_without_size_trend_leaves_what_size_does_not_explain():
    sizes = np.array([10.0, 14.0, 18.0, 22.0])
    assert np.all(without_size_trend(0.9 - 0.01 * sizes, sizes) == 0)  # a line in size: nothing left
    assert np.allclose(without_size_trend([0.5, 0.7, 0.6], [8, 8, 8]), [-0.1, 0.1, 0.0])  # one size: minus the mean
    residual = without_size_trend(0.9 - 0.01 * sizes + np.array([0, 0.02, 0, 0]), sizes)
    assert int(np.argmax(residual)) == 1  # the mask above the line ranks first
