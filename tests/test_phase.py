"""The preference phase's key of the cached base test Dice (fast, no training)."""

import torch


def test_weights_key_changes_with_any_weight_or_the_test_cases():
    """The key of the cached base test Dice: the same weights on the same cases, and nothing else, reuse it."""
    from nnunetv2_rndpo.evaluation import weights_key

    weights = {"conv.weight": torch.ones(2, 3), "norm.bias": torch.zeros(2)}
    key = weights_key(weights, ["b", "a"])
    assert key == weights_key({k: v.clone() for k, v in weights.items()}, ["a", "b"])
    changed = {**weights, "norm.bias": torch.tensor([0.0, 1e-6])}
    assert weights_key(changed, ["a", "b"]) != key
    assert weights_key(weights, ["a", "c"]) != key
    assert weights_key({**weights, "norm.bias": weights["norm.bias"].bfloat16()}, ["a", "b"]) != key
