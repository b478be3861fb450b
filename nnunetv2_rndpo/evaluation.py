"""Test Dice of a model on a dataset's ``imagesTs/labelsTs``, as the preference phase's curve measures it.

One definition for every number we compare (the trainer's ``eval/dice`` curve, the study's base and
full-label models): mean over test cases of the foreground-mean Dice (:func:`~nnunetv2_rndpo.metrics.
foreground_mean`), predicted by nnU-Net's sliding window without test-time mirroring, in nnU-Net's
preprocessed space: ``nnUNetv2_evaluate_folder``'s per-case definition, without exporting every prediction
at every evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nnunetv2_rndpo.cascade import pool_input
from nnunetv2_rndpo.metrics import dice_per_class, foreground_mean
from nnunetv2_rndpo.pool import PreprocessedPool, find_cases


def preprocessed_test_set(raw_folder: Path, cache_folder: Path, plans_manager, configuration_manager,
                          dataset_json: dict,
              progress: bool = False, previous_stage=None, device="cpu", log=print) -> PreprocessedPool | None:
    """The preprocessed ``imagesTs`` cases that have a label in ``labelsTs`` (cached in ``cache_folder``).

    For a cascade, ``previous_stage`` (:class:`~nnunetv2_rndpo.cascade.PreviousStage`) segments them first.
    Returns None when the raw dataset has no ``imagesTs``/``labelsTs``.
    """
    images, labels = Path(raw_folder) / "imagesTs", Path(raw_folder) / "labelsTs"
    if not (images.is_dir() and labels.is_dir()):
        return None
    cases = find_cases(images, dataset_json["file_ending"], len(dataset_json["channel_names"]), labels,
                       what="test set", fix="add imagesTs/labelsTs to the raw dataset")
    cases = [c for c in cases if c.label_file]
    if previous_stage is not None:
        cases = previous_stage.with_segmentations(cases, Path(cache_folder) / "previous_stage",
                                                  dataset_json["file_ending"])
        previous_stage.predict(cases, device, log)
    pool = PreprocessedPool(cache_folder, cases)
    pool.preprocess(plans_manager, configuration_manager, dataset_json, progress=progress)
    return pool


def dice_on_test_set(predictor, pool: PreprocessedPool, label_manager) -> float:
    """Mean over ``pool``'s cases of the foreground-mean Dice of ``predictor``'s (no-TTA) segmentation
    (:func:`dice_per_test_case`, NaN cases skipped)."""
    return float(np.nanmean(list(dice_per_test_case(predictor, pool, label_manager).values())))


def dice_per_test_case(predictor, pool: PreprocessedPool, label_manager) -> dict[str, float]:
    """``{case_id: foreground-mean Dice}`` of ``predictor``'s (no-TTA) segmentation of each of ``pool``'s cases.

    Args:
        predictor: an initialised ``nnUNetPredictor`` (its network is used as is).
        pool: preprocessed test cases with labels.
        label_manager: the dataset's nnU-Net label manager (labels or regions).
    """
    classes = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    cascade = label_manager.foreground_labels if predictor.configuration_manager.previous_stage_name else None
    scores = {}
    for case_id in pool.case_ids:
        logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(pool_input(pool, case_id, cascade)))
        # nnU-Net's conversion calls .numpy(): the logits go to the CPU first
        prediction = np.asarray(label_manager.convert_logits_to_segmentation(logits.float().cpu()))
        scores[case_id] = foreground_mean(dice_per_class(prediction, pool.label(case_id), classes,
                                                         ignore_label=label_manager.ignore_label))
    return scores


def model_dice_on_test_set(dataset: str | int, configuration: str, fold: int | str, trainer: str,
                    plans: str = "nnUNetPlans", checkpoint: str = "checkpoint_final.pth", device: str = "cpu") -> float:
    """:func:`dice_on_test_set` of a trained model in ``$nnUNet_results`` on its own dataset's test cases."""
    per_case = model_dice_per_test_case(dataset, configuration, fold, trainer, plans, checkpoint, device)
    return float(np.nanmean(list(per_case.values())))


def model_dice_per_test_case(dataset: str | int, configuration: str, fold: int | str, trainer: str,
                             plans: str = "nnUNetPlans", checkpoint: str = "checkpoint_final.pth",
                             device: str = "cpu") -> dict[str, float]:
    """:func:`dice_per_test_case` of a trained model in ``$nnUNet_results`` on its own dataset's test cases."""
    from nnunetv2_rndpo.pipeline import load_base_model

    model = load_base_model(dataset, configuration, fold, trainer, plans, checkpoint, device)
    pool = preprocessed_test_set(model.raw_folder, model.cache_folder / "test", model.plans_manager,
                                 model.configuration_manager,
                     model.dataset_json, previous_stage=model.previous_stage, device=device)
    if pool is None:
        raise FileNotFoundError(f"{model.raw_folder} has no imagesTs/labelsTs: no test Dice without test labels")
    return dice_per_test_case(model.predictor(), pool, model.label_manager)
