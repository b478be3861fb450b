"""The unlabeled pool: finding it, validating it, and preprocessing it with nnU-Net's own preprocessor.

nnU-Net has no place for unlabeled cases, so the pool lives in ``$nnUNet_raw/DatasetXXX/imagesUnlabeled/``
with nnU-Net's file naming (``CASE_0000.ext``, one file per channel). Optional hidden ground truth in
``labelsUnlabeled/`` is used only by the oracle judge and by reliability reports, never by training.
Preprocessed cases are cached outside nnU-Net's preprocessed folder, in
``$nnUNet_preprocessed/DatasetXXX/rndpo/<plans>_<configuration>/``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class PoolCase:
    """One raw case: its id, one image file per channel, and its hidden label file if any."""

    case_id: str
    image_files: tuple[str, ...]
    label_file: str | None = None


def find_cases(
    image_folder: str | os.PathLike,
    file_ending: str,
    num_channels: int,
    label_folder: str | os.PathLike | None = None,
    what: str = "unlabeled pool",
    fix: str = "set unlabeled_dir in the file named by $nnUNet_rndpo_config",
) -> list[PoolCase]:
    """Lists the cases of a folder in nnU-Net naming and checks them against ``dataset.json``.

    Args:
        image_folder: folder with ``CASE_XXXX<file_ending>`` files.
        file_ending: the dataset's ``file_ending`` (e.g. ``.nii.gz``).
        num_channels: number of input channels in ``dataset.json`` (``channel_names``).
        label_folder: optional folder with ``CASE<file_ending>`` labels; absent cases get None.
        what: name of the folder's role, for error messages.
        fix: how to point at another folder, for error messages.

    Returns:
        The cases, sorted by id.

    Raises:
        FileNotFoundError: the folder is missing or holds no image with the dataset's file ending.
        ValueError: files with another ending, names not in nnU-Net's ``CASE_XXXX`` scheme, or cases whose
            channels do not match ``dataset.json``.
    """
    folder = Path(image_folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"The {what} {folder} does not exist. Put images there named CASE_0000{file_ending} "
            f"(one file per channel, as in imagesTr), or {fix}."
        )
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    wrong_ending = [f for f in files if not f.endswith(file_ending)]
    if wrong_ending:
        raise ValueError(
            f"The {what} {folder} holds files that do not end in the dataset's file_ending "
            f"{file_ending!r}: {wrong_ending[:5]}{' ...' if len(wrong_ending) > 5 else ''}. Convert them to "
            f"{file_ending} or remove them."
        )
    if not files:
        raise FileNotFoundError(
            f"The {what} {folder} is empty: it needs images named CASE_0000{file_ending}, or {fix}."
        )
    channels: dict[str, dict[int, str]] = {}
    for name in files:
        match = _CHANNEL_FILE.match(name[: -len(file_ending)])
        if match is None:
            raise ValueError(
                f"{folder / name} is not in nnU-Net's naming CASE_XXXX{file_ending} (XXXX = 4-digit channel "
                "index, e.g. case01_0000). Rename it."
            )
        channels.setdefault(match["case"], {})[int(match["channel"])] = str(folder / name)
    cases = []
    for case_id, by_channel in sorted(channels.items()):
        if sorted(by_channel) != list(range(num_channels)):
            raise ValueError(
                f"Case {case_id!r} in the {what} {folder} has channels {sorted(by_channel)} but dataset.json "
                f"declares {num_channels} channel(s) (expected _0000 ... _{num_channels - 1:04d}). Each case "
                "needs exactly the dataset's channels."
            )
        label = None
        if label_folder is not None:
            candidate = Path(label_folder) / f"{case_id}{file_ending}"
            label = str(candidate) if candidate.is_file() else None
        cases.append(PoolCase(case_id, tuple(by_channel[c] for c in range(num_channels)), label))
    return cases


def atomic_save(path: Path, array: np.ndarray) -> None:
    """Saves ``array`` as .npy so that an interrupted write never leaves a readable, truncated file."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as f:
        np.save(f, array)
    os.replace(temporary, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Writes a text file through a temporary file and a rename."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _source_stamp(case: PoolCase) -> dict:
    files = [*case.image_files, *([case.label_file] if case.label_file else [])]
    return {f: [os.path.getsize(f), int(os.path.getmtime(f))] for f in files}


class PreprocessedPool:
    """Preprocessed unlabeled cases in a cache folder, read one case at a time.

    Layout: ``<folder>/<case>_image.npy`` (float32, ``(C, *spatial)`` in nnU-Net's preprocessed space),
    ``<folder>/<case>_label.npy`` (int16 hidden label, only if ``labelsUnlabeled`` has the case) and
    ``<folder>/<case>.json`` (sizes and modification times of the raw files; a change re-preprocesses).
    """

    def __init__(self, folder: str | os.PathLike, cases: list[PoolCase]):
        self.folder = Path(folder)
        self.cases = list(cases)
        self.case_ids = [c.case_id for c in cases]

    def preprocess(self, plans_manager, configuration_manager, dataset_json: dict, progress: bool = True) -> None:
        """Runs nnU-Net's preprocessor on every case that is not cached yet (or whose raw files changed)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        preprocessor = configuration_manager.preprocessor_class(verbose=False)
        todo = [c for c in self.cases if not self._is_cached(c)]
        for case in tqdm(todo, desc="preprocessing unlabeled pool", disable=not progress or not todo):
            data, seg, _ = preprocessor.run_case(
                list(case.image_files), case.label_file, plans_manager, configuration_manager, dataset_json
            )
            atomic_save(self.folder / f"{case.case_id}_image.npy", data.astype(np.float32, copy=False))
            if case.label_file is not None:
                # nnU-Net marks voxels outside the nonzero crop as -1; they are background for scoring
                atomic_save(self.folder / f"{case.case_id}_label.npy", np.maximum(seg[0], 0).astype(np.int16))
            atomic_write_text(self.folder / f"{case.case_id}.json", json.dumps(_source_stamp(case)))

    def _is_cached(self, case: PoolCase) -> bool:
        stamp = self.folder / f"{case.case_id}.json"
        if not stamp.is_file() or not (self.folder / f"{case.case_id}_image.npy").is_file():
            return False
        if case.label_file is not None and not (self.folder / f"{case.case_id}_label.npy").is_file():
            return False
        return json.loads(stamp.read_text()) == _source_stamp(case)

    def image(self, case_id: str) -> np.ndarray:
        """``(C, *spatial)`` float32, memory-mapped."""
        return np.load(self.folder / f"{case_id}_image.npy", mmap_mode="r")

    def label(self, case_id: str) -> np.ndarray | None:
        """``(*spatial)`` hidden label in preprocessed space, or None."""
        path = self.folder / f"{case_id}_label.npy"
        return np.load(path) if path.is_file() else None

    @property
    def has_labels(self) -> bool:
        return all(c.label_file is not None for c in self.cases)
