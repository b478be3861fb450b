"""Training the learned judge (:mod:`nnunetv2_rndpo.learned_judge`) for a base model, and measuring it.

The judge is a function of its network (``learned_judge``); training it needs what the pipeline makes: the
base model's proposals for the fold's labeled cases (:func:`training_masks`) and for its validation cases
(:func:`validation_reliability`). This module holds that orchestration, so that the pipeline, which scores
with a trained judge, and the judge itself import each other in one direction only.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

from nnunetv2_rndpo.judges import agreement_scores, true_dice
from nnunetv2_rndpo.learned_judge import (
    CROP_SIZE,
    JudgeTraining,
    LearnedJudge,
    RankingNet,
    drop_2d_axis,
    perturbed_predictions,
    ranking_step,
    step_masks,
)
from nnunetv2_rndpo.metrics import without_size_trend
from nnunetv2_rndpo.pipeline import labeled_proposals, load_base_model, proposal_cache
from nnunetv2_rndpo.pool import LabeledPool, labeled_cases
from nnunetv2_rndpo.profile_judge import ProfileJudge, boundary_profiles, fit_profile_ranker, label_moves
from nnunetv2_rndpo.proposals import generate_proposals
from nnunetv2_rndpo.reliability import judge_reliability


def training_masks(base, settings, cases, case_ids: list[str], training: JudgeTraining, progress: bool = True,
                   ) -> dict[str, np.ndarray]:
    """``{case: (M, *spatial) uint8}``: the base model's proposals for labeled cases (``settings``, cached
    with the validation cases' in ``<cache_folder>/labeled_proposals``) and its weight-noise predictions."""
    pool = LabeledPool(cases, case_ids)
    cache, specs, extra = proposal_cache(base, settings, "labeled_proposals")
    generate_proposals(cache, pool, base.predictor(), specs, base.label_manager, base.mirror_axes, base.device,
                       progress, seed=settings.seed, extra_weights=extra, cascade_labels=base.cascade_labels)
    noisy = perturbed_predictions(base, pool, case_ids, training.weight_noise, training.seed, progress)
    return {c: np.concatenate([cache.masks(c), np.stack(noisy[c]).reshape(-1, *cache.masks(c).shape[1:])])
            if noisy[c] else cache.masks(c) for c in case_ids}


def cross_validation_masks(base, settings, train_ids: list[str], progress: bool = True, log=print,
                           ) -> dict[str, np.ndarray]:
    """``{case: (K, *spatial) uint8}``: each training case's proposals (``settings``) by the cross-validation fold
    model that held it out: nnU-Net's ``fold_<f>/`` of the same trainer, plans and configuration, ``f`` ≠ the
    base's fold, whose ``splits_final.json`` validation cases they are (cached in that fold's
    ``labeled_proposals/``, where its own reliability report keeps them).

    A model never trained on the case makes them, so their errors are of the kind the pool's proposals have,
    not those of a case the base model has fitted (whose size lean can be the pool's opposite: docs/toolkit.md,
    "What the learned judge learns"). A training case no trained fold held out gets none (it ranks masks made
    from its label, as with ``"label"``).

    Raises:
        FileNotFoundError: no cross-validation fold other than the base's is trained (the message gives the
            command).
    """
    folds = sorted(int(p.name.removeprefix("fold_")) for p in base.model_folder.glob("fold_*")
                   if p.name.removeprefix("fold_").isdigit() and p.name != f"fold_{base.fold}"
                   and (p / base.checkpoint_name).is_file())
    if not folds:
        raise FileNotFoundError(
            f"--training-masks cross_validation needs trained cross-validation folds besides fold {base.fold} in "
            f"{base.model_folder}: train them first, e.g. nnUNetv2_train {base.dataset_name} "
            f"{base.configuration_name} 0 -tr {base.trainer_name} (folds 0 to 4)")
    plans = base.model_folder.name.split("__")[1]
    wanted, masks = set(train_ids), {}
    for fold in folds:
        model = load_base_model(base.dataset_name, base.configuration_name, fold, base.trainer_name, plans,
                                base.checkpoint_name, base.device)
        pool, cache = labeled_proposals(model, settings, progress, log)
        for case_id in pool.case_ids:
            if case_id in wanted and case_id not in masks:
                masks[case_id] = cache.masks(case_id)
    log(f"RN-DPO: cross-validation masks for {len(masks)} of {len(train_ids)} judge training cases from folds "
        f"{', '.join(map(str, folds))}")
    return masks


def validation_reliability(judge: LearnedJudge | ProfileJudge, base, settings, progress: bool = True,
                           log=print) -> dict:
    """``val/*``: the judge's and the agreement judge's reliability on the base model's proposals for the
    fold's validation cases (:func:`~nnunetv2_rndpo.reliability.judge_reliability`)."""
    pool, cache = labeled_proposals(base, settings, progress, log)
    ignore = base.label_manager.ignore_label
    dice = {c: true_dice(cache.masks(c), pool.label(c), base.classes, ignore) for c in pool.case_ids}
    learned = {c: judge.score(pool.image(c), cache.masks(c)) for c in pool.case_ids}
    agreement = {c: agreement_scores(cache.masks(c), base.classes) for c in pool.case_ids}
    metrics = {f"val/{k}": v for k, v in judge_reliability(learned, dice).items()}
    metrics.update({f"val/agreement/{k}": v for k, v in judge_reliability(agreement, dice).items()
                    if k.startswith(("spearman/per_case", "spearman/pooled", "pairwise/accuracy", "top1/regret"))})
    return metrics


def train_learned_judge(base, settings, training: JudgeTraining = JudgeTraining(), progress: bool = True,  # noqa: B008
                        with_validation_cases: bool = False, log=print) -> LearnedJudge | ProfileJudge:
    """Trains a :class:`LearnedJudge` or (``training.model`` "boundary_profile") a
    :class:`~nnunetv2_rndpo.profile_judge.ProfileJudge` on the fold's labeled training cases; reliability on its
    validation cases.

    Args:
        base: the base model (:class:`~nnunetv2_rndpo.pipeline.BaseModel`).
        settings: the proposal settings (:class:`~nnunetv2_rndpo.pipeline.ProposalSettings`), the same as
            the pool's, so the judge learns on masks made like the ones it will rank.
        with_validation_cases: also train on the validation cases; their ``val/*`` metrics then no longer
            measure unseen cases (``val/held_out`` is 0).

    Raises:
        ValueError: no labeled training cases in the split.
    """
    cases, train_ids, val_ids = labeled_cases(base, base.fold)
    if not train_ids:
        raise ValueError(f"fold {base.fold} of {base.dataset_name} has no labeled training cases to train a judge on")
    if with_validation_cases:
        train_ids = sorted(set(train_ids) | set(val_ids))
    classes, ignore_label = base.classes, base.label_manager.ignore_label
    dim = len(base.configuration_manager.patch_size)
    size = (training.crop_size or CROP_SIZE[dim],) * dim
    began = time.monotonic()
    if training.masks == "predictions":
        predictions = training_masks(base, settings, cases, train_ids, training, progress)
    elif training.masks == "cross_validation":
        predictions = cross_validation_masks(base, settings, train_ids, progress, log)
    else:
        predictions = {}
    if training.model == "boundary_profile":
        judge = fit_profile_judge(cases, train_ids, predictions, classes, ignore_label, training, progress)
    else:
        in_channels = cases[train_ids[0]][0].shape[0] + 2 * len(classes)
        network, steps, losses = fit_ranking_net(cases, train_ids, predictions, in_channels, classes, ignore_label,
                                                 size, training, progress)
        judge = LearnedJudge(network.eval(), classes, in_channels, dim, size, training.width, {
            "train/steps": steps, "train/loss_last_epoch": float(np.mean(losses)) if losses else math.nan},
            asdict(training))
    judge.metrics.update({"train/cases": len(train_ids), "train/seconds": round(time.monotonic() - began, 1)})
    judge.metrics["val/held_out"] = int(not with_validation_cases and str(base.fold) != "all")
    if val_ids:
        judge.metrics.update(validation_reliability(judge, base, settings, progress, log))
    return judge


def fit_profile_judge(cases, train_ids: list[str], predictions: dict[str, np.ndarray], classes,
                      ignore_label: int | None, training: JudgeTraining, progress: bool = True) -> ProfileJudge:
    """A :class:`~nnunetv2_rndpo.profile_judge.ProfileJudge` fitted on the training cases: each case's label and
    its moves (:func:`~nnunetv2_rndpo.profile_judge.label_moves`) and its ``predictions`` (none with ``masks``
    "label"), ordered by their true Dice (``targets`` "size_free": less its line in mask size).

    Args: as for :func:`fit_ranking_net`.
    """
    features, targets = [], []
    for case_id in tqdm(train_ids, desc="boundary profiles", disable=not progress):
        image, label = cases[case_id]
        masks = label_moves(label, classes).astype(np.uint8)
        if case_id in predictions:
            masks = np.concatenate([masks, predictions[case_id].reshape(-1, *label.shape)])
        dice = true_dice(masks, label, classes, ignore_label)
        if training.targets == "size_free":
            dice = without_size_trend(dice, np.array([np.count_nonzero(m) for m in masks]))
        features.append(boundary_profiles(image, masks, classes))
        targets.append(dice)
    weights, scale, stats = fit_profile_ranker(features, targets)
    return ProfileJudge(weights, scale, list(classes), stats, asdict(training))


def fit_ranking_net(cases, train_ids: list[str], predictions: dict[str, np.ndarray], in_channels: int,
                    classes, ignore_label: int | None, size: tuple[int, ...], training: JudgeTraining,
                    progress: bool = True) -> tuple[RankingNet, int, list[float]]:
    """The judge's training loop: ``training.epochs`` passes over the training cases in a seeded order, one
    :func:`~nnunetv2_rndpo.learned_judge.ranking_step` per case on ``training.masks_per_step`` of its masks.

    Seeded by ``training.seed`` (numpy for the order, crops and masks; torch, forked, for the initial weights).

    Args:
        cases: ``{case_id: (image (C, *spatial), label)}`` of the labeled cases.
        train_ids: the cases to train on.
        predictions: ``{case_id: (M, *spatial) uint8}`` masks to rank (:func:`training_masks`); a case without
            them (``training.masks`` "label": none) ranks masks made from its label alone.
        in_channels: the network's input channels (image channels + 2 per class).
        classes: the classes scored (``base.classes``).
        ignore_label: nnU-Net's ignore label, or None.
        size: the crop size, one entry per spatial axis of the network.

    Returns:
        ``(network, steps taken, the losses of the last epoch)``; a step without a loss (e.g. identical masks)
        is not counted.
    """
    dim = len(size)
    rng = np.random.default_rng(training.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(training.seed)
        network = RankingNet(in_channels, dim, training.width)
        optimizer = torch.optim.Adam(network.parameters(), lr=training.learning_rate)
        losses, steps = [], 0
        for _ in tqdm(range(training.epochs), desc="training learned judge", disable=not progress):
            losses = []
            for case_id in rng.permutation(train_ids):
                image, label = cases[case_id]
                # masks "label": the label is the one "prediction" step_masks moves and corrupts
                image, masks = drop_2d_axis(image, predictions.get(case_id, label[None]), dim)
                label = label[0] if label.ndim == dim + 1 else label
                chosen = step_masks(label, masks, classes, training.masks_per_step, rng)
                loss = ranking_step(network, optimizer, image, label, chosen, classes, size, ignore_label, rng,
                                    size_free=training.targets == "size_free")
                if loss is not None:
                    losses.append(loss)
                    steps += 1
    return network, steps, losses
