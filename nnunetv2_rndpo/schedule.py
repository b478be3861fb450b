"""What one step of the preference phase trains on, and at which learning rate.

- :func:`split_batch`: with the supervised anchor on, the step's batch is split between preference pairs and
  labeled samples, so a step sees as many samples as nnU-Net's own step (docs/performance.md).
- :class:`LinearWarmup`: a linear learning-rate warm-up per iteration, on top of nnU-Net's per-epoch poly
  schedule, so that the first steps of fine-tuning do not move a trained model by a full learning rate.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class BatchSplit(NamedTuple):
    """Samples per step: preference pairs and labeled samples (0 when the supervised anchor is off)."""

    preference: int
    labeled: int


def split_batch(batch_size: int, sft_weight: float, sft_batch_fraction: float | None) -> BatchSplit:
    """Splits a step's batch of ``batch_size`` samples between preference pairs and labeled samples.

    Args:
        batch_size: samples per step (``batch_size`` of the config, or the batch size nnU-Net planned).
        sft_weight: weight of the supervised anchor; 0 gives every sample to the pairs.
        sft_batch_fraction: share of the batch given to labeled samples when ``sft_weight`` > 0; None = no split,
            ``batch_size`` pairs and ``batch_size`` labeled samples (twice the batch).

    Returns:
        ``BatchSplit(preference, labeled)`` with ``labeled = round(fraction · batch_size)`` and the rest to the
        pairs, each at least 1. A batch of 1 cannot be split: it becomes 1 pair + 1 labeled sample.

    Assumption: half and half by default (``sft_batch_fraction`` 0.5). Both terms of the loss are means over
    their own samples, so the split changes their noise, not their weight (``sft_weight`` does that).
    """
    if sft_weight == 0:
        return BatchSplit(batch_size, 0)
    if sft_batch_fraction is None:
        return BatchSplit(batch_size, batch_size)
    labeled = min(max(1, round(sft_batch_fraction * batch_size)), max(1, batch_size - 1))
    return BatchSplit(max(1, batch_size - labeled), labeled)


def warmup_iterations(warmup_fraction: float, total_iterations: int) -> int:
    """Iterations of the warm-up: ``ceil(warmup_fraction · total_iterations)`` (0 = no warm-up)."""
    return math.ceil(warmup_fraction * total_iterations)


def warmup_factor(iteration: int, warmup: int) -> float:
    """Learning-rate factor of iteration ``iteration`` (0-based) of a linear warm-up over ``warmup`` iterations.

    ``(iteration + 1) / warmup`` for ``iteration < warmup``, else 1: the first step already moves (by
    ``1 / warmup`` of the rate) and step ``warmup − 1`` reaches the scheduled rate.
    """
    return 1.0 if iteration >= warmup else (iteration + 1) / warmup


class LinearWarmup:
    """Scales the optimizer's learning rates by :func:`warmup_factor`, one iteration at a time.

    nnU-Net sets the learning rate once per epoch (``PolyLRScheduler.step`` in ``on_train_epoch_start``);
    :meth:`start_epoch` reads that scheduled rate, and :meth:`before_step` sets
    ``scheduled · warmup_factor(iteration)`` before each optimizer step. The iteration counts over the whole
    phase (``epoch · num_iterations_per_epoch + step``), so a run resumed with ``--c`` continues the warm-up
    where it was.

    Args:
        optimizer: the trainer's optimizer.
        warmup: warm-up iterations (:func:`warmup_iterations`); 0 leaves the rates alone.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: int):
        self.optimizer, self.warmup = optimizer, warmup
        self.start_epoch(0)

    def start_epoch(self, first_iteration: int) -> None:
        """Records the rates nnU-Net's schedule set for this epoch; ``first_iteration`` is its first step."""
        self.scheduled = [group["lr"] for group in self.optimizer.param_groups]
        self.iteration = first_iteration

    def before_step(self) -> float:
        """Sets the rates of the coming optimizer step and returns the factor applied."""
        factor = warmup_factor(self.iteration, self.warmup)
        for group, lr in zip(self.optimizer.param_groups, self.scheduled, strict=True):
            group["lr"] = lr * factor
        self.iteration += 1
        return factor
