"""Reading the base model's checkpoint, with errors that say which checkpoint does not fit and why."""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import torch

from nnunetv2_rndpo.paths import results_folder

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")


def load_checkpoint_file(path: Path, device: torch.device | str = "cpu") -> dict:
    """``torch.load`` of an nnU-Net checkpoint, with an error that names the file when it cannot be read.

    Raises:
        ValueError: the file is truncated, corrupt or not a torch file.
    """
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        raise ValueError(
            f"The checkpoint {path} cannot be read ({type(error).__name__}: {' '.join(str(error).split())[:200]}): it "
            "is truncated or corrupt (a copy cut off, a disk full while nnU-Net saved it?). Copy it again, or train "
            "it again with nnUNetv2_train.") from None


def trained_models(dataset_results_folder: Path, plans: str, configuration: str,
                   exclude: tuple[str, ...] = ()) -> dict[str, dict[str, list[str]]]:
    """The trainers with a ``<trainer>__<plans>__<configuration>`` folder for one dataset, and their checkpoints.

    Args:
        dataset_results_folder: ``$nnUNet_results/DatasetXXX_Name``.
        exclude: trainer names to leave out (the run's own trainer).

    Returns:
        ``{trainer: {"fold_0": ["checkpoint_final.pth", ...], ...}}``, sorted; a fold without a checkpoint
        has an empty list.
    """
    found = {}
    suffix = f"__{plans}__{configuration}"
    folders = sorted(dataset_results_folder.glob(f"*{suffix}")) if dataset_results_folder.is_dir() else []
    for folder in folders:
        trainer = folder.name[: -len(suffix)]
        if trainer in exclude or not folder.is_dir():
            continue
        found[trainer] = {fold.name: [c for c in CHECKPOINT_NAMES if (fold / c).is_file()]
                          for fold in sorted(folder.glob("fold_*")) if fold.is_dir()}
    return found


def describe_trained_models(dataset_results_folder: Path, plans: str, configuration: str, fold: int | str,
                            exclude: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """What a missing-base-checkpoint message says about the models that do exist.

    Returns:
        ``(sentence, trainers)``: a sentence listing :func:`trained_models` with their folds' checkpoints, and
        the trainers that have ``fold_<fold>/checkpoint_final.pth`` and are not themselves preference
        fine-tuned (no ``rndpo_config.json``): the candidates for ``base_trainer``.
    """
    models = trained_models(dataset_results_folder, plans, configuration, exclude)
    if not models:
        return f"{dataset_results_folder} has no {plans} {configuration} model of any trainer.", []

    def fine_tuned(trainer: str) -> bool:
        folder = results_folder(dataset_results_folder.parent, dataset_results_folder.name, trainer, plans,
                                configuration)
        return any(folder.glob("fold_*/rndpo_config.json"))

    described = []
    for trainer, folds in models.items():
        checkpoints = "; ".join(f"{name}: {', '.join(files) or 'no checkpoint'}" for name, files in folds.items())
        fine_tuned_note = "; RN-DPO fine-tuned" if fine_tuned(trainer) else ""
        described.append(f"{trainer} ({checkpoints or 'no fold'}{fine_tuned_note})")
    candidates = [trainer for trainer, folds in models.items()
                  if "checkpoint_final.pth" in folds.get(f"fold_{fold}", []) and not fine_tuned(trainer)]
    return f"Trained {plans} {configuration} models in {dataset_results_folder}: {'; '.join(described)}.", candidates


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
    fix = ("Point base_checkpoint in the file named by $nnUNet_rndpo_config at a model of this dataset and "
           "configuration.")
    trained_for = (checkpoint.get("init_args") or {}).get("configuration")
    if trained_for is not None and trained_for != configuration:
        raise ValueError(f"The base checkpoint {path} was trained for configuration {trained_for!r}, but this run "
                         f"is {configuration!r}. Train with the base model's configuration, or "
                         f"{fix[0].lower()}{fix[1:]}")
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


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """Hex SHA-256 of a network's weights (names, shapes, dtypes and values), independent of file format."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
