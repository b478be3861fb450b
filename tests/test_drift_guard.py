"""The drift guard (fast, no training): which cases it holds out, KL of the policy to the reference on them,
rollback to the last accepted weights with a decayed learning rate.

A real network (a 1x1x1 convolution) and a stand-in for the nnU-Net predictor the phase hands in: it predicts the
whole case with the network it was built over, as ``predict_sliding_window_return_logits`` does, without tiling.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nnunetv2_rndpo.config import RNDPOConfig
from nnunetv2_rndpo.drift_guard import GUARD_KEYS, DriftGuard


class WholeCasePredictor:
    def __init__(self, network: torch.nn.Module):
        self.network = network.eval()

    def predict_sliding_window_return_logits(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.network(image[None])[0]


def make_guard(**config) -> tuple[DriftGuard, SimpleNamespace, list[str]]:
    torch.manual_seed(0)
    logged: list[str] = []
    trainer = SimpleNamespace(network=torch.nn.Conv3d(1, 3, kernel_size=1), is_ddp=False,
                              lr_scheduler=SimpleNamespace(initial_lr=0.01), print_to_log_file=logged.append,
                              label_manager=SimpleNamespace(has_regions=False, foreground_regions=None))

    def predictor(network=None):  # the phase's _policy_predictor: over ``network``, else a copy of the policy
        return WholeCasePredictor(copy.deepcopy(network if network is not None else trainer.network))

    guard = DriftGuard(trainer, RNDPOConfig(**config), rank=0, predictor=predictor)
    return guard, trainer, logged


def fake_pool(n: int) -> SimpleNamespace:
    images = {f"case_{i:02d}": np.random.default_rng(i).normal(size=(1, 4, 4, 3)).astype(np.float32) for i in range(n)}
    return SimpleNamespace(case_ids=sorted(images), image=images.__getitem__,
                           previous_stage=lambda case_id: np.zeros((4, 4, 3), np.int16))


def shift_policy(trainer, amount: float) -> None:
    with torch.no_grad():
        trainer.network.bias[0] += amount


def test_the_guard_cases_are_drawn_with_the_seed_and_none_from_a_small_pool():
    guard, _, logged = make_guard(guard_num_cases=3, seed=7)
    cases = guard.choose_cases(fake_pool(10))
    assert len(cases) == 3 and cases == sorted(cases) and guard.cases == cases
    assert make_guard(guard_num_cases=3, seed=7)[0].choose_cases(fake_pool(10)) == cases
    assert make_guard(guard_num_cases=3, seed=8)[0].choose_cases(fake_pool(10)) != cases
    assert logged == []
    assert guard.choose_cases(fake_pool(5)) == [] and guard.cases == []  # 5 < 2 x 3: too few left to mine
    assert logged == ["RN-DPO guard: pool of 5 cases is too small to hold out 3; drift guard off"]
    off, _, logged = make_guard(guard_num_cases=0)
    assert off.choose_cases(fake_pool(10)) == [] and logged == []


def test_a_guard_without_cases_measures_nothing():
    guard, trainer, _ = make_guard(guard_num_cases=0, guard_max_kl=1e-6)
    guard.choose_cases(fake_pool(10))
    guard.prepare(fake_pool(10), copy.deepcopy(trainer.network), None)
    assert guard.check() == {} and guard.reference_logits == {}


def test_an_unchanged_policy_has_no_drift_and_a_moved_one_a_positive_kl():
    guard, trainer, _ = make_guard(guard_num_cases=2, guard_max_kl=None)
    pool = fake_pool(6)
    guard.choose_cases(pool)
    guard.prepare(pool, copy.deepcopy(trainer.network), None)
    assert set(guard.reference_logits) == set(guard.cases)
    image, logits = guard.reference_logits[guard.cases[0]]
    assert image.shape == (1, 4, 4, 3) and logits.shape == (3, 4, 4, 3)
    row = guard.check()
    assert set(row) == set(GUARD_KEYS)
    assert row["guard/kl"] == pytest.approx(0.0, abs=1e-6) and row["guard/triggered"] == 0.0
    shift_policy(trainer, 2.0)
    row = guard.check()
    assert row["guard/kl"] > 0.01 and row["guard/triggered"] == 0.0 and row["guard/rollbacks"] == 0.0  # no limit


def test_above_guard_max_kl_the_policy_goes_back_to_the_last_accepted_weights_and_the_lr_decays():
    guard, trainer, logged = make_guard(guard_num_cases=2, guard_max_kl=0.05, guard_lr_decay=0.5)
    pool = fake_pool(6)
    guard.choose_cases(pool)
    guard.prepare(pool, copy.deepcopy(trainer.network), None)
    shift_policy(trainer, 0.05)  # a small step: below the limit, accepted
    small = guard.check()
    assert 0 < small["guard/kl"] < 0.05 and small["guard/triggered"] == 0.0
    accepted = copy.deepcopy(trainer.network.state_dict())
    shift_policy(trainer, 5.0)  # a large one: rolled back to the accepted weights, not to the reference
    large = guard.check()
    assert large["guard/kl"] > 0.05 and large["guard/triggered"] == 1.0 and large["guard/rollbacks"] == 1.0
    for key, value in trainer.network.state_dict().items():
        assert torch.equal(value, accepted[key])
    assert trainer.lr_scheduler.initial_lr == pytest.approx(0.005)
    assert logged[-1].startswith("RN-DPO guard: KL ") and "> 0.05; rolled back" in logged[-1]
    assert guard.check() == {"guard/kl": pytest.approx(small["guard/kl"], abs=1e-6), "guard/triggered": 0.0,
                             "guard/rollbacks": 1.0}  # the count is kept


def test_a_cascade_guard_case_carries_the_previous_stage_as_one_hot_channels():
    guard, trainer, _ = make_guard(guard_num_cases=1)
    trainer.network = torch.nn.Conv3d(3, 3, kernel_size=1)  # image + one channel per foreground label (1, 2)
    pool = fake_pool(4)
    guard.choose_cases(pool)
    guard.prepare(pool, copy.deepcopy(trainer.network), cascade_labels=[1, 2])
    (image, _), = guard.reference_logits.values()
    assert image.shape == (3, 4, 4, 3) and torch.equal(image[1:], torch.zeros(2, 4, 4, 3))
