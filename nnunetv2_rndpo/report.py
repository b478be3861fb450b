"""The demo's report: ``OUTDIR/report.md`` and PNG figures in ``OUTDIR/figures/``, readable without running anything.

Sections: test Dice of base, DPO and RN-DPO (per class and mean, from ``nnUNetv2_evaluate_folder``'s
``summary.json``); the test-Dice curves over fine-tuning with peak / sustained / final
(:func:`nnunetv2_rndpo.metrics.curve_summary` over ``rndpo_metrics.jsonl``'s ``eval/dice``); the judges'
reliability (``nnUNetv2_rndpo_judge --report`` JSON); pictures of mined pairs (image, chosen and rejected
proposal, disagreement region) and of test predictions before and after fine-tuning.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from nnunetv2_rndpo.atomic_files import read_jsonl
from nnunetv2_rndpo.metrics import curve_summary
from nnunetv2_rndpo.paths import results_folder, rndpo_cache_folder

ARM_NAMES = {"base": "base", "dpo": "DPO", "rndpo": "RN-DPO"}
TRAINERS = {"dpo": "nnUNetTrainerDPO", "rndpo": "nnUNetTrainerRNDPO"}
JUDGE_KEYS = ("spearman/per_case", "spearman/pooled", "pairwise/accuracy", "top1/regret", "top1/best_dice_mean",
              "top1/chosen_dice_mean", "mining/top_bottom/oracle_acc")


def _number(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def test_dice(predictions: Path, labels: dict[str, int]) -> dict[str, dict[str, float]]:
    """``{arm: {class name: Dice, ..., "mean": foreground mean}}`` from each arm's ``summary.json``."""
    result = {}
    for arm in ARM_NAMES:
        summary = json.loads((predictions / arm / "summary.json").read_text())
        per_class = {name: summary["mean"][str(value)]["Dice"] for name, value in labels.items() if value}
        result[arm] = {**per_class, "mean": summary["foreground_mean"]["Dice"]}
    return result


def dice_curves(results_root: Path, dataset_name: str, configuration: str) -> dict[str, tuple[list[int], list[float]]]:
    """``{arm: (epochs, test Dice)}`` of the fine-tuning arms, epoch 0 = the base model."""
    curves = {}
    for arm, trainer in TRAINERS.items():
        fold = results_folder(results_root, dataset_name, trainer, "nnUNetPlans", configuration, 0)
        rows = read_jsonl(fold / "rndpo_metrics.jsonl")
        points = [(r["epoch"], r["eval/dice"]) for r in rows if "eval/dice" in r]
        curves[arm] = ([e for e, _ in points], [d for _, d in points])
    return curves


def plot_dice_curves(curves: dict[str, tuple[list[int], list[float]]], path: Path) -> dict[str, dict[str, float]]:
    """Plots the curves with peak (star), sustained (dashed, over the last half) and final (circle) marked."""
    import matplotlib.pyplot as plt

    summaries = {}
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (arm, (epochs, dice)), color in zip(curves.items(), ("tab:orange", "tab:blue"), strict=False):
        ax.plot(epochs, dice, "-", color=color, label=ARM_NAMES[arm])
        if len(dice) < 2:
            continue
        summary = summaries[arm] = curve_summary(dice)
        peak = 1 + int(np.argmax(dice[1:]))
        ax.plot(epochs[peak], summary["peak"], "*", color=color, markersize=12)
        half = math.ceil((len(dice) - 1) / 2)
        ax.plot([epochs[-half], epochs[-1]], [summary["sustained"]] * 2, "--", color=color, linewidth=1)
        ax.plot(epochs[-1], summary["final"], "o", color=color)
    if curves:
        ax.axhline(next(iter(curves.values()))[1][0], color="gray", linewidth=0.8, label="base")
    ax.set_xlabel("fine-tuning epoch (0 = base model)")
    ax.set_ylabel("test Dice (mean of classes)")
    ax.set_title("★ peak, -- sustained, ● final")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return summaries


def _slice(volume: np.ndarray, index: int | None) -> np.ndarray:
    return volume if volume.ndim == 2 or index is None else volume[index]


def _best_slice(mask: np.ndarray) -> int | None:
    """For 3D, the slice (first axis) with the most foreground; None for 2D."""
    if mask.ndim == 2:
        return None
    return int(np.argmax((mask > 0).reshape(mask.shape[0], -1).sum(1)))


def _show(ax, image: np.ndarray, mask: np.ndarray | None, title: str, colors: str = "viridis") -> None:
    ax.imshow(image, cmap="gray")
    if mask is not None:
        ax.imshow(np.ma.masked_equal(mask, 0), cmap=colors, alpha=0.5, vmin=0, vmax=max(2, int(mask.max())),
                  interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def plot_pairs(pairs_file: Path, pool_folder: Path, path: Path, num_cases: int = 3) -> int:
    """Image, chosen and rejected proposal, disagreement region D (red) over the hidden label, for the pairs
    with the largest D. Returns the number of cases shown (0 when there is nothing to show)."""
    import matplotlib.pyplot as plt

    document = json.loads(pairs_file.read_text())
    proposals = Path(document["proposals"])
    pairs = sorted(document["pairs"], key=lambda p: -p["region_size"])[:num_cases]
    if not pairs:
        return 0
    fig, axes = plt.subplots(len(pairs), 4, figsize=(8, 2.1 * len(pairs)), squeeze=False)
    for row, pair in zip(axes, pairs, strict=True):
        with np.load(proposals / f"{pair['case_id']}.npz") as f:
            masks = f["masks"]
        chosen, rejected = masks[pair["chosen"]], masks[pair["rejected"]]
        image = np.load(pool_folder / f"{pair['case_id']}_image.npy")[0]
        label_file = pool_folder / f"{pair['case_id']}_label.npy"
        label = np.load(label_file) if label_file.is_file() else None
        region = (chosen != rejected).astype(np.uint8)
        index = _best_slice(region)
        dice = {k: pair.get(f"{k}_dice") for k in ("chosen", "rejected")}
        _show(row[0], _slice(image, index), None if label is None else _slice(label, index),
              f"{pair['case_id']}: hidden label")
        _show(row[1], _slice(image, index), _slice(chosen, index),
              f"chosen: score {pair['chosen_score']:.2f}, Dice {_number(dice['chosen'])[:4]}")
        _show(row[2], _slice(image, index), _slice(rejected, index),
              f"rejected: score {pair['rejected_score']:.2f}, Dice {_number(dice['rejected'])[:4]}")
        _show(row[3], _slice(image, index), _slice(region, index), f"disagreement D, |D| = {pair['region_size']}",
              "autumn")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return len(pairs)


def _read(path: Path) -> np.ndarray:
    if path.name.endswith(".png"):
        from PIL import Image

        return np.asarray(Image.open(path))
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def plot_predictions(dataset_folder: Path, predictions: Path, ending: str, path: Path, num_cases: int = 3) -> int:
    """Test image with ground truth, and the base / DPO / RN-DPO predictions, for the first test cases."""
    import matplotlib.pyplot as plt

    cases = sorted(p.name.removesuffix(ending) for p in (dataset_folder / "labelsTs").glob(f"*{ending}"))[:num_cases]
    fig, axes = plt.subplots(len(cases), 4, figsize=(8, 2.1 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases, strict=True):
        image = _read(dataset_folder / "imagesTs" / f"{case}_0000{ending}")
        truth = _read(dataset_folder / "labelsTs" / f"{case}{ending}")
        index = _best_slice(truth)
        _show(row[0], _slice(image, index), _slice(truth, index), f"{case}: ground truth")
        for ax, arm in zip(row[1:], ARM_NAMES, strict=True):
            _show(ax, _slice(image, index), _slice(_read(predictions / arm / f"{case}{ending}"), index), ARM_NAMES[arm])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return len(cases)


def write_demo_report(root: Path, dataset_folder: Path, configuration: str, base_trainer: str,
                      seconds: dict[str, float]) -> Path:
    """Writes ``root/report.md`` and ``root/figures/*.png`` from a finished demo run; returns the report's path.

    Also ``root/demo_summary.json``: the test Dice table, the curve summaries and the timings.

    Args:
        root: the demo's OUTDIR (``nnUNet_preprocessed``, ``nnUNet_results``, ``predictions/``, ``judges/``).
        dataset_folder: the raw dataset.
        configuration: nnU-Net configuration (``2d`` / ``3d_fullres``).
        base_trainer: the base model's trainer.
        seconds: stage timings.
    """
    import matplotlib

    matplotlib.use("Agg")
    figures = root / "figures"
    figures.mkdir(exist_ok=True)
    dataset_json = json.loads((dataset_folder / "dataset.json").read_text())
    labels, ending = dataset_json["labels"], dataset_json["file_ending"]
    manifest = json.loads((dataset_folder / "rndpo_splits.json").read_text())
    dice = test_dice(root / "predictions", labels)
    summaries = plot_dice_curves(dice_curves(root / "nnUNet_results", dataset_folder.name, configuration),
                                 figures / "dice_curves.png")
    rndpo_fold = results_folder(root / "nnUNet_results", dataset_folder.name, TRAINERS["rndpo"], "nnUNetPlans",
                                configuration, 0)
    pool = rndpo_cache_folder(root / "nnUNet_preprocessed", dataset_folder.name, "nnUNetPlans", configuration) / "pool"
    shown_pairs = plot_pairs(rndpo_fold / "rndpo_pairs.json", pool, figures / "pairs.png")
    plot_predictions(dataset_folder, root / "predictions", ending, figures / "predictions.png")
    config = json.loads((root / "rndpo_config.json").read_text())
    reports = {j: json.loads((root / "judges" / f"scores_{j}.report.json").read_text())
               for j in ("agreement", "oracle")}

    names = [n for n, v in labels.items() if v]
    sections = [_test_dice_section(dice, names), _curves_section(summaries), _judges_section(reports),
                _pairs_section(shown_pairs),
                ["## Test predictions before and after fine-tuning", "", "![predictions](figures/predictions.png)"],
                _timings_section(seconds)]
    lines = [f"# RN-DPO demo report: {dataset_folder.name}", "",
             _run_sentence(manifest, configuration, base_trainer, config)]
    for section in sections:
        lines += ["", *section]
    path = root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (root / "demo_summary.json").write_text(json.dumps({"test_dice": dice, "curves": summaries, "seconds": seconds},
                                                       indent=1))
    return path


def _run_sentence(manifest: dict, configuration: str, base_trainer: str, config: dict) -> str:
    """What the demo ran: the split sizes and source, the configuration, base model and fine-tuning settings."""
    counts = {k: len(v) for k, v in manifest["splits"].items()}
    return (f"Dataset: {counts['labeled']} labeled, {counts['unlabeled']} unlabeled (pool), {counts['test']} "
            "test cases "
            f"(source: {manifest['source']}, seed {manifest['seed']}); nnU-Net configuration `{configuration}`; base "
            f"model `{base_trainer}`; fine-tuning {config['num_epochs']} epochs × "
            f"{config['num_iterations_per_epoch']} "
            f"iterations, judge `{config['judge']}` (σ = {config.get('judge_sigma', 0)}), "
            f"lr {config['learning_rate']}, "
            f"consistency anchor {config.get('consistency_weight', 0)}.")


def _test_dice_section(dice: dict[str, dict[str, float]], names: list[str]) -> list[str]:
    """The table of test Dice per arm (rows) and label (columns) with the mean."""
    lines = ["## Test Dice (`nnUNetv2_predict` + `nnUNetv2_evaluate_folder` on imagesTs)", "",
             "| model | " + " | ".join(names) + " | mean |", "|---|" + "---|" * (len(names) + 1)]
    for arm, values in dice.items():
        cells = " | ".join(_number(values[n]) for n in names)
        lines.append(f"| {ARM_NAMES[arm]} | {cells} | {_number(values['mean'])} |")
    return lines


def _curves_section(summaries: dict[str, dict[str, float]]) -> list[str]:
    """The test-Dice curves' figure and their summaries (base, peak, sustained, final, worst drop) per arm."""
    lines = ["## Test Dice over fine-tuning", "",
             "Evaluated by the trainer after every epoch (epoch 0 = the base model), in nnU-Net's preprocessed "
             "space without test-time augmentation, so it can differ slightly from the table above.", "",
             "![Dice curves](figures/dice_curves.png)", "",
             "| model | base | peak | sustained | final | worst drop |", "|---|---|---|---|---|---|"]
    for arm, s in summaries.items():
        lines.append(f"| {ARM_NAMES[arm]} | {_number(s['base'])} | {_number(s['peak'])} | {_number(s['sustained'])} | "
                     f"{_number(s['final'])} | {_number(s['worst_drop'])} |")
    return lines


def _judges_section(reports: dict[str, dict]) -> list[str]:
    """``JUDGE_KEYS`` of the judges' reliability reports, one column per judge."""
    lines = ["## Judge reliability on the unlabeled pool (against the hidden labels)", "",
             "| metric | " + " | ".join(reports) + " |", "|---|" + "---|" * len(reports)]
    for key in JUDGE_KEYS:
        lines.append(f"| `{key}` | " + " | ".join(_number(reports[j].get(key)) for j in reports) + " |")
    return lines + ["", "`pairwise/accuracy` is the chance that a mined pair is ordered correctly; `top1/regret` the "
                    "Dice lost by trusting the judge's favourite proposal (docs/toolkit.md)."]


def _pairs_section(shown_pairs: int) -> list[str]:
    lines = ["## Pairs the fine-tuning learned from", ""]
    if not shown_pairs:
        return lines + ["No pair was mined."]
    return lines + [f"The {shown_pairs} pairs with the largest disagreement region D: hidden label, chosen and "
                    "rejected proposal (with judge score and true Dice), and D.", "", "![pairs](figures/pairs.png)"]


def _timings_section(seconds: dict[str, float]) -> list[str]:
    return (["## Stage timings", "", "| stage | seconds |", "|---|---|"]
            + [f"| {name} | {value:.0f} |" for name, value in seconds.items()]
            + [f"| **total** | **{sum(seconds.values()):.0f}** |"])
