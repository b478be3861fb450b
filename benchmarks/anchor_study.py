"""Anchors on real data: DPO and RN-DPO × {no anchor, sft, consistency, agreement, all} on Hippocampus, CPU scale.

    python benchmarks/anchor_study.py --source ../shared/data/msd_task04_hippocampus -o /tmp/anchor_study

Protocol (fixed here; ../shared/STUDY_NOTES.md explains the numbers):
- Dataset: MSD Task04 Hippocampus, sorted ids. TEST = the last ``--test`` ids; labeled = 10 ids drawn with
  numpy seed 0 from the first 200; pool = ``--pool`` other ids of the first 200 (seed 1), hidden labels kept
  in labelsUnlabeled/ for the oracle judge. Images are linked, not copied.
- Base: ``nnUNetTrainer_cpuBase`` (20 × 25 iterations), 3d_fullres, fold ``all``.
- Proposals: 8 per case (mirror, threshold, temperature); judge ``oracle`` with σ = 0; mining ``top_bottom``.
- Every arm: ``--epochs`` × ``--iterations`` iterations from the base checkpoint, AdamW at ``--lr``, test Dice
  after every epoch (epoch 0 = base), nnU-Net's preprocessed space, no TTA.
Writes ``OUTDIR/results.json`` and ``OUTDIR/results.md``; finished arms are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from nnunetv2_rndpo.atomic_files import read_jsonl
from nnunetv2_rndpo.metrics import curve_summary
from nnunetv2_rndpo.paths import BENCHMARK_FOLDERS, nnunet_environment, results_folder, run_logged

DATASET_ID, DATASET = 951, "Dataset951_HippocampusAnchors"
ARMS = {
    "control (continued supervised)": ("nnUNetTrainerContinuedSFT", {"sft_weight": 1.0}),
    **{f"{name} {anchor}": (trainer, weights)
       for name, trainer in (("DPO", "nnUNetTrainerDPO"), ("RN-DPO", "nnUNetTrainerRNDPO"))
       for anchor, weights in (("no anchor", {}), ("sft", {"sft_weight": 1.0}),
                               ("consistency", {"consistency_weight": 1.0}),
                               ("agreement", {"agreement_weight": 1.0}),
                               ("all", {"sft_weight": 1.0, "consistency_weight": 1.0, "agreement_weight": 1.0}))},
}


def build_dataset(source: Path, raw: Path, num_test: int, num_pool: int) -> None:
    folder = raw / DATASET
    if (folder / "dataset.json").is_file():
        return
    ids = sorted(p.name[: -len(".nii.gz")] for p in (source / "imagesTr").glob("*.nii.gz"))
    test, first = ids[-num_test:], ids[:200]
    labeled = sorted(np.random.default_rng(0).choice(first, 10, replace=False).tolist())
    rest = [i for i in first if i not in labeled]
    pool = sorted(np.random.default_rng(1).choice(rest, num_pool, replace=False).tolist())
    for split, cases in (("Tr", labeled), ("Unlabeled", pool), ("Ts", test)):
        (folder / f"images{split}").mkdir(parents=True, exist_ok=True)
        (folder / f"labels{split}").mkdir(parents=True, exist_ok=True)
        for case in cases:
            os.symlink((source / "imagesTr" / f"{case}.nii.gz").resolve(),
                       folder / f"images{split}" / f"{case}_0000.nii.gz")
            os.symlink((source / "labelsTr" / f"{case}.nii.gz").resolve(), folder / f"labels{split}" / f"{case}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": len(labeled), "file_ending": ".nii.gz"}, indent=2))
    (folder / "splits.json").write_text(json.dumps({"labeled": labeled, "pool": pool, "test": test}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="folder in MSD layout (imagesTr/, labelsTr/)")
    parser.add_argument("-o", "--output", default="/tmp/anchor_study")
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--pool", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--arms", nargs="*", default=list(ARMS), help="subset of arm names, run in this order")
    parser.add_argument("--weight-scale", type=float, default=1.0, help="multiplies every anchor weight")
    parser.add_argument("--tag", default="", help="suffix of the arm names in the results (e.g. 'lr 1e-5')")
    args = parser.parse_args()
    root = Path(args.output).resolve()
    env = nnunet_environment(root, folder_names=BENCHMARK_FOLDERS)
    build_dataset(Path(args.source), root / "raw", args.test, args.pool)
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def run(name: str, command: list[str], **extra: str) -> float:
        start = time.time()
        if run_logged(command, {**env, **extra}, logs / f"{name}.log"):
            raise RuntimeError(f"{name} failed; see {logs / f'{name}.log'}")
        print(f"{name}: {time.time() - start:.0f} s", flush=True)
        return time.time() - start

    if not (root / "preprocessed" / DATASET / "nnUNetPlans.json").is_file():
        run("plan", ["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-npfp", "1",
                     "-np", "1"],
            nnUNet_n_proc_DA="1")
    base = results_folder(root / "results", DATASET, "nnUNetTrainer_cpuBase", "nnUNetPlans", "3d_fullres", "all")
    if not (base / "checkpoint_final.pth").is_file():
        run("base", ["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "all", "-tr", "nnUNetTrainer_cpuBase",
                     "-device", "cpu"])
    results_file = root / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for arm_name in args.arms:
        arm = f"{arm_name}, {args.tag}" if args.tag else arm_name
        if arm in results:
            continue
        trainer, weights = ARMS[arm_name]
        weights = {k: weights.get(k, 0.0) * args.weight_scale
                   for k in ("sft_weight", "consistency_weight", "agreement_weight")}
        config = {"num_epochs": args.epochs, "num_iterations_per_epoch": args.iterations,
                  "num_val_iterations_per_epoch": 5,
                  "learning_rate": args.lr, "num_proposals": 8,
                  "proposal_sources": ["mirror", "threshold", "temperature"],
                  "judge": "oracle", "judge_sigma": 0.0, "mining": "top_bottom", "eval_every": 1, "guard_num_cases": 0,
                  "base_trainer": "nnUNetTrainer_cpuBase", "beta": 1.0,  # the default when this study ran (now 4)
                  "overwrite_finished_fold": True,  # every arm of one trainer trains the same fold folder in turn
                  **weights}
        config_file = root / f"config_{arm.replace(' ', '_').replace('(', '').replace(')', '')}.json"
        config_file.write_text(json.dumps(config))
        seconds = run(arm.replace(" ", "_"), ["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "all", "-tr", trainer,
                                              "-device", "cpu"], nnUNet_rndpo_config=str(config_file))
        fold = results_folder(root / "results", DATASET, trainer, "nnUNetPlans", "3d_fullres", "all")
        rows = read_jsonl(fold / "rndpo_metrics.jsonl")

        curve = [r["eval/dice"] for r in rows if "eval/dice" in r]
        results[arm] = {"trainer": trainer, "config": config, "curve": curve, "summary": curve_summary(curve),
                        "seconds": round(seconds), "oracle_pair_acc": rows[-1].get("judge/oracle_pair_acc")}
        results_file.write_text(json.dumps(results, indent=1))
        write_table(root, results, args)
    write_table(root, results, args)


def write_table(root: Path, results: dict, args) -> None:
    iterations = [e * args.iterations for e in range(args.epochs + 1)]
    def describe(config: dict) -> str:
        anchors = [f"{k.removesuffix('_weight')} {config[k]:g}" for k in ("sft_weight", "consistency_weight",
                                                                        "agreement_weight") if config.get(k)]
        return ", ".join([f"lr {config['learning_rate']:g}", *anchors])

    lines = [f"Test Dice (mean of the 2 classes) on {args.test} Hippocampus test cases, CPU (2 cores); base "
             "nnUNetTrainer_cpuBase on 10 labels; oracle judge σ=0, top_bottom; AdamW at the arm's learning_rate "
             f"(--lr {args.lr:g}), anchor weights {args.weight_scale:g}.", "",
             "| arm | settings | " + " | ".join(f"it {i}" for i in iterations)
             + " | peak | sustained | final | worst drop | s |",
             "|---|---|" + "---|" * (len(iterations) + 5)]
    for arm, r in results.items():
        s = r["summary"]
        lines.append(f"| {arm} | {describe(r['config'])} | " + " | ".join(f"{d:.4f}" for d in r["curve"]) +
                     f" | {s['peak']:.4f} | {s['sustained']:.4f} | {s['final']:.4f} | {s['worst_drop']:.4f} | "
                     f"{r['seconds']} |")
    (root / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
