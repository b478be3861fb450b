"""Proposal planning, the proposal cache and the ``intensity``, ``dropout`` and ``model`` sources (fast, no
nnU-Net training; ``perturb`` and ``affine`` are in test_proposal_sources.py)."""

import numpy as np
import pytest
import torch

from nnunetv2_rndpo.proposals import plan_proposals


def test_plan_proposals_spreads_over_sources_reproducibly():
    specs = plan_proposals(8, ["mirror", "threshold"], (0, 1, 2), seed=1)
    assert [s.source for s in specs].count("mirror") == 4 and len(set(specs)) == 8
    assert specs == plan_proposals(8, ["mirror", "threshold"], (0, 1, 2), seed=1)
    assert len([s for s in plan_proposals(8, ["mirror"], (0, 1, 2), 0)]) == 8  # all flips
    assert [s.source for s in plan_proposals(6, ["mirror", "threshold"], (0, 1), 0)].count("mirror") == 3


def test_plan_proposals_too_many():
    with pytest.raises(ValueError, match="give at most 4 distinct proposals here"):
        plan_proposals(5, ["mirror"], (0, 1), 0)


def test_proposal_cache_is_keyed_by_spec_and_complete_only_after_manifest(tmp_path):
    from nnunetv2_rndpo.proposals import ProposalCache

    spec = {"proposals": [{"source": "mirror", "parameter": (0, 1)}], "seed": 1}
    cache = ProposalCache(tmp_path, spec)
    cache.save_case("a", np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3, 3), np.float16))
    assert cache.has_case("a") and not cache.is_complete  # interrupted before the manifest: not valid
    cache.mark_complete(["a"])
    assert ProposalCache(tmp_path, spec).is_complete  # a new run with the same spec reuses it
    other = ProposalCache(tmp_path, {**spec, "seed": 2})
    assert other.folder != cache.folder and not other.is_complete
    other.save_case("a", np.ones((2, 3, 3), np.uint8), np.zeros((2, 3, 3), np.float16))
    other.mark_complete(["a"])
    assert cache.is_complete and other.is_complete  # caches of other settings (folds, base models) coexist
    assert cache.masks("a").sum() == 0 and other.masks("a").sum() == 18


class FakePredictor:
    """The part of ``nnUNetPredictor`` that :func:`propose_case` uses, over a 2D network."""

    def __init__(self, network: torch.nn.Module):
        from types import SimpleNamespace

        self.network, self.use_mirroring = network, False
        self.configuration_manager = SimpleNamespace(patch_size=(8, 8))

    def predict_sliding_window_return_logits(self, image: torch.Tensor) -> torch.Tensor:
        self.network.eval()  # as nnU-Net's predictor does before every prediction
        return self.network(image[None])[0].half()


def tiny_network(dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(1, 2, 3, padding=1)] + ([torch.nn.Dropout2d(dropout)] if dropout else [])
    return torch.nn.Sequential(*layers)


def label_manager():
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    return LabelManager({"background": 0, "target": 1}, regions_class_order=None)


def test_plan_proposals_of_intensity_dropout_and_model_sources():
    from nnunetv2_rndpo.proposals import plan_proposals

    specs = plan_proposals(6, ["intensity", "dropout", "model"], (0, 1), 0, models=["1/checkpoint_final.pth"])
    assert [s.source for s in specs] == ["intensity", "intensity", "intensity", "dropout", "dropout", "model"]
    with pytest.raises(ValueError, match="unknown proposal source\\(s\\) \\['ensemble'\\]"):
        plan_proposals(2, ["ensemble"], (0, 1), 0)


def test_intensity_dropout_and_model_sources():
    from nnunetv2_rndpo.proposals import ProposalSpec, propose_case

    image = torch.randn(1, 12, 12, generator=torch.Generator().manual_seed(0))
    lm = label_manager()
    network = tiny_network(dropout=0.5)
    base = {k: v.clone() for k, v in network.state_dict().items()}
    other = {k: -v for k, v in base.items()}
    specs = [ProposalSpec("intensity", (1.0, 2.0)), ProposalSpec("dropout", 0), ProposalSpec("dropout", 1),
             ProposalSpec("model", "1/x.pth"), ProposalSpec("mirror", ())]
    masks, probabilities = propose_case(FakePredictor(network), image, specs, lm, (0, 1), seed=3,
                                        extra_weights={"1/x.pth": other})
    assert masks.shape == (5, 12, 12) and probabilities.shape == (2, 12, 12)
    again, _ = propose_case(FakePredictor(network), image, specs, lm, (0, 1), seed=3, extra_weights={"1/x.pth": other})
    assert np.array_equal(masks, again)  # dropout samples are seeded
    assert not np.array_equal(masks[1], masks[2])  # two different dropout samples
    assert all(torch.equal(v, base[k]) for k, v in network.state_dict().items())  # base weights restored
    assert not network.training


def test_dropout_source_needs_a_dropout_network():
    from nnunetv2_rndpo.proposals import ProposalSpec, propose_case

    with pytest.raises(ValueError, match="no dropout layers \\(nnU-Net's default plans set dropout_op to None\\)"):
        propose_case(FakePredictor(tiny_network()), torch.randn(1, 8, 8), [ProposalSpec("dropout", 0)],
                     label_manager(), (0, 1))
