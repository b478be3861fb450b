"""The unlabeled pool: finding it, validating it, and preprocessing it with nnU-Net's own preprocessor.

nnU-Net has no place for unlabeled cases, so the pool lives in ``$nnUNet_raw/DatasetXXX/imagesUnlabeled/``
with nnU-Net's file naming (``CASE_0000.ext``, one file per channel). Optional hidden ground truth in
``labelsUnlabeled/`` is used only by the oracle judge and by reliability reports, never by training.
Preprocessed cases are cached outside nnU-Net's preprocessed folder, in
``$nnUNet_preprocessed/DatasetXXX/rndpo/<plans>_<configuration>/pool/``, shared by every fold and base model
(each file is written atomically under a name unique to the writer, so folds may preprocess it at once).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunetv2_rndpo.atomic_files import atomic_save, atomic_write_text

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class PoolCase:
    """One raw case: its id, one image file per channel, its hidden label file if any, and for a cascade the
    previous stage's segmentation of it (:mod:`nnunetv2_rndpo.cascade`)."""

    case_id: str
    image_files: tuple[str, ...]
    label_file: str | None = None
    previous_stage_file: str | None = None


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


def _source_stamp(case: PoolCase) -> dict:
    """Size and modification time (ns) of every raw file of a case: a changed file changes the stamp."""
    files = [*case.image_files, *(f for f in (case.label_file, case.previous_stage_file) if f)]
    return {f: [os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files}


class BadCaseError(ValueError):
    """A pool case that cannot be read or does not match the dataset (see ``on_bad_case``)."""


def _is_2d(spacing) -> bool:
    # nnU-Net's readers give 2D images a dummy first spacing of 999 (x the largest in-plane spacing)
    return max(spacing) >= 999 * min(spacing)


def _nifti_voxels(path: str) -> np.ndarray | None:
    """The voxels of a NIfTI file exactly as stored, or None if nibabel cannot parse its header.

    Raises:
        BadCaseError: the file is truncated or its gzip stream is corrupt (gzip checks CRC and length).
    """
    import nibabel

    try:
        image = nibabel.load(path)  # the header only
    except Exception:  # noqa: BLE001 (not a NIfTI nibabel understands: nnU-Net's reader decides)
        return None
    try:
        return np.asanyarray(image.dataobj)
    except (EOFError, OSError, zlib.error, ValueError) as error:  # gzip.BadGzipFile is an OSError
        raise BadCaseError(f"{path} is truncated or corrupt ({type(error).__name__}: {' '.join(str(error).split())}); "
                           "copy it again from its source") from None


def _check_gzip_stream(path: str) -> None:
    """Decompresses a ``.gz`` file in full, which checks gzip's CRC and length."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except (EOFError, OSError, zlib.error) as error:
        raise BadCaseError(f"{path} is truncated or corrupt ({type(error).__name__}: {error}); copy it again "
                           "from its source") from None


def check_finite(voxels: np.ndarray, where: str) -> None:
    """Raises :class:`BadCaseError` naming ``where`` if floating-point ``voxels`` hold NaN or ±inf."""
    if not np.issubdtype(voxels.dtype, np.floating):
        return
    finite = np.isfinite(voxels)
    if finite.all():
        return
    nan = int(np.isnan(voxels).sum())
    raise BadCaseError(
        f"{where} has {nan} NaN and {voxels.size - int(finite.sum()) - nan} infinite voxel(s) of {voxels.size}; "
        "nnU-Net's reader would read NaN as 0 and train on it. Replace them (e.g. with the background "
        "intensity) and save the file again")


def check_raw_file(path: str) -> None:
    """Checks one raw image or label file beyond what nnU-Net's reader checks.

    nnU-Net's default reader (SimpleITK) reads a ``.nii.gz`` cut off by a failed copy without an error,
    filling the missing part with zeros, and reads NaN voxels of a NIfTI as 0. So a NIfTI's voxels are read
    once more as stored (nibabel; that decompresses a ``.nii.gz`` in full) and must be complete and finite,
    and any other ``.gz`` file is decompressed in full. Assumption: other formats are checked by their
    reader (PNG, TIFF) or keep NaN (then :func:`check_finite` on the read data finds it).

    Raises:
        BadCaseError: the file is truncated, its compressed stream is corrupt, or it holds NaN/inf voxels.
    """
    voxels = _nifti_voxels(path) if path.endswith((".nii", ".nii.gz")) else None
    if voxels is not None:
        check_finite(voxels, path)
    elif path.endswith(".gz"):
        _check_gzip_stream(path)


def check_case_files(case: PoolCase) -> None:
    """:func:`check_raw_file` for every image file of a case and its hidden label; messages name the case."""
    for path in (*case.image_files, *([case.label_file] if case.label_file else [])):
        try:
            check_raw_file(path)
        except BadCaseError as error:
            raise BadCaseError(f"pool case {case.case_id!r}: {error}") from None


def check_case_matches_dataset(case: PoolCase, data: np.ndarray, spacing, num_channels: int,
                               dataset_is_2d: bool) -> None:
    """Checks a case as nnU-Net's reader returned it (``data``: ``(C, X, Y, Z)``) against the dataset.

    Raises:
        BadCaseError: another number of channels (e.g. an RGB PNG in a grayscale dataset, a 4D file) or a
            2D image in a 3D dataset (or the reverse).
    """
    if data.shape[0] != num_channels:
        raise BadCaseError(
            f"pool case {case.case_id!r} ({', '.join(case.image_files)}) has {data.shape[0]} channel(s) but "
            f"dataset.json declares {num_channels}: save it as the training images are saved (e.g. grayscale, "
            "one channel per CASE_XXXX file)")
    if _is_2d(spacing) != dataset_is_2d:
        raise BadCaseError(
            f"pool case {case.case_id!r} ({', '.join(case.image_files)}) is a {'2D' if _is_2d(spacing) else '3D'} "
            f"image (shape {tuple(data.shape[1:])}) but the dataset is {'2D' if dataset_is_2d else '3D'}: "
            "save it with the dimensionality of imagesTr")


class PreprocessedPool:
    """Preprocessed unlabeled cases in a cache folder, read one case at a time.

    Layout: ``<folder>/<case>_image.npy`` (float32, ``(C, *spatial)`` in nnU-Net's preprocessed space),
    ``<folder>/<case>_label.npy`` (int16 hidden label, only if ``labelsUnlabeled`` has the case),
    ``<folder>/<case>_previous_stage.npy`` (int16 previous-stage segmentation, cascades only) and
    ``<folder>/<case>.json`` (sizes and modification times of the raw files; a change re-preprocesses).
    """

    def __init__(self, folder: str | os.PathLike, cases: list[PoolCase]):
        self.folder = Path(folder)
        self.cases = list(cases)
        self.case_ids = [c.case_id for c in cases]

    def preprocess(self, plans_manager, configuration_manager, dataset_json: dict, progress: bool = True,
                   on_bad_case: str = "stop") -> dict[str, str]:
        """Runs nnU-Net's preprocessor on every case that is not cached yet (or whose raw files changed).

        A case that fails to read, is truncated (:func:`check_case_files`), holds NaN or infinite voxels
        (:func:`check_finite`) or does not match the dataset (:func:`check_case_matches_dataset`) stops
        the run (``on_bad_case="stop"``) or is recorded in ``<case>.bad.json`` and left out of the pool
        (``"skip"``); a later run retries it, so a repaired file rejoins the pool.

        Returns:
            ``{case_id: reason}`` of the cases skipped in this call.

        Raises:
            BadCaseError: a bad case with ``on_bad_case="stop"``; the message names the file and the fix.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        preprocessor = configuration_manager.preprocessor_class(verbose=False)
        reader = plans_manager.image_reader_writer_class()
        num_channels = len(dataset_json["channel_names"])
        dataset_is_2d = _is_2d(plans_manager.plans["original_median_spacing_after_transp"])
        todo = [c for c in self.cases if not self._is_cached(c)]
        skipped = {}
        for case in tqdm(todo, desc="preprocessing unlabeled pool", disable=not progress or not todo):
            try:
                check_case_files(case)
                data, properties = reader.read_images(list(case.image_files))
                check_finite(data, f"pool case {case.case_id!r} ({', '.join(case.image_files)})")
                check_case_matches_dataset(case, data, properties["spacing"], num_channels, dataset_is_2d)
                # the hidden label and the previous stage's segmentation are cropped and resampled as nnU-Net's
                # labels are: as channels of one segmentation
                segs = [reader.read_seg(f)[0] for f in (case.label_file, case.previous_stage_file) if f is not None]
                data, seg, _ = preprocessor.run_case_npy(data, np.concatenate(segs) if segs else None, properties,
                                                         plans_manager, configuration_manager, dataset_json)
            except Exception as error:  # noqa: BLE001 (any reader failure on user data is a bad case)
                reason = error if isinstance(error, BadCaseError) else BadCaseError(
                    f"pool case {case.case_id!r} could not be read ({', '.join(case.image_files)}): "
                    f"{type(error).__name__}: {error}")
                if on_bad_case != "skip":
                    raise BadCaseError(
                        f"{reason}. Fix or remove the file, or set \"on_bad_case\": \"skip\" in the file named by "
                        "$nnUNet_rndpo_config (commands: --on-bad-case skip) to leave such cases out.") from error
                skipped[case.case_id] = str(reason)
                atomic_write_text(self._bad_marker(case.case_id),
                                  json.dumps({"stamp": _source_stamp(case), "reason": str(reason)}))
                continue
            atomic_save(self.folder / f"{case.case_id}_image.npy", data.astype(np.float32, copy=False))
            if case.label_file is not None:
                # nnU-Net marks voxels outside the nonzero crop as -1; they are background for scoring
                atomic_save(self.folder / f"{case.case_id}_label.npy", np.maximum(seg[0], 0).astype(np.int16))
            if case.previous_stage_file is not None:
                atomic_save(self.folder / f"{case.case_id}_previous_stage.npy", np.maximum(seg[-1], 0).astype(np.int16))
            atomic_write_text(self.folder / f"{case.case_id}.json", json.dumps(_source_stamp(case)))
            self._bad_marker(case.case_id).unlink(missing_ok=True)
        return skipped

    def _bad_marker(self, case_id: str) -> Path:
        return self.folder / f"{case_id}.bad.json"

    def drop_bad_cases(self) -> dict[str, str]:
        """Leaves out the cases recorded as bad (by any part of a split run) whose files are unchanged since.

        Returns:
            ``{case_id: reason}`` of the cases left out.
        """
        bad = {}
        for case in self.cases:
            marker = self._bad_marker(case.case_id)
            if marker.is_file() and not self._is_cached(case):
                recorded = json.loads(marker.read_text())
                if recorded["stamp"] == _source_stamp(case):
                    bad[case.case_id] = recorded["reason"]
        self.cases = [c for c in self.cases if c.case_id not in bad]
        self.case_ids = [c.case_id for c in self.cases]
        return bad

    def source_digest(self, case_id: str) -> str:
        """Digest of the raw files a cached case was preprocessed from (their sizes and modification times);
        ``"not preprocessed"`` for a case not cached yet (e.g. another part's), which matches no digest."""
        stamp = self.folder / f"{case_id}.json"
        return hashlib.sha256(stamp.read_bytes()).hexdigest()[:16] if stamp.is_file() else "not preprocessed"

    def _is_cached(self, case: PoolCase) -> bool:
        stamp = self.folder / f"{case.case_id}.json"
        if not stamp.is_file() or not (self.folder / f"{case.case_id}_image.npy").is_file():
            return False
        if case.label_file is not None and not (self.folder / f"{case.case_id}_label.npy").is_file():
            return False
        if case.previous_stage_file is not None and not (self.folder / f"{case.case_id}_previous_stage.npy").is_file():
            return False
        return json.loads(stamp.read_text()) == _source_stamp(case)

    def image(self, case_id: str) -> np.ndarray:
        """``(C, *spatial)`` float32, memory-mapped."""
        return np.load(self.folder / f"{case_id}_image.npy", mmap_mode="r")

    def label(self, case_id: str) -> np.ndarray | None:
        """``(*spatial)`` hidden label in preprocessed space, or None."""
        path = self.folder / f"{case_id}_label.npy"
        return np.load(path) if path.is_file() else None

    def previous_stage(self, case_id: str) -> np.ndarray | None:
        """``(*spatial)`` previous-stage segmentation in preprocessed space (cascades only), or None."""
        path = self.folder / f"{case_id}_previous_stage.npy"
        return np.load(path) if path.is_file() else None

    @property
    def has_labels(self) -> bool:
        return all(c.label_file is not None for c in self.cases)


class LabeledCases(Mapping):
    """Preprocessed labeled cases ``{id: (image (C, *sp) float32, label (*sp) int16)}``, loaded on first use."""

    def __init__(self, dataset, identifiers: list[str]):
        self._dataset, self._ids, self._loaded, self._previous = dataset, list(identifiers), {}, {}

    def __getitem__(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        if key not in self._loaded:
            data, seg, previous, _ = self._dataset.load_case(key)
            self._loaded[key] = (np.asarray(data[:], np.float32), np.maximum(np.asarray(seg[:])[0], 0).astype(np.int16))
            if previous is not None:  # cascades: the previous stage's segmentation (nnU-Net's dataset class reads it)
                previous = np.asarray(previous[:])
                # predicted_next_stage holds (*spatial) label maps; a (1, *spatial) one is accepted too
                previous = previous[0] if previous.ndim == self._loaded[key][0].ndim else previous
                self._previous[key] = np.maximum(previous, 0).astype(np.int16)
        return self._loaded[key]

    def previous_stage(self, key: str) -> np.ndarray | None:
        """``(*spatial)`` previous-stage segmentation of a case (cascades only), or None."""
        self[key]
        return self._previous.get(key)

    def __iter__(self):
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def labeled_cases(base, fold: int | str) -> tuple[LabeledCases, list[str], list[str]]:
    """The preprocessed labeled cases (lazily loaded) and the fold's train/val ids.

    The split is nnU-Net's ``splits_final.json`` (fold ``all``: train = val = every case); without that file
    every case trains and none validates.
    """
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = Path(nnUNet_preprocessed) / base.dataset_name / base.configuration_manager.data_identifier
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: run nnUNetv2_plan_and_preprocess -d ... -c "
                                f"{base.configuration_name} first")
    previous = None if base.previous_stage is None else str(base.previous_stage.labeled_segmentations)
    dataset = infer_dataset_class(str(folder))(str(folder), folder_with_segs_from_previous_stage=previous)
    cases = LabeledCases(dataset, sorted(dataset.identifiers))
    splits_file = folder.parent / "splits_final.json"
    if str(fold) == "all" or not splits_file.is_file():
        return cases, sorted(cases), [] if str(fold) != "all" else sorted(cases)
    splits = json.loads(splits_file.read_text())
    split = splits[int(fold)] if int(fold) < len(splits) else {"train": sorted(cases), "val": []}
    return cases, sorted(split["train"]), sorted(split["val"])


class LabeledPool:
    """Labeled cases behind the interface of :class:`~nnunetv2_rndpo.pool.PreprocessedPool`."""

    has_labels = True

    def __init__(self, cases, case_ids: list[str]):
        self._cases, self.case_ids = cases, list(case_ids)

    def image(self, case_id: str) -> np.ndarray:
        return self._cases[case_id][0]

    def label(self, case_id: str) -> np.ndarray:
        return self._cases[case_id][1]

    def previous_stage(self, case_id: str) -> np.ndarray | None:
        return self._cases.previous_stage(case_id)

    def source_digest(self, case_id: str) -> None:
        """Labeled cases come from nnU-Net's preprocessed folder, which nnU-Net keeps current."""
        return None
