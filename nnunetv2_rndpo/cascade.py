"""Cascades: a ``3d_cascade_fullres`` network takes the previous stage's segmentation as extra input channels.

nnU-Net's convention, followed here everywhere the network sees an image (proposals, the preference
patches, the test-Dice curve, the drift guard, labeled-case proposals): the network input is the image
channels followed by the one-hot previous-stage segmentation of each foreground label
(``convert_labelmap_to_one_hot(seg, label_manager.foreground_labels)``), in the cascade configuration's
preprocessed space. Where the previous-stage segmentations come from:

- labeled cases: ``<previous stage model>/predicted_next_stage/<configuration>/``, the cross-validation
  predictions the previous stage's final validation writes; the base cascade model was trained on them
  (nnU-Net's dataset class reads them through ``folder_with_segs_from_previous_stage``);
- unlabeled pool and test cases: predicted here with the previous-stage model, as ``nnUNetv2_predict -c
  3d_lowres`` does (sliding window with mirroring), saved in raw space and preprocessed together with the
  case, as ``nnUNetPredictor`` does with ``folder_with_segs_from_prev_stage`` (``-prev_stage_predictions``).

Assumption: the previous stage is the base trainer's model of the same plans and fold (``base_trainer``),
the one whose predictions the base cascade model was trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# the file endings nnU-Net's dataset classes read previous-stage segmentations from
_SEGMENTATION_ENDINGS = (".b2nd", ".npz", ".npy")


@dataclass(frozen=True)
class PreviousStage:
    """The model whose segmentations a cascade configuration takes as input.

    ``model_folder`` is its ``Trainer__Plans__configuration`` results folder; ``next_configuration`` the
    cascade configuration that reads its segmentations.
    """

    model_folder: Path
    fold: int | str
    configuration: str
    next_configuration: str
    trainer: str
    checkpoint: str = "checkpoint_final.pth"

    @property
    def checkpoint_file(self) -> Path:
        return self.model_folder / f"fold_{self.fold}" / self.checkpoint

    @property
    def labeled_segmentations(self) -> Path:
        """Where the previous stage's final validation wrote its segmentations of the labeled cases."""
        return self.model_folder / "predicted_next_stage" / self.next_configuration

    def require(self, dataset: str, plans: str, labeled_ids: list[str] = ()) -> None:
        """Checks, before anything runs, that the previous stage is trained and has segmented ``labeled_ids``.

        Raises:
            FileNotFoundError: no previous-stage checkpoint, or labeled cases without a previous-stage
                segmentation; the message gives the command that makes them.
        """
        train = f"nnUNetv2_train {dataset} {self.configuration} FOLD -tr {self.trainer} -p {plans}"
        if not self.checkpoint_file.is_file():
            raise FileNotFoundError(
                f"{self.next_configuration} is a cascade: its network takes the segmentations of {self.configuration} "
                f"as input, but the previous stage's checkpoint {self.checkpoint_file} does not exist. Train it "
                f"first:\n  {train.replace('FOLD', str(self.fold))}")
        missing = [i for i in labeled_ids
                   if not any((self.labeled_segmentations / f"{i}{e}").is_file() for e in _SEGMENTATION_ENDINGS)]
        if missing:
            raise FileNotFoundError(
                f"{self.next_configuration} is a cascade and {len(missing)} labeled case(s) (e.g. {missing[:3]}) have "
                f"no {self.configuration} segmentation in {self.labeled_segmentations}. nnU-Net writes them in the "
                f"final validation of every {self.configuration} fold: run\n  {train}\nfor every fold (or fold all), "
                "as for nnU-Net's own cascade training.")

    def _key(self) -> str:
        stat = os.stat(self.checkpoint_file)
        return hashlib.sha256(f"{self.checkpoint_file}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]

    def with_segmentations(self, cases: list, folder: Path, file_ending: str) -> list:
        """The cases with ``previous_stage_file`` set to where :meth:`predict` writes their segmentation.

        ``folder/<key>/`` is keyed by the previous-stage checkpoint (path, size, modification time), so a
        retrained previous stage writes new segmentations instead of reusing stale ones.
        """
        target = Path(folder) / self._key()
        return [dataclasses.replace(c, previous_stage_file=str(target / f"{c.case_id}{file_ending}")) for c in cases]

    def predict(self, cases: list, device, log=print) -> int:
        """Segments the raw images of the cases (from :meth:`with_segmentations`) that have no current
        segmentation, as ``nnUNetv2_predict -c <previous stage>`` would; returns how many were predicted.

        A segmentation older than one of its case's image files is predicted again.
        """
        todo = []
        for case in cases:
            output = Path(case.previous_stage_file)
            if output.is_file() and output.stat().st_mtime_ns < max(os.stat(f).st_mtime_ns for f in case.image_files):
                output.unlink()
            if not output.is_file():
                todo.append(case)
        if not todo:
            return 0
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        device = torch.device(device)
        predictor = nnUNetPredictor(use_mirroring=True, perform_everything_on_device=device.type == "cuda",
                                    device=device, verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(self.model_folder), use_folds=(self.fold,),
                                                       checkpoint_name=self.checkpoint)
        Path(todo[0].previous_stage_file).parent.mkdir(parents=True, exist_ok=True)
        ending = predictor.dataset_json["file_ending"]
        predictor.predict_from_files_sequential([list(c.image_files) for c in todo],
                                                [c.previous_stage_file[: -len(ending)] for c in todo],
                                                save_probabilities=False, overwrite=True)
        log(f"RN-DPO: {self.configuration} segmented {len(todo)} case(s) for the cascade "
            f"({self.checkpoint_file}) into {Path(todo[0].previous_stage_file).parent}")
        return len(todo)


def previous_stage_of(configuration_manager, configuration: str, dataset_name: str, trainer: str, plans: str,
                      fold: int | str) -> PreviousStage | None:
    """The previous stage of a cascade configuration (``trainer``'s model of it), or None for other configurations."""
    previous = configuration_manager.previous_stage_name
    if previous is None:
        return None
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    return PreviousStage(Path(get_output_folder(dataset_name, trainer, plans, previous)), fold, previous, configuration,
                         trainer)


def require_cascade_sources(sources, configuration: str) -> None:
    """Raises ValueError for proposal sources a cascade cannot use: ``intensity`` would rescale the one-hot
    previous-stage input channels along with the image."""
    if "intensity" in sources:
        raise ValueError(
            f"proposal source 'intensity' is not supported for the cascade configuration {configuration}: its network "
            "input holds the previous stage's one-hot segmentation, which an intensity change would alter too. "
            "Remove 'intensity' from proposal_sources.")


def network_input(image: np.ndarray, previous_segmentation: np.ndarray | None,
                  cascade_labels: list[int] | None) -> np.ndarray:
    """What the network takes: the image ``(C, *spatial)``, followed for a cascade (``cascade_labels`` = the
    dataset's foreground labels) by the one-hot previous-stage segmentation ``(*spatial)``, one channel per label.

    Returns:
        float32 ``(C [+ len(cascade_labels)], *spatial)``.

    Raises:
        ValueError: a cascade without the case's previous-stage segmentation.
    """
    image = np.asarray(image, np.float32)
    if cascade_labels is None:
        return image
    if previous_segmentation is None:
        raise ValueError("a cascade network needs the previous stage's segmentation of the case, but it has none")
    from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot

    onehot = convert_labelmap_to_one_hot(np.asarray(previous_segmentation), list(cascade_labels), np.float32)
    return np.concatenate([image, onehot])


def pool_input(pool, case_id: str, cascade_labels: list[int] | None) -> np.ndarray:
    """:func:`network_input` of a pool case (``pool.previous_stage`` is read only for a cascade)."""
    previous = pool.previous_stage(case_id) if cascade_labels is not None else None
    return network_input(pool.image(case_id), previous, cascade_labels)
