"""The preference objective: mask log-likelihoods, disagreement regions and the (RN-)DPO loss.

Everything here is a pure function of tensors: no network, no trainer state. Shapes follow nnU-Net's
axis order: logits ``(B, C, X, Y[, Z])``, label maps ``(B, X, Y[, Z])`` (a singleton channel axis
``(B, 1, X, Y[, Z])`` as in nnU-Net's targets is accepted too). One pair (chosen, rejected) per batch
element, so the number of pairs ``P`` equals ``B``.

The formalisation (docs/objective.md). For a patch with policy logits z_θ and frozen reference logits
z_ref, the per-voxel log-likelihood of a label map y is ℓ_θ(y)_v = log p_θ(y_v | x) and the per-voxel
log-ratio is ρ_v(y) = ℓ_θ(y)_v − ℓ_ref(y)_v. The likelihood factorises over voxels, so every voxel
where chosen y⁺ and rejected y⁻ agree cancels from the DPO margin and only the disagreement region
D = {v : y⁺_v ≠ y⁻_v, v not ignored} remains:

    Δ = Σ_{v∈D} ρ_v(y⁺) − Σ_{v∈D} ρ_v(y⁻)
    h = β · Δ / N,   N = 1 (DPO) | |D| (RN-DPO) | sqrt(|D|) | V (valid voxels of the patch)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from nnunetv2_rndpo.metrics import region_labels

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
NORMALIZATIONS = ("none", "region", "sqrt_region", "volume")


def _as_label_map(label_map: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Drops nnU-Net's singleton channel axis so that a label map has shape ``(B, *spatial)``."""
    if label_map.ndim == logits.ndim and label_map.shape[1] == 1:
        label_map = label_map[:, 0]
    if label_map.shape[0] != logits.shape[0] or label_map.shape[1:] != logits.shape[2:]:
        raise ValueError(
            f"label map of shape {tuple(label_map.shape)} does not match logits of shape "
            f"{tuple(logits.shape)}: expected (B, *spatial) or (B, 1, *spatial) with the logits' "
            "batch and spatial sizes"
        )
    return label_map.long()


def log_probabilities(logits: torch.Tensor, regions: Sequence[int | Sequence[int]] | None = None) -> torch.Tensor:
    """Per-voxel log-probabilities of a network output, float32: computed once per forward and shared by the
    preference term and both anchors (:func:`preference_terms`).

    Args:
        logits: ``(B, C, *spatial)`` raw network output.
        regions: nnU-Net regions (sigmoid) or None (softmax).

    Returns:
        Softmax: ``(B, C, *spatial)`` log softmax(z). Regions: ``(B, 2, R, *spatial)``: log σ(z) and log σ(−z).
    """
    logits = logits.float()
    if regions is None:
        if logits.shape[1] < 2:
            raise ValueError(f"softmax needs at least 2 channels, got logits of shape {tuple(logits.shape)}")
        return torch.log_softmax(logits, dim=1)
    if len(regions) != logits.shape[1]:
        raise ValueError(f"{len(regions)} regions but logits have {logits.shape[1]} channels")
    return torch.stack([F.logsigmoid(logits), F.logsigmoid(-logits)], dim=1)


def label_log_likelihood(
    log_probs: torch.Tensor,
    label_map: torch.Tensor,
    *,
    regions: Sequence[int | Sequence[int]] | None = None,
    ignore_label: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mask_log_likelihood` from log-probabilities already computed (:func:`log_probabilities`).

    Args:
        log_probs: ``(B, C, *spatial)`` (softmax) or ``(B, 2, R, *spatial)`` (regions).
        label_map: ``(B, *spatial)`` integer labels (no channel axis).

    Returns:
        ``(log_likelihood, valid)``, both ``(B, *spatial)``.
    """
    label_map = label_map.long()
    valid = torch.ones_like(label_map, dtype=torch.bool) if ignore_label is None else label_map != ignore_label
    if regions is None:
        safe_labels = torch.where(valid, label_map, torch.zeros_like(label_map))
        log_likelihood = log_probs.gather(1, safe_labels.unsqueeze(1)).squeeze(1)
    else:
        membership = torch.stack(
            [torch.isin(label_map, torch.as_tensor(region_labels(r), device=label_map.device)) for r in regions], dim=1
        ).to(log_probs.dtype)
        log_likelihood = (membership * log_probs[:, 0] + (1 - membership) * log_probs[:, 1]).sum(1)
    return log_likelihood.masked_fill(~valid, 0.0), valid


def mask_log_likelihood(
    logits: torch.Tensor,
    label_map: torch.Tensor,
    *,
    regions: Sequence[int | Sequence[int]] | None = None,
    ignore_label: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-voxel log-likelihood of a label map under a segmentation network's output.

    Multi-class (``regions is None``), the softmax over C classes:
        ℓ_v = log softmax(z)_v[y_v]
    Region-based (nnU-Net's ``LabelManager.foreground_regions``: region r is the union of the labels in
    ``regions[r]``, an int or a tuple of ints, one sigmoid channel per region), independent Bernoullis:
        ℓ_v = Σ_r [ m_rv · log σ(z_rv) + (1 − m_rv) · log σ(−z_rv) ],   m_rv = [y_v ∈ regions[r]]

    Computed in float32 with log-softmax / log-sigmoid, so extreme logits (±1e4) give finite values.

    Args:
        logits: ``(B, C, *spatial)`` raw network output (full-resolution head).
        label_map: ``(B, *spatial)`` or ``(B, 1, *spatial)`` integer labels.
        regions: nnU-Net regions for region-based datasets, or None for softmax.
        ignore_label: voxels with this label contribute 0 and are marked invalid.

    Returns:
        ``(log_likelihood, valid)``, both ``(B, *spatial)``: the per-voxel log-likelihood (0 at ignored
        voxels) and a bool mask of the voxels that are not ignored.
    """
    label_map = _as_label_map(label_map, logits)
    return label_log_likelihood(log_probabilities(logits, regions), label_map, regions=regions,
                                ignore_label=ignore_label)


def disagreement_region(
    chosen: torch.Tensor, rejected: torch.Tensor, ignore_label: int | None = None
) -> torch.Tensor:
    """The voxels where the two masks of a pair disagree: D = {v : y⁺_v ≠ y⁻_v, v not ignored}.

    Args:
        chosen: ``(B, *spatial)`` label map y⁺.
        rejected: ``(B, *spatial)`` label map y⁻, same shape.
        ignore_label: a voxel labelled ``ignore_label`` in either mask is not in D.

    Returns:
        ``(B, *spatial)`` bool. ``|D|`` per pair is ``region.flatten(1).sum(1)``.
    """
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} differ in shape")
    region = chosen != rejected
    if ignore_label is not None:
        region &= (chosen != ignore_label) & (rejected != ignore_label)
    return region


class PairLogRatios(NamedTuple):
    """Per-pair sums over the disagreement region, all ``(P,)`` float32.

    Attributes:
        chosen_logratios: Σ_{v∈D} ρ_v(y⁺), policy minus reference log-likelihood of the chosen mask.
        rejected_logratios: Σ_{v∈D} ρ_v(y⁻).
        chosen_logps: Σ_{v∈D} ℓ_θ(y⁺)_v, the policy's log-likelihood of the chosen mask on D.
        rejected_logps: Σ_{v∈D} ℓ_θ(y⁻)_v.
        region_sizes: |D|.
        volumes: V, the number of non-ignored voxels of the patch.
    """

    chosen_logratios: torch.Tensor
    rejected_logratios: torch.Tensor
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    region_sizes: torch.Tensor
    volumes: torch.Tensor


def pair_log_ratios(
    policy_logits: torch.Tensor,
    reference_logits: torch.Tensor,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    regions: Sequence[int | Sequence[int]] | None = None,
    ignore_label: int | None = None,
) -> PairLogRatios:
    """Sums of per-voxel log-ratios over the disagreement region of each pair.

    One policy forward serves both masks: the log-softmax of ``policy_logits`` is evaluated at y⁺ and
    y⁻. Voxels outside D are excluded explicitly (they cancel in the margin anyway), so changing the
    logits outside D never changes the result.

    Args:
        policy_logits: ``(P, C, *spatial)`` logits of the trained network.
        reference_logits: ``(P, C, *spatial)`` logits of the frozen reference (no grad needed).
        chosen: ``(P, *spatial)`` or ``(P, 1, *spatial)`` label map y⁺.
        rejected: same shape, label map y⁻.
        regions: nnU-Net regions (sigmoid) or None (softmax), see :func:`mask_log_likelihood`.
        ignore_label: label excluded from D and from the volume V.

    Returns:
        :class:`PairLogRatios`.
    """
    return preference_terms(policy_logits, reference_logits, chosen, rejected, regions=regions,
                            ignore_label=ignore_label, consistency=False, agreement=False).ratios


class StepTerms(NamedTuple):
    """What one preference step computes from one policy and one reference forward (:func:`preference_terms`).

    Attributes:
        ratios: :class:`PairLogRatios` over D.
        outside: ``(P, *spatial)`` bool, the non-ignored voxels outside D: where both anchors act.
        consistency: ``(P,)`` :func:`consistency_loss` on ``outside``, or None when not asked for.
        agreement: ``(P,)`` :func:`agreement_loss` on ``outside``, or None when not asked for.
    """

    ratios: PairLogRatios
    outside: torch.Tensor
    consistency: torch.Tensor | None
    agreement: torch.Tensor | None


def preference_terms(
    policy_logits: torch.Tensor,
    reference_logits: torch.Tensor,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    regions: Sequence[int | Sequence[int]] | None = None,
    ignore_label: int | None = None,
    consistency: bool = True,
    agreement: bool = True,
) -> StepTerms:
    """The log-ratio sums over D and the two anchors of one step, each quantity computed once.

    D is computed once, and each network's per-voxel log-probabilities once (:func:`log_probabilities`); the
    log-likelihoods of y⁺ and y⁻ are read from them, the consistency KL and the agreement cross-entropy reuse
    them, and both anchors average over the same voxels ``outside`` D. Equal to :func:`pair_log_ratios`,
    :func:`consistency_loss` and :func:`agreement_loss` called separately.

    Args:
        policy_logits: ``(P, C, *spatial)``.
        reference_logits: ``(P, C, *spatial)`` (no gradient flows into it).
        chosen, rejected: ``(P, *spatial)`` or ``(P, 1, *spatial)`` label maps.
        regions, ignore_label: as in :func:`mask_log_likelihood`.
        consistency, agreement: compute that anchor (its term is None otherwise).
    """
    chosen = _as_label_map(chosen, policy_logits)
    rejected = _as_label_map(rejected, policy_logits)
    region = disagreement_region(chosen, rejected, ignore_label)
    kwargs = {"regions": regions, "ignore_label": ignore_label}
    policy = log_probabilities(policy_logits, regions)
    with torch.no_grad():
        reference = log_probabilities(reference_logits.detach(), regions)
        reference_chosen, _ = label_log_likelihood(reference, chosen, **kwargs)
        reference_rejected, _ = label_log_likelihood(reference, rejected, **kwargs)
    policy_chosen, valid = label_log_likelihood(policy, chosen, **kwargs)
    policy_rejected, _ = label_log_likelihood(policy, rejected, **kwargs)
    flat = region.flatten(1)

    def region_sum(per_voxel: torch.Tensor) -> torch.Tensor:
        return (per_voxel.flatten(1) * flat).sum(1)

    chosen_logps, rejected_logps = region_sum(policy_chosen), region_sum(policy_rejected)
    ratios = PairLogRatios(
        chosen_logratios=chosen_logps - region_sum(reference_chosen),
        rejected_logratios=rejected_logps - region_sum(reference_rejected),
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        region_sizes=flat.sum(1).float(),
        volumes=valid.flatten(1).sum(1).float(),
    )
    outside = valid & ~region
    return StepTerms(
        ratios=ratios,
        outside=outside,
        consistency=_mean_over(_kl(policy, reference, regions), outside) if consistency else None,
        agreement=_mean_over(-policy_chosen, outside) if agreement else None,
    )


class PreferenceLossOutput(NamedTuple):
    """What :func:`preference_loss` returns; per-pair tensors are ``(P,)``.

    Attributes:
        loss: scalar, mean of ``losses`` over the pairs that were not skipped (0 if all were).
        losses: per-pair loss, 0 for skipped pairs.
        chosen_rewards: β · Σ_D ρ(y⁺) / N (detached), 0 for skipped pairs.
        rejected_rewards: β · Σ_D ρ(y⁻) / N (detached), 0 for skipped pairs.
        margins: chosen_rewards − rejected_rewards (detached).
        region_sizes: |D| per pair.
        used: bool, the pairs that entered the loss.
        num_skipped: number of pairs with |D| < ``min_region_voxels``.
    """

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    margins: torch.Tensor
    region_sizes: torch.Tensor
    used: torch.Tensor
    num_skipped: int


def preference_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    region_sizes: torch.Tensor,
    volumes: torch.Tensor | None = None,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    normalization: str = "region",
    label_smoothing: float = 0.0,
    min_region_voxels: int = 1,
) -> PreferenceLossOutput:
    """DPO and Region-Normalized DPO for pairs of segmentation masks.

    With Δ = chosen_logratios − rejected_logratios (sums over the disagreement region D) and the
    normaliser N chosen by ``normalization``:

        none        N = 1          standard DPO (Rafailov et al. 2023)
        region      N = |D|        RN-DPO: the margin is the mean per-voxel log-ratio gap over D
        sqrt_region N = sqrt(|D|)
        volume      N = V          the number of non-ignored voxels of the patch

    u = Δ / N and h = β·u. Per-pair losses by ``loss_type`` (ε = ``label_smoothing``):

        sigmoid  −(1−ε)·log σ(h) − ε·log σ(−h)          DPO; ε > 0 is conservative DPO (cDPO)
        ipo      (u − 1/(2β))²                         IPO (Azar et al. 2023), β acting as τ
        hinge    max(0, 1 − h)                          SLiC (Zhao et al. 2023)
        robust   ((1−ε)·(−log σ(h)) − ε·(−log σ(−h))) / (1 − 2ε)   rDPO, flip rate ε (Chowdhury et al. 2024)

    Pairs with |D| < ``min_region_voxels`` (at least 1, so N is never 0) are skipped: their loss and
    rewards are 0, they carry no gradient and they are counted in ``num_skipped``. All arithmetic is
    float32, so half-precision inputs and extreme log-ratios give finite losses.

    Assumption: the abstract states only that RN-DPO "normalizes preference updates by the size of the
    disagreement region between masks". We read this as dividing the summed log-ratio gap by |D|
    (``region``), i.e. the gradient reaching each voxel of D is β·σ(−h)/|D| and its total over D does
    not grow with |D|. ``sqrt_region`` and ``volume`` are our alternatives, kept for study, in analogy to
    length normalisation in language-model DPO. The ε semantics follow TRL's ``label_smoothing``.

    Args:
        chosen_logratios: ``(P,)`` Σ_{v∈D} ρ_v(y⁺).
        rejected_logratios: ``(P,)`` Σ_{v∈D} ρ_v(y⁻).
        region_sizes: ``(P,)`` |D|.
        volumes: ``(P,)`` V; required only for ``normalization="volume"``.
        beta: β > 0, the inverse temperature (scale differs per normalisation).
        loss_type: one of :data:`LOSS_TYPES`.
        normalization: one of :data:`NORMALIZATIONS`.
        label_smoothing: ε in [0, 0.5).
        min_region_voxels: pairs with fewer disagreeing voxels are skipped.

    Returns:
        :class:`PreferenceLossOutput`.

    Raises:
        ValueError: unknown ``loss_type``/``normalization`` or out-of-range hyper-parameters.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if normalization == "volume" and volumes is None:
        raise ValueError("normalization='volume' needs the patch volumes")

    chosen_logratios = chosen_logratios.float()
    rejected_logratios = rejected_logratios.float()
    region_sizes = region_sizes.float()
    used = region_sizes >= max(1, min_region_voxels)
    ones = torch.ones_like(region_sizes)
    if normalization == "none":
        normaliser = ones
    elif normalization == "region":
        normaliser = torch.where(used, region_sizes, ones)
    elif normalization == "sqrt_region":
        normaliser = torch.where(used, region_sizes, ones).sqrt()
    elif normalization == "volume":
        normaliser = torch.where(used, volumes.float().clamp_min(1.0), ones)
    else:
        raise ValueError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")

    # Skipped pairs enter as exact zeros so that neither the loss nor its gradient can be NaN.
    chosen_normalised = torch.where(used, chosen_logratios / normaliser, torch.zeros_like(normaliser))
    rejected_normalised = torch.where(used, rejected_logratios / normaliser, torch.zeros_like(normaliser))
    gap = chosen_normalised - rejected_normalised
    h = beta * gap
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)
    elif loss_type == "ipo":
        losses = (gap - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - h)
    elif loss_type == "robust":
        losses = ((1 - eps) * -F.logsigmoid(h) + eps * F.logsigmoid(-h)) / (1 - 2 * eps)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
    losses = torch.where(used, losses, torch.zeros_like(losses))

    num_used = int(used.sum())
    loss = losses.sum() / max(num_used, 1)
    chosen_rewards = (beta * chosen_normalised).detach()
    rejected_rewards = (beta * rejected_normalised).detach()
    return PreferenceLossOutput(
        loss=loss,
        losses=losses,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        margins=chosen_rewards - rejected_rewards,
        region_sizes=region_sizes,
        used=used,
        num_skipped=int(used.numel() - num_used),
    )


def preference_metrics(out: PreferenceLossOutput, ratios: PairLogRatios) -> dict[str, float]:
    """The step's sums that the epoch metrics average (TRL's reward and log-prob names), over the pairs that
    entered the loss (``out.used``); ``n/used`` and ``n/patches`` count them.

    ``sum/logps/*`` are the policy's mean per-voxel log-likelihoods over D; ``sum/region/*`` sum |D| and
    |D| / V over every patch.
    """
    used = out.used
    per_voxel = ratios.region_sizes.clamp_min(1)

    def used_sum(values: torch.Tensor) -> float:
        return float(values.detach()[used].sum())

    return {
        "n/used": int(used.sum()),
        "n/patches": int(used.numel()),
        "sum/rewards/chosen": used_sum(out.chosen_rewards),
        "sum/rewards/rejected": used_sum(out.rejected_rewards),
        "sum/rewards/margins": used_sum(out.margins),
        "sum/rewards/accuracies": used_sum((out.margins > 0).float()),
        "sum/logps/chosen": used_sum(ratios.chosen_logps / per_voxel),
        "sum/logps/rejected": used_sum(ratios.rejected_logps / per_voxel),
        "sum/region/size_mean": float(ratios.region_sizes.sum()),
        "sum/region/frac": float((ratios.region_sizes / ratios.volumes.clamp_min(1)).sum()),
    }


def _mean_over(per_voxel: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per-patch mean of ``per_voxel`` over ``region`` (both ``(P, *spatial)``); 0 where the region is empty."""
    region = region.flatten(1).float()
    return (per_voxel.flatten(1) * region).sum(1) / region.sum(1).clamp_min(1.0)


def consistency_loss(
    policy_logits: torch.Tensor,
    reference_logits: torch.Tensor,
    outside: torch.Tensor,
    *,
    regions: Sequence[int | Sequence[int]] | None = None,
) -> torch.Tensor:
    """Label-free trust region: KL(π_ref ‖ π_θ) per voxel, averaged over the voxels outside D.

    Softmax:  KL_v = Σ_c p_ref,c · (log p_ref,c − log p_θ,c)
    Regions:  KL_v = Σ_r Bernoulli KL(σ(z_ref,r) ‖ σ(z_θ,r))
    Per patch: L_c = (1 / |Ω∖D|) Σ_{v∉D} KL_v, with Ω the non-ignored voxels of the patch.

    Normalisation: a mean over the voxels outside D, so the term's total gradient over the patch is
    O(1) whatever |D| is, as is RN-DPO's (a mean over D, total gradient β·σ(−h)). With DPO
    (``normalization='none'``) the preference gradient grows with |D| and ``consistency_weight`` has
    to grow with it.

    Assumption: the abstract says nothing about anchors; the KL direction is the one of the RLHF trust
    region (KL of the policy from the reference, expectations under the reference).

    Args:
        policy_logits: ``(P, C, *spatial)``.
        reference_logits: ``(P, C, *spatial)`` (no grad).
        outside: ``(P, *spatial)`` bool, voxels outside D and not ignored.
        regions: nnU-Net regions (sigmoid) or None (softmax).

    Returns:
        ``(P,)`` float32 per-patch losses (0 for a patch with no voxel outside D).
    """
    policy = log_probabilities(policy_logits, regions)
    reference = log_probabilities(reference_logits.detach(), regions)
    return _mean_over(_kl(policy, reference, regions), outside)


def _kl(policy: torch.Tensor, reference: torch.Tensor, regions) -> torch.Tensor:
    """Per-voxel KL(π_ref ‖ π_θ) ``(P, *spatial)`` from :func:`log_probabilities` of both networks."""
    if regions is None:
        return (reference.exp() * (reference - policy)).sum(1)
    return (reference.exp() * (reference - policy)).sum((1, 2))  # both Bernoulli outcomes, every region


def agreement_loss(
    policy_logits: torch.Tensor,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    regions: Sequence[int | Sequence[int]] | None = None,
    ignore_label: int | None = None,
) -> torch.Tensor:
    """Cross-entropy to the label that chosen and rejected agree on, averaged over the voxels outside D.

    L_a = −(1 / |Ω∖D|) Σ_{v∉D} ℓ_θ(y⁺)_v   (y⁺_v = y⁻_v there). Same normalisation as
    :func:`consistency_loss`. Assumption: where two proposals of the base model agree, their label is
    a good enough pseudo-label to hold the prediction in place.

    Returns:
        ``(P,)`` float32 per-patch losses.
    """
    chosen = _as_label_map(chosen, policy_logits)
    rejected = _as_label_map(rejected, policy_logits)
    log_likelihood, valid = mask_log_likelihood(policy_logits, chosen, regions=regions, ignore_label=ignore_label)
    outside = valid & ~disagreement_region(chosen, rejected, ignore_label)
    return _mean_over(-log_likelihood, outside)


__all__ = [
    "LOSS_TYPES",
    "NORMALIZATIONS",
    "PairLogRatios",
    "PreferenceLossOutput",
    "StepTerms",
    "agreement_loss",
    "consistency_loss",
    "disagreement_region",
    "label_log_likelihood",
    "log_probabilities",
    "mask_log_likelihood",
    "pair_log_ratios",
    "preference_loss",
    "preference_metrics",
    "preference_terms",
]
