"""The preference objective: hand-computed tables, properties and one optimisation step per variant."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from nnunetv2_rndpo.objective import (
    LOSS_TYPES,
    NORMALIZATIONS,
    agreement_loss,
    consistency_loss,
    disagreement_region,
    mask_log_likelihood,
    pair_log_ratios,
    preference_loss,
    preference_metrics,
    preference_terms,
)


def logits_for(label_map: torch.Tensor, num_classes: int, confidence: float) -> torch.Tensor:
    """(B, C, *spatial) logits with ``confidence`` on the given labels and 0 elsewhere."""
    return F.one_hot(label_map, num_classes).movedim(-1, 1).float() * confidence


# ---------------------------------------------------------------- mask log-likelihood and region


def test_softmax_log_likelihood_matches_hand_computation():
    # one 1x2 image, two classes; logits favour class 0 at voxel 0 and class 1 at voxel 1 by log(3)
    logits = torch.tensor([[[[math.log(3), 0.0]], [[0.0, math.log(3)]]]])  # (1, 2, 1, 2)
    label_map = torch.tensor([[[0, 0]]])  # (1, 1, 2)
    log_likelihood, valid = mask_log_likelihood(logits, label_map)
    assert valid.all()
    torch.testing.assert_close(log_likelihood, torch.tensor([[[math.log(0.75), math.log(0.25)]]]))


def test_ignore_label_gives_zero_and_invalid():
    logits = torch.randn(1, 3, 2, 2)
    label_map = torch.tensor([[[0, 2], [1, 2]]])
    log_likelihood, valid = mask_log_likelihood(logits, label_map, ignore_label=2)
    assert valid.tolist() == [[[True, False], [True, False]]]
    assert log_likelihood[~valid].eq(0).all()


def test_sigmoid_regions_are_sums_of_bernoulli_terms():
    # regions as in nnU-Net's region-based training: whole = {1, 2}, core = {2}
    regions = [(1, 2), (2,)]
    logits = torch.tensor([[[[2.0]], [[-1.0]]]])  # (1, 2, 1, 1)
    log_likelihood, _ = mask_log_likelihood(logits, torch.tensor([[[1]]]), regions=regions)
    expected = F.logsigmoid(torch.tensor(2.0)) + F.logsigmoid(torch.tensor(1.0))  # in whole, not in core
    torch.testing.assert_close(log_likelihood, expected.reshape(1, 1, 1))


def test_nnunet_target_with_channel_axis_is_accepted():
    logits = torch.randn(2, 2, 4, 4, 4)
    label_map = torch.randint(0, 2, (2, 1, 4, 4, 4))
    a, _ = mask_log_likelihood(logits, label_map)
    b, _ = mask_log_likelihood(logits, label_map[:, 0])
    torch.testing.assert_close(a, b)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="does not match logits"):
        mask_log_likelihood(torch.randn(1, 2, 4, 4), torch.zeros(1, 5, 5, dtype=torch.long))


def test_disagreement_region_excludes_ignored_voxels():
    chosen = torch.tensor([[0, 1, 1, 3]])
    rejected = torch.tensor([[0, 0, 1, 1]])
    assert disagreement_region(chosen, rejected).tolist() == [[False, True, False, True]]
    assert disagreement_region(chosen, rejected, ignore_label=3).tolist() == [[False, True, False, False]]


# ---------------------------------------------------------------- hand-computed loss tables


def test_identical_masks_skip_the_pair_without_nan():
    mask = torch.randint(0, 2, (1, 4, 4))
    for normalization in NORMALIZATIONS:
        ratios = pair_log_ratios(torch.randn(1, 2, 4, 4, requires_grad=True), torch.randn(1, 2, 4, 4), mask, mask)
        out = preference_loss(ratios.chosen_logratios, ratios.rejected_logratios, ratios.region_sizes,
                              ratios.volumes, beta=1.0, normalization=normalization)
        assert out.num_skipped == 1 and not out.used.any()
        assert out.loss.item() == 0.0 and torch.isfinite(out.losses).all()
        out.loss.backward()


def test_2x2_example_by_hand():
    # 2x2 patch, binary; chosen and rejected disagree on the two right-hand voxels, |D| = 2.
    chosen = torch.tensor([[[1, 1], [0, 1]]])
    rejected = torch.tensor([[[1, 0], [0, 0]]])
    reference = torch.zeros(1, 2, 2, 2)  # p_ref = 0.5 everywhere
    policy = torch.zeros(1, 2, 2, 2)
    policy[0, 1, 0, 1] = math.log(3)  # p(1) = 0.75 at (0, 1)
    policy[0, 0, 1, 1] = math.log(3)  # p(0) = 0.75 at (1, 1)
    ratios = pair_log_ratios(policy, reference, chosen, rejected)
    # chosen = 1 at both D voxels: log(0.75/0.5) + log(0.25/0.5); rejected = 0 there: the reverse
    chosen_expected = math.log(1.5) + math.log(0.5)
    rejected_expected = math.log(0.5) + math.log(1.5)
    assert ratios.region_sizes.item() == 2 and ratios.volumes.item() == 4
    assert ratios.chosen_logratios.item() == pytest.approx(chosen_expected)
    assert ratios.rejected_logratios.item() == pytest.approx(rejected_expected)
    out = preference_loss(ratios.chosen_logratios, ratios.rejected_logratios, ratios.region_sizes,
                          beta=1.0, normalization="none")
    assert out.loss.item() == pytest.approx(math.log(2))  # margin 0 → −log σ(0)

    policy[0, 0, 1, 1] = 0.0  # now the policy equals the reference at (1, 1), which drops out
    ratios = pair_log_ratios(policy, reference, chosen, rejected)
    margin = math.log(0.75 / 0.5) - math.log(0.25 / 0.5)  # Δ at (0, 1) = log 3
    dpo = preference_loss(ratios.chosen_logratios, ratios.rejected_logratios, ratios.region_sizes,
                          beta=0.5, normalization="none")
    rn = preference_loss(ratios.chosen_logratios, ratios.rejected_logratios, ratios.region_sizes,
                         beta=0.5, normalization="region")
    assert dpo.margins.item() == pytest.approx(0.5 * margin)
    assert dpo.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * margin))))
    assert rn.margins.item() == pytest.approx(0.5 * margin / 2)


def test_4x4_two_pairs_and_loss_types_by_hand():
    chosen_logratios = torch.tensor([2.0, -1.0])
    rejected_logratios = torch.tensor([0.0, 1.0])
    region_sizes = torch.tensor([4.0, 16.0])
    volumes = torch.tensor([16.0, 16.0])
    kw = dict(beta=2.0, normalization="region")
    u = torch.tensor([2.0 / 4, -2.0 / 16])  # Δ / |D|
    h = 2.0 * u
    sig = preference_loss(chosen_logratios, rejected_logratios, region_sizes, volumes, loss_type="sigmoid", **kw)
    torch.testing.assert_close(sig.losses, -F.logsigmoid(h))
    torch.testing.assert_close(sig.loss, -F.logsigmoid(h).mean())
    ipo = preference_loss(chosen_logratios, rejected_logratios, region_sizes, volumes, loss_type="ipo", **kw)
    torch.testing.assert_close(ipo.losses, (u - 0.25) ** 2)
    hinge = preference_loss(chosen_logratios, rejected_logratios, region_sizes, volumes, loss_type="hinge", **kw)
    torch.testing.assert_close(hinge.losses, torch.relu(1 - h))
    robust = preference_loss(chosen_logratios, rejected_logratios, region_sizes, volumes, loss_type="robust",
                             label_smoothing=0.1, **kw)
    torch.testing.assert_close(robust.losses, (0.9 * -F.logsigmoid(h) + 0.1 * F.logsigmoid(-h)) / 0.8)
    vol = preference_loss(chosen_logratios, rejected_logratios, region_sizes, volumes, beta=2.0,
                          normalization="volume")
    torch.testing.assert_close(vol.margins, 2.0 * torch.tensor([2.0, -2.0]) / 16)
    sqrt = preference_loss(chosen_logratios, rejected_logratios, region_sizes, volumes, beta=2.0,
                           normalization="sqrt_region")
    torch.testing.assert_close(sqrt.margins, 2.0 * torch.tensor([2.0 / 2, -2.0 / 4]))


def test_min_region_voxels_skips_and_counts():
    out = preference_loss(torch.tensor([1.0, 1.0, 1.0]), torch.zeros(3), torch.tensor([2.0, 10.0, 50.0]),
                          beta=1.0, min_region_voxels=10)
    assert out.num_skipped == 1 and out.used.tolist() == [False, True, True]
    assert out.losses[0] == 0 and out.chosen_rewards[0] == 0
    torch.testing.assert_close(out.loss, out.losses[1:].mean())


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_swapping_chosen_and_rejected_flips_the_margin(normalization):
    policy, reference = torch.randn(3, 2, 6, 6), torch.randn(3, 2, 6, 6)
    a, b = torch.randint(0, 2, (3, 6, 6)), torch.randint(0, 2, (3, 6, 6))
    a[:, 0, 0], b[:, 0, 0] = 0, 1  # at least one disagreeing voxel
    forward = pair_log_ratios(policy, reference, a, b)
    backward = pair_log_ratios(policy, reference, b, a)
    kw = dict(beta=0.7, normalization=normalization)
    m1 = preference_loss(forward.chosen_logratios, forward.rejected_logratios, forward.region_sizes,
                         forward.volumes, **kw).margins
    m2 = preference_loss(backward.chosen_logratios, backward.rejected_logratios, backward.region_sizes,
                         backward.volumes, **kw).margins
    torch.testing.assert_close(m1, -m2)


def test_rn_dpo_margin_is_dpo_margin_divided_by_region_size():
    policy, reference = torch.randn(4, 3, 5, 5, 5), torch.randn(4, 3, 5, 5, 5)
    chosen, rejected = torch.randint(0, 3, (4, 5, 5, 5)), torch.randint(0, 3, (4, 5, 5, 5))
    r = pair_log_ratios(policy, reference, chosen, rejected)
    dpo = preference_loss(r.chosen_logratios, r.rejected_logratios, r.region_sizes, beta=1.0, normalization="none")
    rn = preference_loss(r.chosen_logratios, r.rejected_logratios, r.region_sizes, beta=1.0, normalization="region")
    torch.testing.assert_close(rn.margins, dpo.margins / r.region_sizes)


def test_reference_gets_no_gradient_and_policy_does():
    policy = torch.randn(2, 2, 4, 4, requires_grad=True)
    reference = torch.randn(2, 2, 4, 4, requires_grad=True)
    chosen, rejected = torch.zeros(2, 4, 4, dtype=torch.long), torch.ones(2, 4, 4, dtype=torch.long)
    r = pair_log_ratios(policy, reference, chosen, rejected)
    preference_loss(r.chosen_logratios, r.rejected_logratios, r.region_sizes, beta=1.0).loss.backward()
    assert reference.grad is None and policy.grad.abs().sum() > 0


def test_unknown_names_and_bad_values_raise():
    args = (torch.zeros(1), torch.zeros(1), torch.ones(1))
    with pytest.raises(ValueError, match="unknown loss_type 'kto'; valid: sigmoid, ipo, hinge, robust"):
        preference_loss(*args, beta=1.0, loss_type="kto")
    with pytest.raises(ValueError, match="unknown normalization 'mean'; valid: none, region"):
        preference_loss(*args, beta=1.0, normalization="mean")
    with pytest.raises(ValueError, match="beta must be > 0"):
        preference_loss(*args, beta=0.0)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\)"):
        preference_loss(*args, beta=1.0, label_smoothing=0.5)
    with pytest.raises(ValueError, match="needs the patch volumes"):
        preference_loss(*args, beta=1.0, normalization="volume")


def test_extreme_logits_and_half_precision_stay_finite():
    policy = (torch.randint(0, 2, (2, 2, 8, 8)).float() * 2 - 1) * 1e4
    reference = -policy
    chosen, rejected = torch.randint(0, 2, (2, 8, 8)), torch.randint(0, 2, (2, 8, 8))
    chosen[:, 0, 0], rejected[:, 0, 0] = 1, 0
    for logits in (policy, policy.half()):
        logits = logits.clone().requires_grad_(True)
        r = pair_log_ratios(logits, reference.to(logits.dtype), chosen, rejected)
        for loss_type in LOSS_TYPES:
            for normalization in NORMALIZATIONS:
                out = preference_loss(r.chosen_logratios, r.rejected_logratios, r.region_sizes, r.volumes,
                                      beta=1.0, loss_type=loss_type, normalization=normalization,
                                      label_smoothing=0.1)
                assert torch.isfinite(out.loss)
                (grad,) = torch.autograd.grad(out.loss, logits, retain_graph=True)
                # IPO's gradient 2·(u − 1/2β) is unbounded for an unnormalised sum over ±1e4 logits and
                # overflows float16 itself; under AMP nnU-Net's GradScaler skips such a step.
                if not (loss_type == "ipo" and normalization == "none" and logits.dtype == torch.half):
                    assert torch.isfinite(grad).all(), (loss_type, normalization, logits.dtype)


# ---------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 20.0))
def test_logits_outside_the_region_never_change_the_loss(seed, scale):
    g = torch.Generator().manual_seed(seed)
    policy, reference = torch.randn(2, 3, 6, 6, generator=g), torch.randn(2, 3, 6, 6, generator=g)
    chosen, rejected = torch.randint(0, 3, (2, 6, 6), generator=g), torch.randint(0, 3, (2, 6, 6), generator=g)
    outside = ~disagreement_region(chosen, rejected)
    perturbed = policy + scale * torch.randn(policy.shape, generator=g) * outside.unsqueeze(1)
    for normalization in NORMALIZATIONS:
        losses = []
        for logits in (policy, perturbed):
            r = pair_log_ratios(logits, reference, chosen, rejected)
            losses.append(preference_loss(r.chosen_logratios, r.rejected_logratios, r.region_sizes, r.volumes,
                                          beta=0.5, normalization=normalization).losses)
        torch.testing.assert_close(losses[0], losses[1])


def total_gradient_over_region(region_size: int, per_voxel_log_ratio: float, normalization: str) -> float:
    """Σ_v |∂L/∂ρ_v| for a pair whose chosen mask has the same log-ratio r at every voxel of D."""
    log_ratios = torch.full((region_size,), per_voxel_log_ratio, requires_grad=True)
    out = preference_loss(log_ratios.sum().reshape(1), torch.zeros(1), torch.tensor([float(region_size)]),
                          beta=1.0, normalization=normalization)
    out.loss.backward()
    return log_ratios.grad.abs().sum().item()


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 4000), r=st.floats(-3, 3))
def test_region_normalised_gradient_does_not_grow_with_region_size(size, r):
    # h = β·r for every |D|, so Σ_v |∂L/∂ρ_v| = β·σ(−β·r) whatever the region size
    assert total_gradient_over_region(size, r, "region") == pytest.approx(torch.sigmoid(torch.tensor(-r)).item(),
                                                                         rel=1e-4)


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 4000))
def test_unnormalised_gradient_grows_linearly_with_region_size(size):
    # at the start of fine-tuning (policy = reference, r = 0) every voxel of D gets β·σ(0) = β/2
    assert total_gradient_over_region(size, 0.0, "none") == pytest.approx(size / 2, rel=1e-4)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), ignored_fraction=st.sampled_from([0.0, 0.5, 1.0]),
       loss_type=st.sampled_from(LOSS_TYPES), normalization=st.sampled_from(NORMALIZATIONS),
       scale=st.sampled_from([1.0, 1e2, 1e4]))
def test_loss_is_finite_for_all_inputs_including_all_ignore(seed, ignored_fraction, loss_type, normalization, scale):
    g = torch.Generator().manual_seed(seed)
    policy = (scale * torch.randn(2, 2, 5, 5, generator=g)).requires_grad_(True)
    reference = scale * torch.randn(2, 2, 5, 5, generator=g)
    chosen, rejected = torch.randint(0, 2, (2, 5, 5), generator=g), torch.randint(0, 2, (2, 5, 5), generator=g)
    ignored = torch.rand(2, 5, 5, generator=g) < ignored_fraction
    chosen[ignored] = 2
    rejected[ignored] = 2
    r = pair_log_ratios(policy, reference, chosen, rejected, ignore_label=2)
    out = preference_loss(r.chosen_logratios, r.rejected_logratios, r.region_sizes, r.volumes, beta=1.0,
                          loss_type=loss_type, normalization=normalization, label_smoothing=0.2)
    assert torch.isfinite(out.loss) and torch.isfinite(out.losses).all()
    out.loss.backward()
    assert torch.isfinite(policy.grad).all()
    if ignored_fraction == 1.0:
        assert out.num_skipped == 2


# ---------------------------------------------------------------- one optimisation step per variant


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_one_step_on_a_tiny_conv_net_changes_its_parameters(loss_type, normalization):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
    reference = copy.deepcopy(net).requires_grad_(False)  # the frozen copy, equal to the policy at step 0
    before = [p.detach().clone() for p in net.parameters()]
    image = torch.randn(2, 1, 8, 8)
    chosen = (image[:, 0] > 0).long()
    rejected = (image[:, 0] > 0.5).long()
    with torch.no_grad():
        reference_logits = reference(image)
    r = pair_log_ratios(net(image), reference_logits, chosen, rejected)
    out = preference_loss(r.chosen_logratios, r.rejected_logratios, r.region_sizes, r.volumes, beta=1.0,
                          loss_type=loss_type, normalization=normalization, label_smoothing=0.1)
    assert torch.isfinite(out.loss)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    out.loss.backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))


# ---------------------------------------------------------------- anchors outside D


def anchored_gradient(consistency_weight: float, agreement_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of preference + anchors w.r.t. the policy logits, and the region D, for a random pair."""
    g = torch.Generator().manual_seed(0)
    policy = torch.randn(2, 3, 6, 6, generator=g, requires_grad=True)
    reference = torch.randn(2, 3, 6, 6, generator=g)
    chosen, rejected = torch.randint(0, 3, (2, 6, 6), generator=g), torch.randint(0, 3, (2, 6, 6), generator=g)
    region = disagreement_region(chosen, rejected)
    r = pair_log_ratios(policy, reference, chosen, rejected)
    loss = preference_loss(r.chosen_logratios, r.rejected_logratios, r.region_sizes, beta=1.0).loss
    loss = loss + consistency_weight * consistency_loss(policy, reference, ~region).mean()
    loss = loss + agreement_weight * agreement_loss(policy, chosen, rejected).mean()
    (grad,) = torch.autograd.grad(loss, policy)
    return grad, region


def test_without_anchors_no_gradient_reaches_voxels_outside_the_region():
    grad, region = anchored_gradient(0.0, 0.0)
    assert grad.abs().sum(1)[~region].max() == 0 and grad.abs().sum(1)[region].min() > 0


@pytest.mark.parametrize("consistency_weight, agreement_weight", [(1.0, 0.0), (0.0, 1.0)])
def test_anchors_reach_voxels_outside_the_region(consistency_weight, agreement_weight):
    grad, region = anchored_gradient(consistency_weight, agreement_weight)
    assert grad.abs().sum(1)[~region].min() > 0


def test_consistency_is_zero_at_the_reference_and_a_mean_over_outside_voxels():
    logits = torch.randn(1, 2, 4, 4)
    outside = torch.ones(1, 4, 4, dtype=torch.bool)
    assert consistency_loss(logits, logits, outside).item() == pytest.approx(0.0, abs=1e-6)
    # one outside voxel with KL k: the mean over 1 voxel is k, over 16 voxels (others KL 0) k/16
    policy = logits.clone()
    policy[0, :, 0, 0] = torch.tensor([3.0, -3.0])
    kl_one = consistency_loss(policy, logits, torch.zeros(1, 4, 4, dtype=torch.bool).index_put_(
        (torch.tensor([0]), torch.tensor([0]), torch.tensor([0])), torch.tensor(True)))
    assert consistency_loss(policy, logits, outside).item() == pytest.approx(kl_one.item() / 16, rel=1e-5)
    regions = [(1,)]
    assert consistency_loss(logits[:, :1], logits[:, :1], outside, regions=regions).item() == pytest.approx(0, abs=1e-6)


def test_agreement_is_cross_entropy_to_the_agreed_label():
    logits = torch.zeros(1, 2, 1, 2)
    chosen, rejected = torch.tensor([[[1, 0]]]), torch.tensor([[[1, 1]]])  # agree only at voxel 0 (label 1)
    assert agreement_loss(logits, chosen, rejected).item() == pytest.approx(math.log(2))


# ---------------------------------------------------------------- one step computes each thing once


def _step_inputs(regions):
    g = torch.Generator().manual_seed(5)
    channels = 2 if regions else 3
    policy = torch.randn(3, channels, 6, 5, generator=g, requires_grad=True)
    reference = torch.randn(3, channels, 6, 5, generator=g)
    chosen = torch.randint(0, 3, (3, 6, 5), generator=g)
    rejected = torch.where(torch.rand(3, 6, 5, generator=g) < 0.3, torch.randint(0, 3, (3, 6, 5), generator=g), chosen)
    chosen[0, 0, :2] = 3  # an ignored voxel in the chosen mask
    return policy, reference, chosen, rejected


@pytest.mark.parametrize("regions", [None, [(1, 2), 2]])
def test_preference_terms_equal_the_separate_functions(regions):
    policy, reference, chosen, rejected = _step_inputs(regions)
    terms = preference_terms(policy, reference, chosen, rejected, regions=regions, ignore_label=3)
    separate = pair_log_ratios(policy, reference, chosen, rejected, regions=regions, ignore_label=3)
    for a, b in zip(terms.ratios, separate, strict=True):
        torch.testing.assert_close(a, b)
    outside = ~disagreement_region(chosen, rejected, 3) & (chosen != 3)
    assert torch.equal(terms.outside, outside)
    torch.testing.assert_close(terms.consistency, consistency_loss(policy, reference, outside, regions=regions))
    agreement = agreement_loss(policy, chosen, rejected, regions=regions, ignore_label=3)
    torch.testing.assert_close(terms.agreement, agreement)
    off = preference_terms(policy, reference, chosen, rejected, regions=regions, ignore_label=3, consistency=False,
                           agreement=False)
    assert off.consistency is None and off.agreement is None


def test_a_step_takes_one_log_softmax_per_network_and_one_region(monkeypatch):
    import nnunetv2_rndpo.objective as objective

    calls = {"log_softmax": 0, "region": 0}
    log_softmax, region = torch.log_softmax, objective.disagreement_region

    def counted_log_softmax(*args, **kwargs):
        calls["log_softmax"] += 1
        return log_softmax(*args, **kwargs)

    def counted_region(*args, **kwargs):
        calls["region"] += 1
        return region(*args, **kwargs)

    monkeypatch.setattr(torch, "log_softmax", counted_log_softmax)
    monkeypatch.setattr(objective, "disagreement_region", counted_region)
    policy, reference, chosen, rejected = _step_inputs(None)
    terms = preference_terms(policy, reference, chosen, rejected, ignore_label=3)  # what the trainer's step calls
    assert calls == {"log_softmax": 2, "region": 1}  # policy once, reference once; D once, both anchors included
    (terms.ratios.chosen_logratios.sum() + terms.consistency.sum() + terms.agreement.sum()).backward()
    assert policy.grad is not None


def test_preference_metrics_sum_over_used_pairs_only():
    policy, reference, chosen, rejected = _step_inputs(None)
    ratios = pair_log_ratios(policy, reference, chosen, rejected, ignore_label=3)
    out = preference_loss(ratios.chosen_logratios, ratios.rejected_logratios, ratios.region_sizes, ratios.volumes,
                          beta=1.0, min_region_voxels=int(ratios.region_sizes.max()))  # only the largest D is used
    metrics = preference_metrics(out, ratios)
    used = out.used
    assert metrics["n/patches"] == 3 and metrics["n/used"] == int(used.sum()) >= 1
    assert metrics["sum/rewards/margins"] == pytest.approx(float(out.margins[used].sum()))
    assert metrics["sum/rewards/accuracies"] == float((out.margins[used] > 0).sum())
    expected = float((ratios.chosen_logps.detach() / ratios.region_sizes.clamp_min(1))[used].sum())
    assert metrics["sum/logps/chosen"] == pytest.approx(expected)
    assert metrics["sum/region/size_mean"] == pytest.approx(float(ratios.region_sizes.sum()))  # every patch
