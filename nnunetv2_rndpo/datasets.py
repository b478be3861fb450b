"""Label-budget study datasets: import real data (or generate synthetic data) as an nnU-Net raw dataset.

    nnUNetv2_rndpo_make_dataset -i SRC -d ID -n NAME --labeled N --test M [--seed S] [...]
    nnUNetv2_rndpo_make_dataset --synthetic 2d -d ID --labeled N --test M [--unlabeled K]

writes ``$nnUNet_raw/DatasetID_NAME/`` with the splits of the label-scarce setting:

- ``imagesTr/labelsTr``: the N labeled cases (what nnU-Net trains the base model on);
- ``imagesUnlabeled/`` (the pool the preference phase learns from) and ``labelsUnlabeled/`` (its hidden
  ground truth, read only by the oracle judge and by reports);
- ``imagesTs/labelsTs``: the M held-out test cases;
- with ``--validation V``, ``imagesVal/labelsVal``: V cases held out of the pool and of the test set, with labels,
  on which hyperparameters are chosen (the fine-tuning runs' validation curve, ``eval/val_dice``);
- ``dataset.json`` (nnU-Net's) and ``rndpo_splits.json`` (the manifest: seed, source, group of every case,
  the cases of every split, and the label mapping).

Sources: the Medical Segmentation Decathlon layout (``imagesTr/``, ``labelsTr/``, NIfTI, one channel) and
a 2D PNG image folder with a mask folder. Splits are by *group* (e.g. the exam id): cases of one group
never straddle splits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

SPLIT_FOLDERS = {"labeled": "Tr", "unlabeled": "Unlabeled", "test": "Ts", "validation": "Val"}
OPTIONAL_SPLITS = ("validation",)  # their folders exist only in a dataset that has such cases
MANIFEST = "rndpo_splits.json"
MASK_FOLDERS = ("masks_filled", "masks", "labels", "labelsTr")
MASK_SUFFIXES = ("", "_mask", "_Annotation", "_seg", "_label")
SAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class SourceCase:
    """One case of a source dataset: its nnU-Net case id, its group, and its image and mask files."""

    case_id: str
    group: str
    image: Path
    label: Path


# --------------------------------------------------------------------------------------- groups and splits


def group_function(group_regex: str | None = None, group_chars: int | None = None) -> Callable[[str], str]:
    """How a case name maps to its group (cases of one group never straddle splits).

    Args:
        group_regex: the group is the regex's first capture group (or whole match) searched in the name,
            e.g. ``^(\\d{3})`` for HC18's exam id ``032`` in ``032_2HC``.
        group_chars: the group is the first N characters of the name.

    Returns:
        ``name -> group``; every case is its own group when neither is given.

    Raises:
        ValueError: both given, a bad regex, or N < 1.
    """
    if group_regex is not None and group_chars is not None:
        raise ValueError("give either --group-regex or --group-chars, not both")
    if group_chars is not None:
        if group_chars < 1:
            raise ValueError(f"--group-chars must be >= 1, got {group_chars}")
        return lambda name: name[:group_chars]
    if group_regex is None:
        return lambda name: name
    try:
        pattern = re.compile(group_regex)
    except re.error as error:
        raise ValueError(f"--group-regex {group_regex!r} is not a valid regular expression: {error}") from error

    def group(name: str) -> str:
        match = pattern.search(name)
        if match is None:
            raise ValueError(f"--group-regex {group_regex!r} does not match the case name {name!r}; "
                             "fix the regex so that it matches every file name (or use --group-chars N)")
        return match.group(1) if pattern.groups else match.group(0)

    return group


def split_by_group(
    case_groups: dict[str, str], num_labeled: int, num_test: int, seed: int, num_unlabeled: int | None = None,
    test_seed: int | None = None, num_validation: int = 0,
) -> dict[str, list[str]]:
    """Seeded, group-aware split into ``labeled``, ``validation``, ``unlabeled``, ``test`` and ``unused`` cases.

    The groups are shuffled with ``test_seed`` (default ``seed``) and test takes whole groups while they
    still fit its count; the remaining groups are shuffled with ``seed`` and labeled, then validation, then
    unlabeled take groups the same way; the rest is ``unused``. A fixed ``test_seed`` keeps one test set for
    every ``seed``; ``num_validation = 0`` gives the splits of a dataset made before validation existed.

    Assumption: a split may end up with fewer cases than asked when groups are larger than one case and
    no remaining group fits exactly; the manifest records the real counts (the paper fixes no rule).

    Args:
        case_groups: ``{case_id: group}``.
        num_labeled: N, cases with labels for the base model (>= 1).
        num_test: M, held-out test cases (>= 0).
        seed: seed of the shuffle.
        num_unlabeled: K, the pool size; None = every remaining case.
        test_seed: seed of the test split; None = ``seed``.
        num_validation: V, labeled cases held out of the pool for choosing hyperparameters (>= 0).

    Returns:
        ``{"labeled": [...], "unlabeled": [...], "test": [...], "unused": [...]}`` and, when V > 0,
        ``"validation"``; each sorted.

    Raises:
        ValueError: counts out of range, or no labeled or unlabeled case left.
    """
    total = len(case_groups)
    if num_labeled < 1 or num_test < 0 or num_validation < 0 or (num_unlabeled is not None and num_unlabeled < 1):
        raise ValueError(f"need --labeled >= 1, --test >= 0, --validation >= 0 and --unlabeled >= 1, got "
                         f"{num_labeled}, {num_test}, {num_validation}, {num_unlabeled}")
    if num_labeled + num_test + num_validation >= total:
        raise ValueError(f"--labeled {num_labeled} + --test {num_test} + --validation {num_validation} leaves no "
                         f"unlabeled case out of {total}; lower one of them")
    members: dict[str, list[str]] = {}
    for case_id, group in sorted(case_groups.items()):
        members.setdefault(group, []).append(case_id)
    targets = {"test": num_test, "labeled": num_labeled, **({"validation": num_validation} if num_validation else {}),
               "unlabeled": total if num_unlabeled is None else num_unlabeled}
    splits: dict[str, list[str]] = {name: [] for name in (*targets, "unused")}
    order = sorted(members)
    for name, target in targets.items():
        if name in ("test", "labeled"):  # test draws with test_seed, labeled reshuffles the rest with seed
            shuffle_seed = seed if name == "labeled" or test_seed is None else test_seed
            order = [order[i] for i in np.random.default_rng(shuffle_seed).permutation(len(order))]
        for group in list(order):
            if len(splits[name]) + len(members[group]) <= target:
                splits[name] += members[group]
                order.remove(group)
    splits["unused"] = [c for g in order for c in members[g]]
    for name in ("labeled", "unlabeled"):
        if not splits[name]:
            raise ValueError(f"no {name} case left after the group-aware split (groups too large for the counts); "
                             "lower --test/--labeled or use a finer grouping")
    return {name: sorted(cases) for name, cases in splits.items()}


# --------------------------------------------------------------------------------------- writing


class RawDatasetWriter:
    """Writes one nnU-Net raw dataset folder split by split; refuses to replace an existing one.

    Args:
        raw_root: ``$nnUNet_raw``.
        dataset_id: nnU-Net dataset id (1 … 999).
        name: dataset name; the folder is ``Dataset{id:03d}_{name}``.
        file_ending: ``.png`` or ``.nii.gz``.
        overwrite: replace an existing dataset with this id.

    Raises:
        ValueError: bad id or name.
        FileExistsError: a dataset with this id exists and ``overwrite`` is False.
    """

    def __init__(self, raw_root: str | os.PathLike, dataset_id: int, name: str, file_ending: str,
                 overwrite: bool = False):
        if not 1 <= dataset_id <= 999:
            raise ValueError(f"-d must be a dataset id in 1 … 999, got {dataset_id}")
        if not name or SAFE_NAME.search(name):
            raise ValueError(f"-n must be a name of letters, digits, '_' or '-', got {name!r}")
        root = Path(raw_root)
        existing = sorted(root.glob(f"Dataset{dataset_id:03d}_*")) if root.is_dir() else []
        if existing and not overwrite:
            raise FileExistsError(f"{existing[0]} already exists (dataset id {dataset_id}); pass --overwrite to "
                                  "replace it, or choose another -d")
        for folder in existing:
            shutil.rmtree(folder)
        self.folder = root / f"Dataset{dataset_id:03d}_{name}"
        self.file_ending = file_ending
        for split, folder in SPLIT_FOLDERS.items():
            if split not in OPTIONAL_SPLITS:
                (self.folder / f"images{folder}").mkdir(parents=True)
                (self.folder / f"labels{folder}").mkdir(parents=True)

    def paths(self, split: str, case_id: str, channel: int = 0) -> tuple[Path, Path]:
        """``(image file of channel, label file)`` of a case in ``split`` (``labeled``, ``unlabeled``, ``test`` or
        ``validation``; an optional split's folders are made when its first case is written)."""
        folder = SPLIT_FOLDERS[split]
        if split in OPTIONAL_SPLITS:
            (self.folder / f"images{folder}").mkdir(exist_ok=True)
            (self.folder / f"labels{folder}").mkdir(exist_ok=True)
        return (self.folder / f"images{folder}" / f"{case_id}_{channel:04d}{self.file_ending}",
                self.folder / f"labels{folder}" / f"{case_id}{self.file_ending}")

    def write_arrays(self, split: str, case_id: str, image: np.ndarray | list[np.ndarray], label: np.ndarray,
                     spacing: tuple[float, ...] | None = None) -> None:
        """Writes an image (uint8 for PNG), or a list of one image per channel, and its integer label map."""
        for channel, channel_image in enumerate(image if isinstance(image, list) else [image]):
            write_image(self.paths(split, case_id, channel)[0], channel_image, spacing)
        write_image(self.paths(split, case_id)[1], label.astype(np.uint8), spacing)

    def finish(self, labels: dict[str, int], channel_names: dict[str, str], manifest: dict) -> Path:
        """Writes ``dataset.json`` and the manifest; returns the dataset folder."""
        dataset_json = {"channel_names": channel_names, "labels": labels,
                        "numTraining": len(manifest["splits"]["labeled"]), "file_ending": self.file_ending,
                        "name": self.folder.name.split("_", 1)[1]}
        (self.folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
        (self.folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
        return self.folder


def write_image(path: Path, array: np.ndarray, spacing: tuple[float, ...] | None = None) -> None:
    """Writes a 2D array as PNG (must be uint8) or any array as NIfTI, by the file's ending."""
    if path.name.endswith(".png"):
        from PIL import Image

        Image.fromarray(array).save(path)
        return
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    if spacing is not None:
        image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    sitk.WriteImage(image, str(path))


def read_manifest(dataset_folder: str | os.PathLike) -> dict:
    """The ``rndpo_splits.json`` of a dataset made by this module."""
    path = Path(dataset_folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the dataset was not made by nnUNetv2_rndpo_make_dataset")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------------------- sources


def _case_name(stem: str) -> str:
    return SAFE_NAME.sub("_", stem)


def default_dataset_name(source: str | os.PathLike) -> str:
    """The dataset name ``nnUNetv2_rndpo_make_dataset`` gives a source folder without ``-n``: the folder's name."""
    return _case_name(Path(source).resolve().name)


def find_msd_cases(source: Path, group: Callable[[str], str]) -> list[SourceCase]:
    """Cases of a Medical Segmentation Decathlon folder: ``imagesTr/NAME.nii.gz`` + ``labelsTr/NAME.nii.gz``.

    Hidden files (``._NAME``, macOS metadata in the MSD archives) are skipped; names that already carry
    nnU-Net's channel suffix ``_0000`` are accepted.

    Raises:
        FileNotFoundError: no image, or an image without its label.
    """
    images = sorted(p for p in (source / "imagesTr").iterdir()
                    if not p.name.startswith(".") and p.name.endswith((".nii.gz", ".nii")))
    if not images:
        raise FileNotFoundError(f"no .nii.gz image in {source / 'imagesTr'}")
    cases = []
    for image in images:
        ending = ".nii.gz" if image.name.endswith(".nii.gz") else ".nii"
        stem = image.name.removesuffix(ending).removesuffix("_0000")
        label = source / "labelsTr" / f"{stem}{ending}"
        if not label.is_file():
            raise FileNotFoundError(f"image {image} has no label {label}; every imagesTr file needs one in labelsTr")
        cases.append(SourceCase(_case_name(stem), group(stem), image, label))
    return cases


def _msd_labels(source: Path, cases: list[SourceCase]) -> dict[str, int]:
    """Labels from the source's ``dataset.json`` (MSD: ``{"0": "background", ...}``) or from the label values."""
    import SimpleITK as sitk

    declared = source / "dataset.json"
    if declared.is_file():
        labels = json.loads(declared.read_text()).get("labels", {})
        if labels and all(k.isdigit() for k in labels):
            ordered = sorted(labels.items(), key=lambda x: int(x[0]))
            return {name if int(k) else "background": int(k) for k, name in ordered}
        if labels:
            return {name: int(v) for name, v in labels.items()}
    values = set()
    for case in cases:
        values |= {int(v) for v in np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(case.label))))}
    if 0 not in values or values != set(range(max(values) + 1)):
        raise ValueError(f"label values of {source / 'labelsTr'} are {sorted(values)}; nnU-Net needs 0 … K without "
                         "gaps: add a dataset.json with 'labels' to the source or remap the labels")
    return {"background": 0, **{f"label_{v}": v for v in sorted(values) if v}}


def _msd_channel_names(source: Path, image: Path) -> dict[str, str]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image))
    reader.ReadImageInformation()
    if reader.GetDimension() != 3:
        raise ValueError(f"{image} has {reader.GetDimension()} dimensions; only single-channel 3D MSD images are "
                         "supported. Convert multi-channel (4D) MSD tasks with nnUNetv2_convert_MSD_dataset first "
                         "and pass the converted folder")
    declared = source / "dataset.json"
    modality = json.loads(declared.read_text()).get("modality", {}) if declared.is_file() else {}
    # nnU-Net normalises by channel name: "CT" gets CT normalisation, anything else a per-case z-score
    return {"0": modality.get("0", "image")}


def find_png_cases(source: Path, group: Callable[[str], str], images_dir: str | None = None,
                   masks_dir: str | None = None, mask_suffix: str | None = None) -> list[SourceCase]:
    """Cases of a 2D PNG folder: ``<images_dir>/NAME.png`` + ``<masks_dir>/NAME<mask_suffix>.png``.

    Args:
        source: the dataset folder.
        images_dir: image subfolder; None = ``images/`` if it exists, else ``source`` itself.
        masks_dir: mask subfolder; None = the first of ``masks_filled``, ``masks``, ``labels``, ``labelsTr``.
        mask_suffix: what the mask's name adds to the image's; None = the first of ``""``, ``_mask``,
            ``_Annotation``, ``_seg``, ``_label`` that names an existing mask for the first image.

    Raises:
        FileNotFoundError: missing folders, no image, or an image without a mask.
    """
    default_images = source / "images" if (source / "images").is_dir() else source
    image_folder = source / images_dir if images_dir else default_images
    if masks_dir:
        mask_folder = source / masks_dir
    else:
        found = [source / m for m in MASK_FOLDERS if (source / m).is_dir()]
        if not found:
            raise FileNotFoundError(f"no mask folder in {source} (looked for {', '.join(MASK_FOLDERS)}); "
                                    "pass --masks-dir")
        mask_folder = found[0]
    if not image_folder.is_dir() or not mask_folder.is_dir():
        raise FileNotFoundError(f"image folder {image_folder} or mask folder {mask_folder} does not exist")
    images = sorted(p for p in image_folder.glob("*.png") if not p.name.startswith("."))
    if not images:
        raise FileNotFoundError(f"no .png image in {image_folder}; pass --images-dir")
    if mask_suffix is None:
        candidates = [s for s in MASK_SUFFIXES if (mask_folder / f"{images[0].stem}{s}.png").is_file()]
        if not candidates:
            raise FileNotFoundError(f"no mask for {images[0].name} in {mask_folder} (tried the suffixes "
                                    f"{MASK_SUFFIXES}); pass --mask-suffix")
        mask_suffix = candidates[0]
    cases = []
    for image in images:
        label = mask_folder / f"{image.stem}{mask_suffix}.png"
        if not label.is_file():
            raise FileNotFoundError(f"image {image} has no mask {label}; check --masks-dir and --mask-suffix")
        cases.append(SourceCase(_case_name(image.stem), group(image.stem), image, label))
    return cases


def _read_png(path: Path, size: tuple[int, int] | float | None, nearest: bool) -> np.ndarray:
    """A PNG as a 2D uint8 array, optionally resized to ``size = (H, W)`` or by a scale factor.

    Assumption: colour images are converted to one grayscale channel (PIL's ``L``); the study datasets are
    grayscale (ultrasound, X-ray).
    """
    from PIL import Image

    with Image.open(path) as picture:
        if picture.mode not in ("L", "P", "I", "I;16") or not nearest:
            picture = picture.convert("L")
        if isinstance(size, float):
            size = (max(1, round(picture.height * size)), max(1, round(picture.width * size)))
        if size is not None:
            picture = picture.resize((size[1], size[0]), Image.NEAREST if nearest else Image.BILINEAR)
        return np.asarray(picture)


def png_label_mapping(values: Iterable[int]) -> dict[int, int]:
    """Maps the mask values found to nnU-Net's consecutive labels 0 … K.

    0/255 masks (the usual binary PNG) become 0/1; in general the sorted values map to 0, 1, 2, …

    Raises:
        ValueError: no background value 0.
    """
    values = sorted(set(int(v) for v in values))
    if not values or values[0] != 0:
        raise ValueError(f"mask values {values} have no background 0; masks must mark background with 0")
    return {v: i for i, v in enumerate(values)}


# --------------------------------------------------------------------------------------- the command


def make_dataset(
    source: str | os.PathLike,
    raw_root: str | os.PathLike,
    dataset_id: int,
    name: str,
    num_labeled: int,
    num_test: int,
    seed: int = 0,
    num_unlabeled: int | None = None,
    group_regex: str | None = None,
    group_chars: int | None = None,
    images_dir: str | None = None,
    masks_dir: str | None = None,
    mask_suffix: str | None = None,
    resize: tuple[int, int] | float | None = None,
    overwrite: bool = False,
    test_seed: int | None = None,
    num_validation: int = 0,
) -> Path:
    """Imports an MSD folder (has ``imagesTr/``) or a 2D PNG folder as a label-budget study dataset.

    ``resize`` is ``(H, W)`` in pixels or one scale factor (each image's own size × factor, rounded);
    ``test_seed`` draws the test split with its own seed (one test set for every ``seed``); ``num_validation``
    cases with labels are held out of the pool into ``imagesVal/labelsVal`` (:func:`split_by_group`).

    Returns:
        The dataset folder ``<raw_root>/Dataset{id:03d}_{name}``.

    Raises:
        FileNotFoundError, ValueError, FileExistsError: with what is wrong and the flag that fixes it.
    """
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"-i {source} is not a folder")
    group = group_function(group_regex, group_chars)
    is_msd = (source / "imagesTr").is_dir()
    if is_msd and resize is not None:
        raise ValueError("--resize is for 2D PNG folders; nnU-Net resamples NIfTI by its spacing itself")
    cases = (find_msd_cases(source, group) if is_msd
             else find_png_cases(source, group, images_dir, masks_dir, mask_suffix))
    if len({c.case_id for c in cases}) != len(cases):
        raise ValueError(f"two files of {source} give the same case name after replacing unsafe characters")
    splits = split_by_group({c.case_id: c.group for c in cases}, num_labeled, num_test, seed, num_unlabeled, test_seed,
                            num_validation)
    split_of = {c: s for s, members in splits.items() if s != "unused" for c in members}
    manifest = {"source": str(source.resolve()), "format": "msd" if is_msd else "png", "seed": seed,
                "test_seed": seed if test_seed is None else test_seed,
                "grouping": {"regex": group_regex, "chars": group_chars},
                "groups": {c.case_id: c.group for c in cases}, "splits": splits}
    writer_for = partial(RawDatasetWriter, raw_root, dataset_id, name, overwrite=overwrite)
    if is_msd:
        return _import_msd(source, cases, split_of, manifest, writer_for)
    return _import_png(cases, split_of, manifest, writer_for, resize)


def _import_msd(source: Path, cases: list[SourceCase], split_of: dict[str, str], manifest: dict,
                writer_for: Callable[[str], RawDatasetWriter]) -> Path:
    """The MSD branch of :func:`make_dataset`: the NIfTI files of the cases in a split, copied as they are.

    Args:
        source: the MSD folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``).
        cases: every case found in it.
        split_of: ``{case_id: split}`` of the cases in a split (the unused ones are not there).
        manifest: the manifest written with ``dataset.json``.
        writer_for: ``file_ending -> RawDatasetWriter``, called once everything is read and checked (a writer
            with ``--overwrite`` deletes the existing dataset).
    """
    labels = _msd_labels(source, cases)
    channel_names = _msd_channel_names(source, cases[0].image)
    writer = writer_for(".nii.gz")
    for case in cases:
        if case.case_id in split_of:
            image_path, label_path = writer.paths(split_of[case.case_id], case.case_id)
            shutil.copyfile(case.image, image_path)
            shutil.copyfile(case.label, label_path)
    return writer.finish(labels, channel_names, manifest)


def _import_png(cases: list[SourceCase], split_of: dict[str, str], manifest: dict,
                writer_for: Callable[[str], RawDatasetWriter], resize: tuple[int, int] | float | None) -> Path:
    """The PNG branch of :func:`make_dataset`: grayscale images and masks, resized, the mask values mapped to
    nnU-Net's consecutive labels (:func:`png_label_mapping`, recorded in the manifest's ``label_mapping``).

    Args:
        cases, split_of, manifest, writer_for: as in :func:`_import_msd`.
        resize: ``(H, W)``, a scale factor or None (as in :func:`make_dataset`).
    """
    used = [c for c in cases if c.case_id in split_of]
    masks = {c.case_id: _read_png(c.label, resize, nearest=True) for c in used}
    mapping = png_label_mapping(set().union(*(np.unique(m).tolist() for m in masks.values())))
    lookup = np.zeros(max(mapping) + 1, np.uint8)
    for value, label in mapping.items():
        lookup[value] = label
    writer = writer_for(".png")
    for case in used:
        image = _read_png(case.image, resize, nearest=False)
        if image.shape != masks[case.case_id].shape:
            raise ValueError(f"image {case.image} is {image.shape} but its mask {case.label} is "
                             f"{masks[case.case_id].shape}; they must have the same size")
        writer.write_arrays(split_of[case.case_id], case.case_id, image, lookup[masks[case.case_id]])
    manifest["label_mapping"] = {str(k): v for k, v in mapping.items()}
    manifest["resize"] = resize if resize is None or isinstance(resize, float) else list(resize)
    labels = {"background": 0,
              **{f"label_{i}" if len(mapping) > 2 else "foreground": i for i in range(1, len(mapping))}}
    return writer.finish(labels, {"0": "image"}, manifest)


def main(argv: list[str] | None = None) -> None:
    """The entry point of console scripts installed before the command moved to
    :func:`nnunetv2_rndpo.commands.main_make_dataset` (``pip install -e .`` regenerates them)."""
    from nnunetv2_rndpo.commands import main_make_dataset

    main_make_dataset(argv)
