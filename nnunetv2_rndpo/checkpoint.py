"""Reading the base model's checkpoint, with errors that say which checkpoint does not fit and why."""

from __future__ import annotations

from pathlib import Path

import torch


def base_weights(checkpoint: dict, path: Path, configuration: str, expected: dict[str, torch.Tensor],
                 num_segmentation_heads: int) -> dict[str, torch.Tensor]:
    """The network weights of a base checkpoint, checked against the network they are loaded into.

    Args:
        checkpoint: what ``torch.load`` returned for an nnU-Net checkpoint.
        path: where it came from (for messages).
        configuration: this run's configuration (e.g. ``2d``).
        expected: this run's network ``state_dict`` (names and shapes).
        num_segmentation_heads: output channels of this dataset's network (labels, or regions).

    Returns:
        ``{name: tensor}`` with any DDP ``module.`` prefix removed.

    Raises:
        ValueError: not an nnU-Net checkpoint, trained for another configuration, with another number of
            classes, or with another architecture (plans).
    """
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ValueError(f"The base checkpoint {path} is not an nnU-Net checkpoint (no 'network_weights'); point "
                         "base_checkpoint at a checkpoint_final.pth or checkpoint_best.pth written by nnUNetv2_train.")
    fix = "Point base_checkpoint in the file named by $nnUNet_rndpo_config at a model of this dataset and configuration."
    trained_for = (checkpoint.get("init_args") or {}).get("configuration")
    if trained_for is not None and trained_for != configuration:
        raise ValueError(f"The base checkpoint {path} was trained for configuration {trained_for!r}, but this run "
                         f"is {configuration!r}. Train with the base model's configuration, or {fix[0].lower()}{fix[1:]}")
    weights = {k.removeprefix("module."): v for k, v in checkpoint["network_weights"].items()}
    heads = [k for k in expected if ".seg_layers." in k and k.endswith(".weight")]
    if heads and heads[-1] in weights and weights[heads[-1]].shape[0] != num_segmentation_heads:
        raise ValueError(
            f"The base checkpoint {path} predicts {weights[heads[-1]].shape[0]} classes, but this dataset has "
            f"{num_segmentation_heads} (labels or regions in dataset.json). It belongs to another dataset or label "
            f"set. {fix}")
    mismatched = [k for k in expected if k not in weights or weights[k].shape != expected[k].shape]
    if mismatched:
        raise ValueError(
            f"The base checkpoint {path} does not fit this dataset's {configuration} network (e.g. {mismatched[:3]}): "
            f"was it trained with other plans? {fix}")
    return weights
