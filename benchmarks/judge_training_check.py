"""Does the learned judge rank a pool's proposals within a case, and what does it learn? Training variants on a
real dataset, CPU scale.

    nice -n 10 python benchmarks/judge_training_check.py --dataset hc18 --source ../shared/data/hc18_fetal_head_us \
        -o STUDY_HC18 --labeled 5 --seeds 0 1 \
        [--results docs/results/judge_training_hc18_cpu]

``-o`` is a study folder that ``benchmarks/headroom.py`` or the study itself (``nnUNetv2_rndpo_study``, any scale:
its results are not touched) has filled: the CPU base model per seed and its proposals of today's set,
``mirror threshold temperature``, K = 8, seed 12345, for the first ``--max-cases`` pool cases. For each seed and each
variant of VARIANTS (the convolutional ranking net's and the boundary-profile ranker's, ``JudgeTraining.model``) it
trains a learned judge (``train_learned_judge`` with that :class:`~nnunetv2_rndpo.learned_judge.JudgeTraining`;
saved under ``<-o>/judge_training_check/``, never over the judge the trainer uses), scores the pool's proposals and
reports the within-case pair accuracy and per-case Spearman against the hidden labels, and the judge's within-case
Spearman between score and mask size next to the truth's (the same for the true Dice): a judge that reads mask size
instead of the image shows a size Spearman of the sign its training masks reward, whatever the pool rewards; the
size-free per-case ρ (Spearman of score and true Dice within a case after a least-squares line in mask size is
taken out of both) is near 0 for a judge that reads only size, however well size orders the pool. The
``cross_validation`` variant first trains nnU-Net's 5 cross-validation folds of the base trainer on the seed's
dataset (each once: 5 base trainings per seed, the variant's cost) and trains the judge on their proposals for the
cases each held out. Results are kept per seed in ``<-o>/judge_training_check_seed<s>.json`` (a rerun skips what is
there).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

TODAY = ("mirror", "threshold", "temperature")
# name: JudgeTraining overrides. The first eight are the convolutional ranking net's (their names are those of the
# committed tables, measured when it was the only model); the boundary-profile ranker's follow
RANKING_NET = {"model": "ranking_net"}
VARIANTS = {
    "predictions (default)": RANKING_NET,
    "predictions, weight noise 0.2 0.4 0.6": {**RANKING_NET, "weight_noise": (0.2, 0.4, 0.6)},
    "label": {**RANKING_NET, "masks": "label"},
    "label, 120 epochs": {**RANKING_NET, "masks": "label", "epochs": 120},
    # the proposals of the 5 cross-validation folds' models for the cases each held out (trained first: --folds)
    "cross_validation": {**RANKING_NET, "masks": "cross_validation"},
    # ordered by Dice with its line in mask size taken out within a step: size alone cannot lower the loss
    "predictions, size-free targets": {**RANKING_NET, "targets": "size_free"},
    "label, size-free targets": {**RANKING_NET, "masks": "label", "targets": "size_free"},
    "cross_validation, size-free targets": {**RANKING_NET, "masks": "cross_validation", "targets": "size_free"},
    # a linear ranker on the image across each mask's boundary (nnunetv2_rndpo.profile_judge)
    "boundary profile: label moves and predictions": {"model": "boundary_profile"},
    "boundary profile: label moves": {"model": "boundary_profile", "masks": "label"},
    "boundary profile: label moves and predictions, size-free targets": {"model": "boundary_profile",
                                                                         "targets": "size_free"},
}
CROSS_VALIDATION_FOLDS = 5
# where the pool's proposals of today's set are read, the first complete one: the study's and the trainer's own
# cache (the same settings, every pool case), else the one benchmarks/headroom.py fills
PROPOSAL_CACHES = ("proposals", "headroom_benchmark")
REFERENCE_JUDGES = ("agreement", "uncertainty")  # label-free judges scored on the same proposals (no training)


def slug_of(variant: str) -> str:
    """A variant's name as a file name: its judge is saved as ``seed<s>_<slug>.pth``."""
    return "".join(c if c.isalnum() else "_" for c in variant)


def within_case_spearman(values: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> float:
    """Mean over cases of Spearman's ρ between two per-proposal arrays (cases where either is constant skipped)."""
    from nnunetv2_rndpo.metrics import spearman

    rhos = [spearman(np.asarray(values[c], float), np.asarray(other[c], float)) for c in values]
    rhos = [r for r in rhos if not math.isnan(r)]
    return float(np.mean(rhos)) if rhos else math.nan


def size_residuals(values: dict[str, np.ndarray], sizes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per case, ``values`` minus their least-squares line in mask size
    (:func:`~nnunetv2_rndpo.metrics.without_size_trend`)."""
    from nnunetv2_rndpo.metrics import without_size_trend

    return {c: without_size_trend(v, sizes[c]) for c, v in values.items()}


def size_free_spearman(scores: dict[str, np.ndarray], dice: dict[str, np.ndarray],
                       sizes: dict[str, np.ndarray]) -> float:
    """Within-case Spearman of score and true Dice after size is regressed out of both: near 0 for a judge that
    reads only mask size, however well size happens to order a pool."""
    return within_case_spearman(size_residuals(scores, sizes), size_residuals(dice, sizes))


def measure_seed(args, seed: int) -> dict:
    from nnunetv2_rndpo.study import Study

    study = Study(args.dataset, args.source, "cpu", args.output, seeds=(seed,), device=args.device,
                  labeled=args.labeled)
    os.environ.update(study.env)  # before nnU-Net is imported: nnunetv2.paths reads them once

    from nnunetv2_rndpo.atomic_files import atomic_write_text
    from nnunetv2_rndpo.judge_training import train_learned_judge, training_masks
    from nnunetv2_rndpo.learned_judge import JudgeTraining
    from nnunetv2_rndpo.metrics import mean_dice
    from nnunetv2_rndpo.pipeline import (
        JudgeSettings,
        ProposalSettings,
        hidden_true_dice,
        load_base_model,
        prepare_pool,
        proposal_cache,
        score_pool,
    )
    from nnunetv2_rndpo.pool import PreprocessedPool, labeled_cases
    from nnunetv2_rndpo.reliability import judge_reliability

    results_file = Path(args.output) / f"judge_training_check_seed{seed}.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {"seed": seed, "variants": {}}

    def save() -> None:
        atomic_write_text(results_file, json.dumps(results, indent=1))

    base = load_base_model(study.dataset_id(seed), study.spec.configuration, "all", study.scale.base_trainer,
                           device=args.device)
    pool = prepare_pool(base)
    pool = PreprocessedPool(pool.folder, sorted(pool.cases, key=lambda c: c.case_id)[: args.max_cases])
    settings = ProposalSettings(8, TODAY, (), 12345)
    caches = [proposal_cache(base, settings, subfolder)[0] for subfolder in PROPOSAL_CACHES]
    cache = next((c for c in caches if all(c.has_case(case) for case in pool.case_ids)), None)
    if cache is None:
        raise SystemExit(f"the first {len(pool.case_ids)} pool cases have no proposals of today's set in "
                         f"{' or '.join(str(c.folder) for c in caches)}: run benchmarks/headroom.py on "
                         f"-o {args.output} --seeds {seed} first (or the study on this seed)")
    dice = hidden_true_dice(base, pool, cache)
    sizes = {c: (cache.masks(c) > 0).reshape(len(dice[c]), -1).sum(1) for c in pool.case_ids}
    if "truth" not in results:
        cases, train_ids, _ = labeled_cases(base, base.fold)
        masks = training_masks(base, settings, cases, train_ids, JudgeTraining(), progress=False)
        dim = len(base.configuration_manager.patch_size)
        train_dice, train_sizes = {}, {}
        for c in train_ids:
            label = cases[c][1]
            m = masks[c].reshape(len(masks[c]), *label.shape)
            train_dice[c] = [mean_dice(x, label, base.classes, base.label_manager.ignore_label) for x in m]
            train_sizes[c] = (m > 0).reshape(len(m), -1).sum(1)
        results["truth"] = {"pool_cases": len(pool.case_ids), "training_cases": len(train_ids), "dim": dim,
                            "pool_size_spearman": within_case_spearman(sizes, dice),
                            "training_masks_size_spearman": within_case_spearman(train_sizes, train_dice)}
        save()
    for judge in REFERENCE_JUDGES:  # the label-free judges the learned one must beat, on the same proposals
        if "size_free_spearman" not in results.setdefault("references", {}).get(judge, {}):
            scores = score_pool(base, pool, cache, JudgeSettings(judge, seed=12345), progress=False)
            reliability = judge_reliability(scores, dice)
            results["references"][judge] = {"pairwise/accuracy": reliability["pairwise/accuracy"],
                                            "spearman/per_case": reliability["spearman/per_case"],
                                            "score_size_spearman": within_case_spearman(scores, sizes),
                                            "size_free_spearman": size_free_spearman(scores, dice, sizes)}
            save()
    for name, row in results["variants"].items():  # rows measured before the size-free column: their judge again
        judge_file = Path(args.output) / "judge_training_check" / f"seed{seed}_{slug_of(name)}.pth"
        if "size_free_spearman" not in row and judge_file.is_file():
            scores = score_pool(base, pool, cache, JudgeSettings("learned", seed=12345, learned_judge=str(judge_file)),
                                progress=False)
            row["size_free_spearman"] = size_free_spearman(scores, dice, sizes)
            save()
    for name, overrides in VARIANTS.items():
        if name not in args.variants or name in results["variants"]:
            continue
        started = time.time()
        if overrides.get("masks") == "cross_validation":  # nnU-Net's 5 folds of the base trainer, each once
            for fold in range(CROSS_VALIDATION_FOLDS):
                study.train(study.dataset_id(seed), study.scale.base_trainer, fold)
        judge = train_learned_judge(base, settings, JudgeTraining(**overrides), progress=False, log=lambda *a: None)
        judge_file = Path(args.output) / "judge_training_check" / f"seed{seed}_{slug_of(name)}.pth"
        judge_file.parent.mkdir(parents=True, exist_ok=True)
        judge.save(judge_file)
        scores = score_pool(base, pool, cache, JudgeSettings("learned", seed=12345, learned_judge=str(judge_file)),
                            progress=False)
        reliability = judge_reliability(scores, dice)
        results["variants"][name] = {"overrides": {k: list(v) if isinstance(v, tuple) else v
                                                   for k, v in overrides.items()},
                                     "pairwise/accuracy": reliability["pairwise/accuracy"],
                                     "spearman/per_case": reliability["spearman/per_case"],
                                     "score_size_spearman": within_case_spearman(scores, sizes),
                                     "size_free_spearman": size_free_spearman(scores, dice, sizes),
                                     "seconds": round(time.time() - started, 1)}
        save()
        row = results["variants"][name]
        print(f"[seed {seed}] {name}: pair acc {row['pairwise/accuracy']:.3f}, per-case ρ "
              f"{row['spearman/per_case']:.3f}, Spearman(score, size) {row['score_size_spearman']:+.2f} "
              f"({row['seconds']:.0f} s)", flush=True)
    return results


def table(dataset: str, per_seed: list[dict]) -> str:
    seeds = ", ".join(str(r["seed"]) for r in per_seed)
    truth = " / ".join(f"{r['truth']['pool_size_spearman']:+.2f}" for r in per_seed)
    train = " / ".join(f"{r['truth']['training_masks_size_spearman']:+.2f}" for r in per_seed)
    lines = [f"### {dataset}, seeds {seeds}: the learned judge on today's proposals of the pool",
             "", f"Within a case, Spearman(true Dice, mask size): pool {truth}; the base model's predictions of its "
             f"training cases {train}.", "",
             "| training variant | pair acc | per-case ρ | Spearman(score, size) | size-free per-case ρ |",
             "|---|---|---|---|---|"]
    named = [(name, [r["variants"].get(name) for r in per_seed]) for name in VARIANTS]
    named += [(f"{judge} (reference, not trained)", [r.get("references", {}).get(judge) for r in per_seed])
              for judge in REFERENCE_JUDGES]
    for name, rows in named:
        if None in rows:
            continue
        if VARIANTS.get(name, {}).get("model") == "ranking_net":
            name = "ranking net: " + name.replace("(default)", "(its default training)")
        cells = [" / ".join(f"{row[k]:{form}}" if k in row else "–" for row in rows)
                 for k, form in (("pairwise/accuracy", ".3f"), ("spearman/per_case", ".3f"),
                                 ("score_size_spearman", "+.2f"), ("size_free_spearman", "+.2f"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="hc18", help="a study dataset: hc18, hippocampus, synthetic")
    parser.add_argument("--source", required=True, help="its source folder (as given to benchmarks/headroom.py)")
    parser.add_argument("-o", "--output", required=True, help="the study folder benchmarks/headroom.py filled")
    parser.add_argument("--labeled", type=int, default=None, help="labeled cases of the base model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT",
                        help="names of VARIANTS (none: only the truth's size Spearman). Default: all")
    parser.add_argument("--max-cases", type=int, default=24, help="the first N pool cases (sorted ids). Default: 24")
    parser.add_argument("--results", default=None, help="write the table to PREFIX.md and the seeds to PREFIX.json")
    parser.add_argument("-device", default="cpu")
    args = parser.parse_args()
    per_seed = [measure_seed(args, seed) for seed in args.seeds]
    text = table(args.dataset, per_seed)
    print(text)
    if args.results:
        prefix = Path(args.results)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        prefix.with_suffix(".json").write_text(json.dumps(per_seed, indent=1))
        prefix.with_suffix(".md").write_text(
            f"Generated by `python benchmarks/judge_training_check.py --dataset {args.dataset} ... --seeds "
            f"{' '.join(map(str, args.seeds))} --results {args.results}` (the study's CPU base models, the first "
            f"{args.max_cases} pool cases, K = 8; measured on a 2-core CPU, busy). Cells: seeds' values.\n\n" + text)


if __name__ == "__main__":
    main()
