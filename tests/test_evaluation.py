"""The test Dice per case and its mean, and the base model's cached row 0 (fast, no network)."""

import json
import math

import pytest
import torch

from nnunetv2_rndpo.evaluation import BASE_TEST_DICE_FILE, DiceCurve, DicePerCase, weights_key


def test_the_mean_leaves_out_cases_without_any_class_and_the_row_keeps_every_case():
    dice = DicePerCase.from_cases({"a": 0.6, "b": math.nan, "c": 0.8})
    assert dice.mean == pytest.approx(0.7)
    row = dice.row()
    assert row["eval/dice"] == pytest.approx(0.7) and list(row["eval/dice_per_case"]) == ["a", "b", "c"]
    assert math.isnan(DicePerCase.from_cases({"a": math.nan}).mean)
    validation = dice.row("validation")  # the validation split's keys: a curve of its own beside the test one
    assert set(validation) == {"eval/val_dice", "eval/val_dice_per_case"}
    assert validation["eval/val_dice"] == row["eval/dice"]


def test_the_validation_split_is_read_from_images_val_and_an_empty_or_missing_one_gives_none(tmp_path):
    from nnunetv2_rndpo.evaluation import preprocessed_test_set

    assert preprocessed_test_set(tmp_path, tmp_path / "cache", None, None, {}, split="validation") is None
    (tmp_path / "imagesVal").mkdir()
    (tmp_path / "labelsVal").mkdir()
    assert preprocessed_test_set(tmp_path, tmp_path / "cache", None, None, {}, split="validation") is None


class _Trainer:
    def __init__(self):
        self.logged = []

    def print_to_log_file(self, *args):
        self.logged.append(" ".join(map(str, args)))


class _Pool:
    case_ids = ["case_1", "case_0"]


def _curve(tmp_path, measured):
    curve = DiceCurve(_Trainer(), _Pool(), tmp_path)
    calls = []

    def evaluate():
        calls.append(1)
        return measured

    curve.evaluate = evaluate
    return curve, calls


def test_base_dice_is_measured_once_per_base_and_kept_per_case(tmp_path):
    reference = torch.nn.Linear(2, 1)
    measured = DicePerCase.from_cases({"case_0": 0.5, "case_1": 0.7})
    curve, calls = _curve(tmp_path, measured)
    assert curve.base_dice(reference) == measured and len(calls) == 1
    cached = json.loads((tmp_path / BASE_TEST_DICE_FILE).read_text())
    key = weights_key(reference.state_dict(), _Pool.case_ids)
    assert cached == {key: {"dice": pytest.approx(0.6), "dice_per_case": {"case_0": 0.5, "case_1": 0.7}}}

    again, calls = _curve(tmp_path, None)  # a second arm from the same base reads it
    assert again.base_dice(reference) == measured and not calls
    assert "measured before" in again.trainer.logged[0]


def test_a_base_dice_cached_without_per_case_values_is_measured_again(tmp_path):
    reference = torch.nn.Linear(2, 1)
    key = weights_key(reference.state_dict(), _Pool.case_ids)
    (tmp_path / BASE_TEST_DICE_FILE).write_text(json.dumps({key: 0.6, "other": 0.1}))
    measured = DicePerCase.from_cases({"case_0": 0.5, "case_1": 0.7})
    curve, calls = _curve(tmp_path, measured)
    assert curve.base_dice(reference).per_case == measured.per_case and len(calls) == 1
    cached = json.loads((tmp_path / BASE_TEST_DICE_FILE).read_text())
    assert cached["other"] == 0.1 and cached[key]["dice_per_case"] == measured.per_case
