"""Self-training, the baseline a user would pick instead: pseudo-label the unlabeled pool, retrain from scratch.

nnU-Net's maintainers answer "I have labeled and unlabeled cases" with: predict the unlabeled cases with the
model, add them to the training set with those predictions as labels, train again. The study
(:mod:`nnunetv2_rndpo.study`, ``--self-training``) runs it with two pseudo-label sources:

- ``tta``: the base model's plain prediction, what ``nnUNetv2_predict`` writes (test-time mirroring on);
- ``top_proposal``: per pool case the proposal the judge scored highest, from the proposal cache and the judge's
  scores CSV (:func:`write_top_proposals`; run as ``python -m nnunetv2_rndpo.self_training``).

Both end as label files in raw space, from which :func:`pseudo_labeled_dataset` builds a new nnU-Net raw
dataset that nnU-Net plans, preprocesses and trains as any other.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np

from nnunetv2_rndpo.atomic_files import atomic_write_text

SELF_TRAINING_SOURCES = ("tta", "top_proposal")


def _case_id(image_file: str, file_ending: str) -> str:
    """``case_0000.nii.gz`` → ``case`` (nnU-Net's channel suffix and the dataset's file ending removed)."""
    return image_file[: -len(file_ending)].rsplit("_", 1)[0]


def pseudo_labeled_dataset(source: Path, raw_root: Path, dataset_id: int, pseudo_labels: Path, suffix: str,
                           kind: str = "SelfTrain") -> Path:
    """``Dataset<id>_<name><kind><suffix>``: ``source``'s labeled cases with their labels, its pool
    (``imagesUnlabeled/``) with the label files in ``pseudo_labels``, and its test set.

    Files are linked, not copied. The pool's hidden labels (``labelsUnlabeled/``) are neither read nor linked
    unless they are ``pseudo_labels`` (the full-label upper bound, ``kind`` "FullLabel"): otherwise the
    pseudo-labels are the pool's only labels. A folder of this id left without ``dataset.json`` (a killed
    build: ``dataset.json`` is written last) is built again.

    Args:
        source: the seed's raw dataset (``imagesTr``, ``labelsTr``, ``imagesUnlabeled``, ``imagesTs``, ``labelsTs``).
        raw_root: ``$nnUNet_raw``.
        dataset_id: the new dataset's id (free in ``raw_root``).
        pseudo_labels: ``<case><file_ending>`` for every pool case (other files there are ignored).
        suffix: the name's ending after ``kind``, e.g. ``Tta``.
        kind: what the pool's labels are, in the name: ``SelfTrain`` (pseudo-labels) or ``FullLabel``.

    Raises:
        FileNotFoundError: a folder of ``source`` is missing, or some pool case has no pseudo-label.
        ValueError: a training case id is also a test case id (the test set would leak into training).
    """
    source, pseudo_labels = Path(source), Path(pseudo_labels)
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{source.name.split('_', 1)[1]}{kind}{suffix}"
    dataset = json.loads((source / "dataset.json").read_text())
    ending = dataset["file_ending"]
    for needed in ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs"):
        if not (source / needed).is_dir():
            raise FileNotFoundError(f"{source / needed} is missing: self-training needs the labeled cases, the pool "
                                    "and the test set (make the dataset with nnUNetv2_rndpo_make_dataset)")

    def case_ids(images: str) -> set[str]:
        return {_case_id(f.name, ending) for f in (source / images).glob(f"*{ending}")}

    labeled, pool, test = case_ids("imagesTr"), case_ids("imagesUnlabeled"), case_ids("imagesTs")
    leaked = sorted((labeled | pool) & test)
    if leaked:
        raise ValueError(f"{source}: the cases {leaked[:5]} are both training (imagesTr/imagesUnlabeled) and test "
                         "cases (imagesTs); a self-trained model would be tested on what it trained on")
    missing = sorted(c for c in pool if not (pseudo_labels / f"{c}{ending}").is_file())
    if missing:
        raise FileNotFoundError(f"{pseudo_labels} has no pseudo-label for {len(missing)} of {len(pool)} pool cases "
                                f"(e.g. {missing[:3]}); make them again (rerun the study: it redoes this step)")
    if folder.is_dir() and not (folder / "dataset.json").is_file():
        shutil.rmtree(folder)
    linked = (("imagesTr", "imagesTr"), ("labelsTr", "labelsTr"), ("imagesUnlabeled", "imagesTr"),
              ("imagesTs", "imagesTs"), ("labelsTs", "labelsTs"))
    links = [(f, target) for name, target in linked for f in sorted((source / name).glob(f"*{ending}"))]
    links += [(pseudo_labels / f"{c}{ending}", "labelsTr") for c in sorted(pool)]
    for file, target in links:
        (folder / target).mkdir(parents=True, exist_ok=True)
        os.symlink(file.resolve(), folder / target / file.name)
    dataset.update(numTraining=len(labeled) + len(pool), name=folder.name.split("_", 1)[1])
    atomic_write_text(folder / "dataset.json", json.dumps(dataset, indent=1))
    return folder


def pseudo_label_dice(pseudo_labels: Path, hidden_labels: Path, dataset_json: dict) -> float | None:
    """Mean over the pool cases of the foreground-mean Dice of their pseudo-label against their hidden label, in
    raw space (the definition of :mod:`nnunetv2_rndpo.evaluation`); None unless every pseudo-label has one.

    Args:
        pseudo_labels: ``<case><file_ending>`` files (other files there are ignored).
        hidden_labels: the pool's ``labelsUnlabeled/``.
        dataset_json: the dataset's ``dataset.json`` (labels or regions, ignore label, file ending).
    """
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from nnunetv2_rndpo.metrics import dice_per_class, foreground_mean

    ending = dataset_json["file_ending"]
    files = sorted(Path(pseudo_labels).glob(f"*{ending}"))
    references = [Path(hidden_labels) / f.name for f in files]
    if not files or not all(r.is_file() for r in references):
        return None
    labels = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    classes = labels.foreground_regions if labels.has_regions else labels.foreground_labels
    reader = determine_reader_writer_from_dataset_json(dataset_json, str(files[0]))()
    dice = []
    for file, reference in zip(files, references, strict=True):
        per_class = dice_per_class(reader.read_seg(str(file))[0][0], reader.read_seg(str(reference))[0][0], classes,
                                   ignore_label=labels.ignore_label)
        dice.append(foreground_mean(per_class))
    return float(np.nanmean(dice))


def mask_logits(mask: np.ndarray, label_manager):
    """Logits ``(heads, *spatial)`` whose nnU-Net segmentation is ``mask`` (``(*spatial)`` label map): one-hot
    over the labels (softmax heads), or ±1 per region (sigmoid heads, thresholded at 0.5 = logit 0).

    Resampled as nnU-Net resamples predicted logits, they give the mask in the original geometry.
    """
    import torch

    from nnunetv2_rndpo.metrics import in_class

    if label_manager.has_regions:
        heads = np.stack([in_class(mask, region) for region in label_manager.foreground_regions]) * 2.0 - 1.0
    else:
        heads = np.stack([mask == label for label in range(label_manager.num_segmentation_heads)]) * 1.0
    return torch.from_numpy(heads.astype(np.float32))


def write_top_proposals(base, pool, cache, scores: dict[str, np.ndarray], output: Path, progress: bool = True) -> int:
    """Writes, per pool case, its highest-scored proposal (the first of ties) as a label file in raw space.

    The proposal (preprocessed space) goes back to the raw image's geometry the way ``nnUNetv2_predict`` exports
    a prediction: resampled, the crop reverted, transposed back, written by the dataset's reader/writer. The
    geometry is recomputed by nnU-Net's preprocessor from the raw image (the pool cache keeps only the arrays).

    Returns:
        The number of files written to ``output`` (``<case><file_ending>``).
    """
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from tqdm import tqdm

    output.mkdir(parents=True, exist_ok=True)
    preprocessor = base.configuration_manager.preprocessor_class(verbose=False)
    writer = base.plans_manager.image_reader_writer_class()
    ending = base.dataset_json["file_ending"]
    for case in tqdm(pool.cases, desc="top proposals", disable=not progress):
        top = int(np.argmax(scores[case.case_id]))
        _, _, properties = preprocessor.run_case(list(case.image_files), None, base.plans_manager,
                                                 base.configuration_manager, base.dataset_json)
        mask = np.asarray(cache.masks(case.case_id)[top])
        segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
            mask_logits(mask, base.label_manager), base.plans_manager, base.configuration_manager,
            base.label_manager, properties, num_threads_torch=1)
        writer.write_seg(segmentation, str(output / f"{case.case_id}{ending}"), properties)
    return len(pool.cases)


def top_proposals_parser() -> argparse.ArgumentParser:
    from nnunetv2_rndpo.commands import _add_base_arguments

    parser = argparse.ArgumentParser(
        prog="python -m nnunetv2_rndpo.self_training",
        description="Write each pool case's highest-scored proposal as a label file in raw space (self-training's "
                    "pseudo-labels from a judge). The proposals must exist (nnUNetv2_rndpo_proposals).")
    _add_base_arguments(parser)
    parser.add_argument("--scores", required=True, help="the judge's scores CSV (nnUNetv2_rndpo_judge -o)")
    parser.add_argument("-o", required=True, help="output folder for <case><file_ending> label files")
    return parser


def run_top_proposals(args: argparse.Namespace) -> Path:
    from nnunetv2_rndpo.commands import _load
    from nnunetv2_rndpo.judges import read_external_scores
    from nnunetv2_rndpo.pipeline import open_pool

    base, settings = _load(args)
    pool, cache = open_pool(base, settings, args.unlabeled_dir, progress=not args.quiet, on_bad_case=args.on_bad_case)
    with cache.remembering():
        scores = read_external_scores(args.scores, {c: len(cache.masks(c)) for c in pool.case_ids})
        written = write_top_proposals(base, pool, cache, scores, Path(args.o), not args.quiet)
    print(f"top proposals of {written} pool cases written to {args.o}")
    return Path(args.o)


def main(argv: list[str] | None = None) -> None:
    from nnunetv2_rndpo.commands import run_command

    run_command(top_proposals_parser(), run_top_proposals, argv)


if __name__ == "__main__":
    main()
