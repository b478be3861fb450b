"""The learned judge's training loop (fast, no nnU-Net): seeded, every step counted, the caller's RNG untouched.

:func:`~nnunetv2_rndpo.judge_training.train_learned_judge` around it (proposals of the labeled cases, the
held-out report) runs end to end in tests/test_e2e_toolkit.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from nnunetv2_rndpo.judge_training import fit_ranking_net
from nnunetv2_rndpo.learned_judge import JudgeTraining

SIZE = (12, 12)


def tiny_cases(n: int = 3) -> tuple[dict, dict]:
    """2D cases: an image ``(1, 16, 16)``, a label ``(1, 16, 16)`` with a square, and 3 proposals of the square
    grown by 0, 1 and 2 pixels."""
    cases, predictions = {}, {}
    for i in range(n):
        label = np.zeros((1, 16, 16), np.uint8)
        label[0, 4 + i:10 + i, 5:11] = 1
        image = label.astype(np.float32) + np.random.default_rng(i).normal(0, 0.1, label.shape).astype(np.float32)
        masks = np.zeros((3, 16, 16), np.uint8)
        for grown in range(3):
            masks[grown, 4 + i - grown:10 + i + grown, 5 - grown:11 + grown] = 1
        cases[f"case_{i}"] = (image, label)
        predictions[f"case_{i}"] = masks
    return cases, predictions


def fit(seed: int = 0):
    cases, predictions = tiny_cases()
    training = JudgeTraining(epochs=2, masks_per_step=3, width=4, seed=seed)
    return fit_ranking_net(cases, sorted(cases), predictions, 1 + 2 * 1, [1], None, SIZE, training, progress=False)


def test_the_loop_is_seeded_and_counts_each_step_with_a_loss():
    network, steps, losses = fit(seed=0)
    again, steps_again, losses_again = fit(seed=0)
    assert steps == steps_again and losses == losses_again
    assert all(torch.equal(a, b) for a, b in zip(network.state_dict().values(), again.state_dict().values(),
                                                 strict=True))
    assert 0 < steps <= 2 * 3 and len(losses) <= 3  # at most one step per case and epoch; losses of the last epoch
    assert all(math.isfinite(loss) for loss in losses)
    other, _, _ = fit(seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(network.state_dict().values(), other.state_dict().values(),
                                                     strict=True))


def test_the_loop_leaves_the_global_torch_generator_as_it_was():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    fit()
    assert torch.equal(torch.get_rng_state(), before)


def test_cross_validation_masks_come_from_the_fold_that_held_each_case_out(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import pytest

    from nnunetv2_rndpo import judge_training

    folder = tmp_path / "nnUNetTrainer__nnUNetPlans__2d"
    for fold, trained in ((0, True), (1, True), (2, False), ("all", True)):
        (folder / f"fold_{fold}").mkdir(parents=True)
        if trained:
            (folder / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"")
    held_out = {0: ["a", "b"], 1: ["c", "a"]}  # fold 1 also lists a case fold 0 held out: the first fold's masks stay
    loaded = []

    def load(dataset, configuration, fold, trainer, plans, checkpoint, device):
        loaded.append((fold, plans))
        return SimpleNamespace(fold=fold)

    def proposals(model, settings, progress, log):
        masks = {c: np.full((2, 4, 4), model.fold, np.uint8) for c in held_out[model.fold]}
        return SimpleNamespace(case_ids=held_out[model.fold]), SimpleNamespace(masks=masks.__getitem__)

    monkeypatch.setattr(judge_training, "load_base_model", load)
    monkeypatch.setattr(judge_training, "labeled_proposals", proposals)
    base = SimpleNamespace(model_folder=folder, fold="all", checkpoint_name="checkpoint_final.pth",
                           dataset_name="Dataset001_X", configuration_name="2d", trainer_name="nnUNetTrainer",
                           device="cpu")
    masks = judge_training.cross_validation_masks(base, None, ["a", "c", "d"], progress=False, log=lambda *a: None)
    assert sorted(masks) == ["a", "c"]  # d: no trained fold held it out; b: not a training case of this judge
    assert masks["a"].max() == 0 and masks["c"].max() == 1
    assert loaded == [(0, "nnUNetPlans"), (1, "nnUNetPlans")]  # fold 2 has no checkpoint, fold all is not a fold
    loaded.clear()
    judge_training.cross_validation_masks(SimpleNamespace(**{**vars(base), "fold": 0}), None, ["c"], False,
                                          lambda *a: None)
    assert [f for f, _ in loaded] == [1]  # never the judge's own fold
    for fold in (0, 1):
        (folder / f"fold_{fold}" / "checkpoint_final.pth").unlink()
    with pytest.raises(FileNotFoundError, match="nnUNetv2_train Dataset001_X 2d 0 -tr nnUNetTrainer"):
        judge_training.cross_validation_masks(base, None, ["a"], False, lambda *a: None)
