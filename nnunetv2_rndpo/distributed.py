"""What the preference phase does differently under nnU-Net's multi-GPU training (``-num_gpus N``, torch DDP).

- Work on the pool (preprocessing, proposals) is split between the ranks exactly as ``nnUNetv2_predict``
  splits its input with ``-num_parts/-part_id``: rank r takes ``cases[r::world]``
  (:func:`nnunetv2_rndpo.pipeline.split_cases`). Every rank writes its own cases into the one shared
  cache; the ranks then wait for each other (:func:`barrier`).
- Judging and mining run on rank 0 only and the pairs are sent to every rank (:func:`broadcast_from_rank0`),
  so all ranks train on identical pairs even with a judge that is not deterministic.
- Files of the fold folder (reference weights, pairs, metrics) are written by rank 0.
- Each rank draws its own patches (the sampler's seed is offset by the rank), like nnU-Net's loaders.
- The loss of a rank is the mean over its own pairs; DDP averages the gradients over ranks, which equals
  the gradient of the mean over all pairs when every rank has the same batch size (nnU-Net's split).

Without an initialised process group every function here is the single-process identity.
"""

from __future__ import annotations

from typing import TypeVar

import torch.distributed as dist

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Waits for every rank (no-op in a single process)."""
    if rank_and_world()[1] > 1:
        dist.barrier()


def broadcast_from_rank0(value: T) -> T:
    """Rank 0's ``value`` on every rank (pickled; fine for pair lists and metrics, not for tensors of images)."""
    if rank_and_world()[1] == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
