"""What a preference run tells its user before and while it trains (docs/trainer.md).

The trainer prints these lines through nnU-Net's ``print_to_log_file``, so they also land in
``training_log_*.txt``: the effective schedule first (the defaults are a long GPU schedule), a note for
very large pool cases before their proposals, the mined pairs, and a time estimate after the first
iterations.
"""

from __future__ import annotations

import math

import numpy as np

from nnunetv2_rndpo.mining import Pair

TIMED_ITERATIONS = 5  # the time estimate is printed after this many iterations (after a first, warm-up one)
LARGE_CASE_FACTOR = 4.0  # a pool case this many times the median voxel count gets a note before its proposals


def schedule_summary(config, trainer_name: str, batch_size: int, config_file: str | None) -> str:
    """The line a run starts with: the schedule and every choice that decides what it learns and how long it takes."""
    cfg = config
    judged = (f"pairs from {cfg.pairs_file}" if cfg.pairs_file else
              f"judge {cfg.judge}, mining {cfg.mining} (≤ {cfg.mining_max_pairs_per_case} per case)")
    return (
        f"RN-DPO: {trainer_name}: {cfg.num_epochs} epochs × {cfg.num_iterations_per_epoch} iterations of {batch_size} "
        f"pairs (and {cfg.num_val_iterations_per_epoch} validation iterations per epoch), {cfg.optimizer} at learning "
        f"rate {cfg.learning_rate:g}; loss {cfg.loss_type}, normalization {cfg.normalization}, "
        f"β {cfg.effective_beta:g}; "
        f"{judged}; proposals: {cfg.num_proposals} per case from {', '.join(cfg.proposal_sources)}; anchors: sft "
        f"{cfg.sft_weight:g}, consistency {cfg.consistency_weight:g}, agreement {cfg.agreement_weight:g}. Config: "
        + (config_file if config_file
           else "the defaults ($nnUNet_rndpo_config is not set; docs/reference.md lists the keys)"))


def pairs_summary(pairs: list[Pair], num_cases: int, source: str) -> str:
    """``RN-DPO: 120 pairs from 130 pool cases (judge agreement, mining top_bottom), mean |D| 412 voxels``."""
    mean_region = float(np.mean([p.region_size for p in pairs])) if pairs else 0.0
    return f"RN-DPO: {len(pairs)} pairs from {num_cases} pool cases ({source}), mean |D| {mean_region:.0f} voxels"


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``1 h 07 min``."""
    minutes = round(seconds / 60)
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def time_estimate(seconds_per_iteration: float, epochs: int, iterations_per_epoch: int) -> str:
    """``RN-DPO: ~0.8 s/iteration, ~1 h 07 min for 50 × 100 iterations`` (nnU-Net's validation comes on top)."""
    rate = f"{seconds_per_iteration:.1f}" if seconds_per_iteration < 10 else f"{seconds_per_iteration:.0f}"
    total = format_duration(seconds_per_iteration * epochs * iterations_per_epoch)
    return (f"RN-DPO: ~{rate} s/iteration, ~{total} for {epochs} × {iterations_per_epoch} iterations "
            "(plus nnU-Net's validation and checkpoints each epoch)")


def large_case_notes(shapes: dict[str, tuple[int, ...]], patch_size: tuple[int, ...],
                     factor: float = LARGE_CASE_FACTOR) -> list[str]:
    """A note for each pool case of at least ``factor`` × the pool's median voxel count (and above one patch).

    Args:
        shapes: ``{case: spatial shape}`` after nnU-Net's preprocessing.
        patch_size: the configuration's patch size.
    """
    if len(shapes) < 2:
        return []
    voxels = {case: math.prod(shape) for case, shape in shapes.items()}
    median, patch = float(np.median(list(voxels.values()))), math.prod(patch_size)
    return [f"RN-DPO: pool case {case!r} is {'×'.join(map(str, shapes[case]))} voxels after preprocessing, "
            f"~{n / median:.0f}× "
            f"the pool median and ~{n / patch:.0f}× the patch ({'×'.join(map(str, patch_size))}); its proposals "
            "take a while"
            for case, n in voxels.items() if n >= factor * median and n > patch]
