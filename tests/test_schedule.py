"""The step's batch split and the per-iteration learning-rate warm-up on top of nnU-Net's poly schedule."""

import pytest
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from nnunetv2_rndpo.schedule import BatchSplit, LinearWarmup, split_batch, warmup_factor, warmup_iterations


@pytest.mark.parametrize(("batch", "sft_weight", "fraction", "expected"), [
    (2, 1.0, 0.5, (1, 1)),      # 3d_fullres on Hippocampus: nnU-Net's batch of 2, not 2 + 2
    (29, 1.0, 0.5, (15, 14)),   # 2d: round(14.5) = 14 labeled, 15 pairs
    (12, 0.5, 0.25, (9, 3)),
    (12, 0.0, 0.5, (12, 0)),    # anchor off: every sample is a pair
    (1, 1.0, 0.5, (1, 1)),      # a batch of 1 cannot be split
    (4, 1.0, 0.9, (1, 3)),      # at least one pair
    (4, 1.0, 0.01, (3, 1)),     # at least one labeled sample
])
def test_split_batch_keeps_the_step_at_the_planned_batch(batch, sft_weight, fraction, expected):
    split = split_batch(batch, sft_weight, fraction)
    assert split == BatchSplit(*expected)
    assert split.preference + split.labeled == max(batch, 2 if sft_weight else 1)


def test_no_fraction_keeps_a_full_labeled_batch_beside_the_pairs():
    assert split_batch(2, 1.0, None) == (2, 2) and split_batch(29, 0.5, None) == (29, 29)
    assert split_batch(2, 0.0, None) == (2, 0)


def test_warmup_is_linear_and_reaches_the_scheduled_rate():
    assert warmup_iterations(0.05, 160) == 8 and warmup_iterations(0.0, 160) == 0 and warmup_iterations(0.05, 10) == 1
    assert [warmup_factor(i, 4) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def optimizer_and_poly(initial_lr=1e-3, epochs=4):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=initial_lr)
    return optimizer, PolyLRScheduler(optimizer, initial_lr, epochs)


def run_epochs(optimizer, poly, warmup, epochs, iterations, first_epoch=0):
    """nnU-Net's loop: poly step at each epoch start, then the trainer's steps; returns the rate of every step."""
    rates = []
    for epoch in range(first_epoch, epochs):
        poly.step(epoch)
        warmup.start_epoch(epoch * iterations)
        for _ in range(iterations):
            warmup.before_step()
            rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_warmup_scales_nnunets_poly_schedule_per_iteration():
    optimizer, poly = optimizer_and_poly()
    rates = run_epochs(optimizer, poly, LinearWarmup(optimizer, warmup=6), epochs=4, iterations=4)
    poly_rate = [1e-3 * (1 - epoch / 4) ** 0.9 for epoch in range(4)]
    expected = [poly_rate[i // 4] * min(1.0, (i + 1) / 6) for i in range(16)]
    assert rates == pytest.approx(expected)
    assert rates[5] == pytest.approx(poly_rate[1])  # step 6 (second epoch) is the first at the full rate
    assert rates[0] == pytest.approx(1e-3 / 6)


def test_no_warmup_leaves_the_schedule_alone_and_a_resume_continues_it():
    optimizer, poly = optimizer_and_poly()
    plain = run_epochs(optimizer, poly, LinearWarmup(optimizer, warmup=0), epochs=4, iterations=3)
    assert plain == pytest.approx([1e-3 * (1 - e / 4) ** 0.9 for e in range(4) for _ in range(3)])

    optimizer, poly = optimizer_and_poly()
    whole = run_epochs(optimizer, poly, LinearWarmup(optimizer, warmup=8), epochs=4, iterations=3)
    optimizer, poly = optimizer_and_poly()  # --c from epoch 2: a fresh trainer, same iteration count
    resumed = run_epochs(optimizer, poly, LinearWarmup(optimizer, warmup=8), epochs=4, iterations=3, first_epoch=2)
    assert resumed == pytest.approx(whole[6:])
    assert whole[6] < 1e-3 * (1 - 2 / 4) ** 0.9  # still warming up at the resumed epoch
