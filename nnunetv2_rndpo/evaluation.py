"""Test Dice of a model on a dataset's ``imagesTs/labelsTs``, as the preference phase's curve measures it.

One definition for every number we compare (the trainer's ``eval/dice`` curve, the study's base and
full-label models): mean over test cases of the foreground-mean Dice (:func:`~nnunetv2_rndpo.metrics.
foreground_mean`), predicted by nnU-Net's sliding window without test-time mirroring, in nnU-Net's
preprocessed space: ``nnUNetv2_evaluate_folder``'s per-case definition, without exporting every prediction
at every evaluation. The Dice of every test case is kept beside the mean (:class:`DicePerCase`), so that two
runs can be compared case by case (:mod:`nnunetv2_rndpo.comparison`).

:class:`DiceCurve` is the preference phase's test-Dice curve: the policy's :class:`DicePerCase` at every
evaluation point, row 0 = the base model (measured once per base model and test set).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nnunetv2_rndpo.atomic_files import atomic_write_text
from nnunetv2_rndpo.cascade import pool_input
from nnunetv2_rndpo.checkpoint import weights_sha256
from nnunetv2_rndpo.datasets import SPLIT_FOLDERS
from nnunetv2_rndpo.metrics import dice_per_class, foreground_mean
from nnunetv2_rndpo.pool import PreprocessedPool, find_cases

BASE_TEST_DICE_FILE = "base_test_dice.json"  # in the cache folder: the base model's test Dice per weights key
# The labeled splits a fine-tuning run is evaluated on: name → (raw folder suffix: images<X>/labels<X>, as the dataset
# maker writes them; the prefix of its keys in rndpo_metrics.jsonl). ``validation`` (imagesVal/labelsVal,
# nnUNetv2_rndpo_make_dataset --validation): cases kept out of the pool and the test set, on which hyperparameters are
# chosen (docs/study.md, "Honest tuning").
EVALUATION_SPLITS = {split: (SPLIT_FOLDERS[split], prefix) for split, prefix in (("test", "eval/"),
                                                                                 ("validation", "eval/val_"))}


@dataclass(frozen=True)
class DicePerCase:
    """A model's Dice on the test set: the mean over cases and each case's foreground-mean Dice.

    ``per_case`` may hold NaN (a case where every class is absent from prediction and label); ``mean``
    leaves those out (nnU-Net's ``nanmean``).
    """

    mean: float
    per_case: dict[str, float]

    @classmethod
    def from_cases(cls, per_case: dict[str, float]) -> DicePerCase:
        values = [v for v in per_case.values() if not math.isnan(v)]
        return cls(float(np.mean(values)) if values else math.nan, dict(per_case))

    def row(self, split: str = "test") -> dict:
        """The keys of a ``rndpo_metrics.jsonl`` row: ``eval/dice`` and ``eval/dice_per_case`` ({case_id: Dice});
        of the ``validation`` split ``eval/val_dice`` and ``eval/val_dice_per_case``."""
        prefix = EVALUATION_SPLITS[split][1]
        return {f"{prefix}dice": self.mean, f"{prefix}dice_per_case": self.per_case}


def preprocessed_test_set(raw_folder: Path, cache_folder: Path, plans_manager, configuration_manager,
                          dataset_json: dict, progress: bool = False, previous_stage=None, device="cpu", log=print,
                          split: str = "test") -> PreprocessedPool | None:
    """The preprocessed ``imagesTs`` cases that have a label in ``labelsTs`` (cached in ``cache_folder``); with
    ``split="validation"`` those of ``imagesVal``/``labelsVal`` (EVALUATION_SPLITS).

    For a cascade, ``previous_stage`` (:class:`~nnunetv2_rndpo.cascade.PreviousStage`) segments them first.
    Returns None when the raw dataset has no such folders, or they hold no case.
    """
    suffix = EVALUATION_SPLITS[split][0]
    images, labels = Path(raw_folder) / f"images{suffix}", Path(raw_folder) / f"labels{suffix}"
    if not (images.is_dir() and labels.is_dir()) or not any(images.iterdir()):
        return None
    cases = find_cases(images, dataset_json["file_ending"], len(dataset_json["channel_names"]), labels,
                       what=f"{split} set", fix=f"add images{suffix}/labels{suffix} to the raw dataset")
    cases = [c for c in cases if c.label_file]
    if previous_stage is not None:
        cases = previous_stage.with_segmentations(cases, Path(cache_folder) / "previous_stage",
                                                  dataset_json["file_ending"])
        previous_stage.predict(cases, device, log)
    pool = PreprocessedPool(cache_folder, cases)
    pool.preprocess(plans_manager, configuration_manager, dataset_json, progress=progress)
    return pool


def dice_on_test_set(predictor, pool: PreprocessedPool, label_manager) -> DicePerCase:
    """The foreground-mean Dice of ``predictor``'s (no-TTA) segmentation of each of ``pool``'s cases, and their mean.

    Args:
        predictor: an initialised ``nnUNetPredictor`` (its network is used as is).
        pool: preprocessed test cases with labels.
        label_manager: the dataset's nnU-Net label manager (labels or regions).
    """
    classes = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    cascade = label_manager.foreground_labels if predictor.configuration_manager.previous_stage_name else None
    per_case = {}
    for case_id in pool.case_ids:
        logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(pool_input(pool, case_id, cascade)))
        # nnU-Net's conversion calls .numpy(): the logits go to the CPU first
        prediction = np.asarray(label_manager.convert_logits_to_segmentation(logits.float().cpu()))
        per_case[case_id] = foreground_mean(dice_per_class(prediction, pool.label(case_id), classes,
                                                           ignore_label=label_manager.ignore_label))
    return DicePerCase.from_cases(per_case)


def model_dice_on_test_set(dataset: str | int, configuration: str, fold: int | str, trainer: str,
                    plans: str = "nnUNetPlans", checkpoint: str = "checkpoint_final.pth", device: str = "cpu") -> float:
    """:func:`dice_on_test_set` of a trained model in ``$nnUNet_results`` on its own dataset's test cases."""
    per_case = model_dice_per_test_case(dataset, configuration, fold, trainer, plans, checkpoint, device)
    return DicePerCase.from_cases(per_case).mean


def model_dice_per_test_case(dataset: str | int, configuration: str, fold: int | str, trainer: str,
                             plans: str = "nnUNetPlans", checkpoint: str = "checkpoint_final.pth",
                             device: str = "cpu") -> dict[str, float]:
    """``{case_id: Dice}`` of :func:`dice_on_test_set` of a trained model in ``$nnUNet_results`` on its own
    dataset's test cases."""
    from nnunetv2_rndpo.pipeline import load_base_model

    model = load_base_model(dataset, configuration, fold, trainer, plans, checkpoint, device)
    pool = preprocessed_test_set(model.raw_folder, model.cache_folder / "test", model.plans_manager,
                                 model.configuration_manager,
                     model.dataset_json, previous_stage=model.previous_stage, device=device)
    if pool is None:
        raise FileNotFoundError(f"{model.raw_folder} has no imagesTs/labelsTs: no test Dice without test labels")
    return dice_on_test_set(model.predictor(), pool, model.label_manager).per_case


def weights_key(state_dict: dict[str, torch.Tensor], case_ids: list[str]) -> str:
    """A hash of a network's weights and the cases it is evaluated on (the key of a cached test Dice)."""
    digest = hashlib.sha256(weights_sha256(state_dict).encode())
    digest.update("\n".join(sorted(case_ids)).encode())
    return digest.hexdigest()[:16]


def policy_predictor(trainer, network: torch.nn.Module | None = None):
    """An nnU-Net predictor (no TTA) over a copy of ``trainer``'s current network, or over ``network``."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    t = trainer
    if network is None:
        t.set_deep_supervision_enabled(False)
        network = copy.deepcopy(t.network.module if t.is_ddp else t.network)
        t.set_deep_supervision_enabled(True)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=t.device.type == "cuda", device=t.device,
                                verbose=False, allow_tqdm=False)
    predictor.manual_initialization(network, t.plans_manager, t.configuration_manager, None, t.dataset_json,
                                    t.__class__.__name__, t.inference_allowed_mirroring_axes)
    return predictor


class DiceCurve:
    """The test-Dice curve of a fine-tuning run: the trainer's policy on its dataset's ``imagesTs/labelsTs``
    (``split="validation"``: the validation curve, on ``imagesVal/labelsVal``).

    Held by the preference phase (rank 0 only); :meth:`open` returns None when the raw dataset has no such split.
    """

    def __init__(self, trainer, pool: PreprocessedPool, cache_folder: Path, split: str = "test"):
        self.trainer, self.pool, self.cache_folder, self.split = trainer, pool, Path(cache_folder), split

    @classmethod
    def open(cls, trainer, raw_folder: Path, cache_folder: Path, split: str = "test") -> DiceCurve | None:
        """Preprocesses (once, cached in ``cache_folder/<split>``) the cases of ``raw_folder``'s ``split``.

        Args:
            trainer: the nnU-Net trainer whose network is evaluated.
            raw_folder: the dataset's raw folder (``imagesTs/``, ``labelsTs/``; ``imagesVal/``, ``labelsVal/``).
            cache_folder: the base model's RN-DPO cache folder.
            split: ``test`` or ``validation`` (EVALUATION_SPLITS).
        """
        t = trainer
        pool = preprocessed_test_set(raw_folder, Path(cache_folder) / split, t.plans_manager, t.configuration_manager,
                                     t.dataset_json, progress=True, previous_stage=t.previous_stage, device=t.device,
                                     log=t.print_to_log_file, split=split)
        if pool is None:
            if split == "test":
                t.print_to_log_file(f"RN-DPO: eval_every > 0 but {raw_folder} has no imagesTs/labelsTs; no test curve")
            return None
        return cls(trainer, pool, cache_folder, split)

    def evaluate(self) -> DicePerCase:
        """The current policy's :func:`dice_on_test_set` (the network goes back to training mode after)."""
        dice = dice_on_test_set(policy_predictor(self.trainer), self.pool, self.trainer.label_manager)
        self.trainer.network.train()
        return dice

    def base_dice(self, reference: torch.nn.Module) -> DicePerCase:
        """Row 0 of the curve: the base model's Dice on the split, measured once per base model and set of cases.

        Called before the first step, when the policy holds the base (= ``reference``) weights. Every run from
        the same base on the same test set starts with the same numbers; they are kept in
        ``<cache>/base_test_dice.json`` as ``{key: {"dice": mean, "dice_per_case": {case_id: Dice}}}``, keyed
        by a hash of the reference weights and the test case ids, so a second arm from that base does not
        predict the test set again. An entry written before the per-case Dice was kept (a bare number) is
        measured again.
        """
        path = self.cache_folder / BASE_TEST_DICE_FILE
        key = weights_key(reference.state_dict(), self.pool.case_ids)
        known = json.loads(path.read_text()) if path.is_file() else {}
        if isinstance(known.get(key), dict):
            dice = DicePerCase(known[key]["dice"], known[key]["dice_per_case"])
            self.trainer.print_to_log_file(f"RN-DPO: base test Dice {dice.mean:.4f} (measured before, {path})")
            return dice
        dice = self.evaluate()
        known[key] = {"dice": dice.mean, "dice_per_case": dice.per_case}
        atomic_write_text(path, json.dumps(known, indent=1))
        return dice
