"""The ``perturb`` and ``affine`` proposal sources: shape, seeding, cache key, restored weights, identity warp,
their cost in forward passes, and their use together with the other sources (fast, no nnU-Net training)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nnunetv2_rndpo.proposals import (
    AFFINE_LADDER,
    DEFAULT_PERTURB_SIGMA,
    ProposalSpec,
    affine_theta,
    forward_passes,
    perturbed_weights,
    plan_proposals,
    proposal_spec,
    propose_case,
    warp,
)


class FakePredictor:
    """The part of ``nnUNetPredictor`` that :func:`propose_case` uses (no tiling: the network sees the case)."""

    def __init__(self, network: torch.nn.Module, patch_size: tuple[int, ...]):
        self.network, self.use_mirroring = network, False
        self.configuration_manager = SimpleNamespace(patch_size=patch_size)
        self.calls = 0

    def predict_sliding_window_return_logits(self, image: torch.Tensor) -> torch.Tensor:
        self.network.eval()
        self.calls += 1
        if len(self.configuration_manager.patch_size) == 2 and image.ndim == 4:  # 2D config: slice by slice
            return self.network(image.transpose(0, 1)).transpose(0, 1).half()
        return self.network(image[None])[0].half()


def network(dim: int) -> torch.nn.Module:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d
    norm = torch.nn.InstanceNorm2d if dim == 2 else torch.nn.InstanceNorm3d
    return torch.nn.Sequential(conv(1, 4, 3, padding=1), norm(4, affine=True), torch.nn.LeakyReLU(),
                               conv(4, 3, 3, padding=1))


def label_manager():
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    return LabelManager({"background": 0, "a": 1, "b": 2}, regions_class_order=None)


def case(dim: int) -> torch.Tensor:
    """A 2D case as nnU-Net stores it, ``(C, 1, X, Y)``, or a 3D one ``(C, X, Y, Z)``."""
    shape = (1, 1, 20, 24) if dim == 2 else (1, 10, 12, 14)
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


PATCH = {2: (20, 24), 3: (10, 12, 14)}
AXES = {2: (0, 1), 3: (0, 1, 2)}


@pytest.mark.parametrize("dim", [2, 3])
def test_perturb_is_seeded_differs_and_restores_the_weights_exactly(dim):
    net = network(dim)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    specs = plan_proposals(3, ["perturb"], AXES[dim], 0, perturb_sigma=0.5)
    assert specs == [ProposalSpec("perturb", (i, 0.5)) for i in range(3)]
    masks, probabilities = propose_case(FakePredictor(net, PATCH[dim]), case(dim), specs, label_manager(),
                                        AXES[dim], seed=7)
    assert masks.shape == (3, *case(dim).shape[1:]) and masks.dtype == np.uint8
    assert probabilities.shape == (3, *case(dim).shape[1:])
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # restored bit for bit
    again, _ = propose_case(FakePredictor(net, PATCH[dim]), case(dim), specs, label_manager(), AXES[dim], seed=7)
    other, _ = propose_case(FakePredictor(net, PATCH[dim]), case(dim), specs, label_manager(), AXES[dim], seed=8)
    assert np.array_equal(masks, again)  # same seed, same masks
    assert not np.array_equal(masks, other)  # another seed, other masks
    assert not np.array_equal(masks[0], masks[1])  # two samples of one seed differ


def test_perturbed_weights_are_w_times_one_plus_sigma_eps():
    net = network(2)
    weights = dict(net.named_parameters())
    perturbed = perturbed_weights(net, 0.1, seed=3)
    assert set(perturbed) == set(weights)  # parameters only, buffers untouched
    for name, w in weights.items():
        relative = (perturbed[name] - w.detach()) / w.detach()
        assert relative.std() == pytest.approx(0.1, rel=0.5) or w.numel() < 10
    assert all(torch.equal(perturbed[k], v) for k, v in perturbed_weights(net, 0.1, seed=3).items())
    assert torch.equal(perturbed_weights(net, 1e-12, seed=3)["0.weight"], weights["0.weight"].detach())


@pytest.mark.parametrize("dim", [2, 3])
def test_affine_with_identity_parameters_is_the_plain_forward(dim):
    net, image = network(dim), case(dim)
    predictor = FakePredictor(net, PATCH[dim])
    lm = label_manager()
    theta = affine_theta(0.0, 1.0, PATCH[dim])
    assert torch.equal(theta, torch.cat([torch.eye(dim), torch.zeros(dim, 1)], 1))
    assert torch.allclose(warp(image, theta, dim, "reflection"), image, atol=1e-5)  # affine_grid rounds
    identity = ProposalSpec("affine", (0.0, 1.0))
    plain = ProposalSpec("mirror", ())
    masks, _ = propose_case(predictor, image, [identity, plain], lm, AXES[dim])
    assert np.array_equal(masks[0], masks[1])


@pytest.mark.parametrize("dim", [2, 3])
def test_affine_ladder_gives_case_shaped_different_masks(dim):
    net, image = network(dim), case(dim)
    specs = plan_proposals(4, ["affine"], AXES[dim], 0)
    assert [s.parameter for s in specs] == list(AFFINE_LADDER[:4])
    predictor = FakePredictor(net, PATCH[dim])
    masks, _ = propose_case(predictor, image, specs, label_manager(), AXES[dim])
    assert masks.shape == (4, *image.shape[1:])
    assert len({m.tobytes() for m in masks}) == 4
    assert predictor.calls == 2 ** dim + 4  # the TTA pass plus one forward per proposal
    again, _ = propose_case(FakePredictor(net, PATCH[dim]), image, specs, label_manager(), AXES[dim])
    assert np.array_equal(masks, again)


def test_affine_warp_rotates_in_voxel_units_and_inverts():
    # a bright voxel right of the centre of a non-square grid moves onto the vertical axis under 90°
    image = torch.zeros(1, 1, 9, 15)
    image[0, 0, 4, 10] = 1.0
    rotated = warp(image, affine_theta(90.0, 1.0, (9, 15)), 2, "zeros")
    assert rotated[0, 0].argmax().item() in (np.ravel_multi_index(p, (9, 15)) for p in ((1, 7), (7, 7)))
    blob = torch.zeros(1, 1, 32, 40)
    blob[0, 0, 10:22, 12:28] = 1.0
    theta = affine_theta(10.0, 1.1, (32, 40))
    inverse = torch.linalg.inv(torch.cat([theta, torch.tensor([[0.0, 0.0, 1.0]])]))[:-1]
    back = warp(warp(blob, theta, 2, "border"), inverse, 2, "border")
    assert ((back > 0.5) == (blob > 0.5)).float().mean() > 0.98  # only interpolation at the edges is lost


def test_cache_key_changes_with_sigma_and_the_ladder(monkeypatch):
    from nnunetv2_rndpo import proposals

    weights = {"w": torch.ones(2)}

    def key(specs):
        return proposals.ProposalCache("/tmp/x", proposal_spec(weights, "P", "2d", specs, 0)).folder.name

    base = key(plan_proposals(4, ["perturb", "affine"], (0, 1), 0))
    assert base == key(plan_proposals(4, ["perturb", "affine"], (0, 1), 0))
    assert base != key(plan_proposals(4, ["perturb", "affine"], (0, 1), 0, perturb_sigma=0.3))
    monkeypatch.setattr(proposals, "AFFINE_LADDER", ((3.0, 1.0),) + AFFINE_LADDER[1:])
    assert base != key(plan_proposals(4, ["perturb", "affine"], (0, 1), 0))


def test_perturb_and_affine_combine_with_the_other_sources_round_robin_and_cost_what_they_say():
    sources = ["mirror", "threshold", "temperature", "intensity", "perturb", "affine"]
    specs = plan_proposals(12, sources, (0, 1), 0, perturb_sigma=0.05)
    assert [s.source for s in specs].count("perturb") == 2 and [s.source for s in specs].count("affine") == 2
    assert forward_passes(specs, (0, 1)) == 4 + 6  # 4 flips; intensity, perturb, affine 2 each
    assert forward_passes(plan_proposals(8, ["mirror", "threshold", "temperature"], (0, 1, 2), 0), (0, 1, 2)) == 8
    net = network(2)
    masks, _ = propose_case(FakePredictor(net, PATCH[2]), case(2), specs, label_manager(), (0, 1), seed=1)
    assert masks.shape == (12, 1, 20, 24)


def test_perturb_sigma_is_a_validated_knob_with_one_default():
    from nnunetv2_rndpo.config import RNDPOConfig
    from nnunetv2_rndpo.pipeline import ProposalSettings

    assert RNDPOConfig().perturb_sigma == DEFAULT_PERTURB_SIGMA == ProposalSettings().perturb_sigma
    assert ProposalSettings.from_config(RNDPOConfig(perturb_sigma=0.3)).perturb_sigma == 0.3
    with pytest.raises(ValueError, match="config key 'perturb_sigma': 0 is out of range; must be > 0"):
        RNDPOConfig(perturb_sigma=0)
    assert RNDPOConfig(proposal_sources=["perturb", "affine"]).proposal_sources == ["perturb", "affine"]
