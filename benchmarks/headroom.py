"""Do the preference pairs carry information? Proposal sets × judges × minings on a real dataset, CPU scale.

    nice -n 10 python benchmarks/headroom.py --dataset hc18 --source ../shared/data/hc18_fetal_head_us \
        -o /tmp/study_hc18_n5 --labeled 5 --seeds 0 1 [--max-cases 30] [--results docs/results/preferences_hc18_cpu]

For each seed it makes the study's dataset (``nnUNetv2_rndpo_make_dataset`` with the study's split and import
arguments, ``--labeled`` cases), plans it and trains the study's CPU base model (``nnUNetTrainer_cpuBase``,
fold ``all``) unless the folder has them already (``-o`` may be a study folder: the same base models), and the
learned judge (``rndpo_judge.pth`` in the base model's fold folder, trained on the labeled cases with today's
proposal set, as ``nnUNetv2_rndpo_train_judge`` does). Then, in this process, for each proposal set of SETS
(K = 8, seed 12345) it

- generates the pool's proposals into ``<cache>/headroom_benchmark/<key>`` (beside, never instead of, the
  trainer's cache) and their hybrids (``local`` mining, 16 per case);
- computes the headroom report of ``nnUNetv2_rndpo_proposals --report`` (pipeline.py ``headroom_report``)
  against the pool's hidden labels: plain TTA Dice, best-of-K, oracle headroom, within-case sd, forwards;
- scores the proposals (and hybrids) with every judge of JUDGES: ``oracle`` (the true Dice), ``weak`` (the
  oracle with noise calibrated to a within-case pair accuracy of 0.70 and size bias 0.05, the study's),
  ``agreement``, ``uncertainty``, ``learned``; reports each judge's within-case pair accuracy, per-case and
  pooled Spearman on the K proposals;
- mines the judge's pairs with each mining of MININGS and reports their count, mean |D|, the share whose chosen
  mask has the higher true Dice, and the share of D (and of its decidable part: voxels where exactly one mask is
  right) where the chosen mask is right.

nnU-Net's plain TTA prediction is made once per seed and shared by every set. Results are kept per seed in
``<output>/headroom_seed<s>.json`` (a rerun skips what is there); ``--results PREFIX`` writes the table over all
seeds to ``PREFIX.json`` and ``PREFIX.md`` (``--table-only``: from those files, measuring nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

# K = 8 each; forwards per tile: 2D (4 flips) / 3D (8 flips) TTA pass + one per non-TTA proposal
SETS = {
    "today: mirror threshold temperature": ("mirror", "threshold", "temperature"),
    "config default: mirror threshold": ("mirror", "threshold"),
    "mirror threshold temperature affine": ("mirror", "threshold", "temperature", "affine"),
    "mirror affine": ("mirror", "affine"),
    "affine": ("affine",),
    "perturb": ("perturb",),
    "perturb affine": ("perturb", "affine"),
}
JUDGES = ("oracle", "weak", "agreement", "uncertainty", "learned")
MININGS = ("top_bottom", "local", "local_fine", "local_by_change", "local_fine_by_change", "local_tiny_by_change")
HYBRIDS_PER_CASE = 16
# hybrid parts of each local mining: the config default (parts of 32-64 voxels) and finer parts (10-20 voxels,
# still >= the objective's default min_region_voxels, so the trainer keeps their pairs)
# (the *_by_change ones split D by change a -> b first: local_split_by_change)
# local_tiny_by_change's parts (3-6 voxels) are below the objective's default min_region_voxels (10): the trainer
# keeps their pairs only with min_region_voxels and local_min_part_voxels lowered to 3
LOCAL_PARTS = {"local": (64, 10, False), "local_fine": (20, 10, False), "local_by_change": (64, 10, True),
               "local_fine_by_change": (20, 10, True), "local_tiny_by_change": (6, 3, True)}
HEADROOM_KEYS = ("headroom/forwards_per_case", "headroom/plain_dice", "headroom/best_of_k",
                 "headroom/oracle_headroom", "headroom/proposal_dice_mean", "headroom/within_case_sd")


def judge_settings(judge: str, learned_file: Path, seed: int):
    from nnunetv2_rndpo.pipeline import JudgeSettings
    from nnunetv2_rndpo.study_protocol import WEAK_SIZE_BIAS, WEAK_TARGET_PAIR_ACCURACY

    if judge == "weak":
        return JudgeSettings("oracle", size_bias=WEAK_SIZE_BIAS, seed=seed, pair_accuracy=WEAK_TARGET_PAIR_ACCURACY)
    return JudgeSettings(judge, seed=seed, learned_judge=str(learned_file) if judge == "learned" else None)


def pair_rows(base, pool, cache, scores: dict, dice: dict, mining: str, seed: int) -> dict[str, float]:
    """Count, mean |D|, mask-level accuracy and region shares of the pairs ``mining`` mines from ``scores``."""
    from nnunetv2_rndpo.mining import MiningParams, mine_pool
    from nnunetv2_rndpo.reliability import region_label_accuracy

    local = mining in LOCAL_PARTS
    params = MiningParams("local" if local else mining, max_pairs_per_case=HYBRIDS_PER_CASE if local else 1)
    pairs, stats = mine_pool(cache, pool.case_ids, scores, params, seed, dice)
    shares = region_label_accuracy(pairs, cache, pool, base.label_manager.ignore_label)
    return {"pairs": len(pairs),
            "region_size_mean": float(np.mean([p.region_size for p in pairs])) if pairs else math.nan,
            "pair_acc": stats.get("pairs/oracle_acc", math.nan),
            "chosen_right_in_region": shares.get("pairs/chosen_right_in_region", math.nan),
            "chosen_right_where_decidable": shares.get("pairs/chosen_right_where_decidable", math.nan),
            "best_verdict_where_decidable": shares.get("pairs/best_verdict_where_decidable", math.nan)}


def measure_seed(args, seed: int) -> dict:
    """Every set × judge × mining of one seed (resumable: ``<output>/headroom_seed<s>.json``)."""
    from nnunetv2_rndpo.study import Study

    study = Study(args.dataset, args.source, "cpu", args.output, seeds=(seed,), device=args.device,
                  labeled=args.labeled)
    study.make_dataset(seed)
    dataset_id = study.dataset_id(seed)
    study.train_base(dataset_id, study.scale.base_trainer)
    os.environ.update(study.env)  # before nnU-Net is imported: nnunetv2.paths reads them once (same -o: same paths)

    from nnunetv2_rndpo.atomic_files import atomic_write_text
    from nnunetv2_rndpo.hybrids import HybridCache, HybridSettings, generate_hybrids
    from nnunetv2_rndpo.judge_training import train_learned_judge
    from nnunetv2_rndpo.mining import MiningParams
    from nnunetv2_rndpo.pipeline import (
        LEARNED_JUDGE_FILE,
        ProposalSettings,
        headroom_report,
        hidden_true_dice,
        load_base_model,
        plain_prediction_dice,
        prepare_pool,
        proposal_cache,
        score_pool,
    )
    from nnunetv2_rndpo.pool import PreprocessedPool
    from nnunetv2_rndpo.proposals import generate_proposals
    from nnunetv2_rndpo.reliability import judge_reliability

    results_file = Path(args.output) / f"headroom_seed{seed}.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {"seed": seed, "sets": {}}

    def save() -> None:
        atomic_write_text(results_file, json.dumps(results, indent=1))

    base = load_base_model(dataset_id, study.spec.configuration, "all", study.scale.base_trainer, device=args.device)
    pool = prepare_pool(base)
    if args.max_cases:
        pool = PreprocessedPool(pool.folder, sorted(pool.cases, key=lambda c: c.case_id)[: args.max_cases])
    if "plain_dice" not in results:
        results["plain_dice"] = plain_prediction_dice(base, pool)
        save()
    plain = results["plain_dice"]
    learned_file = base.fold_folder / LEARNED_JUDGE_FILE
    if "learned" in args.judges and not learned_file.is_file():
        started = time.time()
        today = ProposalSettings(8, SETS["today: mirror threshold temperature"], (), 12345)
        judge = train_learned_judge(base, today, progress=False)
        judge.save(learned_file)
        print(f"learned judge trained in {time.time() - started:.0f} s: {learned_file}", flush=True)
    results["splits"] = {"pool_cases": len(pool.case_ids), "labeled": args.labeled}
    for name, sources in SETS.items():
        if name not in args.sets:
            continue
        record = results["sets"].setdefault(name, {"sources": list(sources), "judges": {}})
        settings = ProposalSettings(args.n, sources, (), 12345, args.sigma)
        cache, specs, extra = proposal_cache(base, settings, "headroom_benchmark")
        if "headroom" not in record:
            started = time.time()
            generate_proposals(cache, pool, base.predictor(), specs, base.label_manager, base.mirror_axes,
                               base.device, progress=False, seed=settings.seed, extra_weights=extra)
            seconds = time.time() - started
            record["headroom"] = headroom_report(base, pool, cache, settings, MiningParams("top_bottom"),
                                                 progress=False, plain_dice=plain)
            record["proposal_seconds"] = round(seconds, 1)
            save()
            print(f"[seed {seed}] {name}: headroom {record['headroom']['headroom/oracle_headroom']:+.4f} "
                  f"({seconds:.0f} s)", flush=True)
        hybrids = {}
        for mining in args.minings:
            if mining in LOCAL_PARTS:
                part, min_part, by_change = LOCAL_PARTS[mining]
                hybrids[mining] = HybridCache(cache, HybridSettings(part, min_part, HYBRIDS_PER_CASE, by_change))
                generate_hybrids(hybrids[mining], pool, progress=False)
        dice = hidden_true_dice(base, pool, cache)
        hybrid_dice = {mining: hidden_true_dice(base, pool, h) for mining, h in hybrids.items()}
        for judge in args.judges:
            row = record["judges"].get(judge, {})
            missing = [m for m in args.minings if m not in row]
            if not missing:
                continue
            started = time.time()
            settings_j = judge_settings(judge, learned_file, 12345)
            if "top_bottom" in missing or "pairwise/accuracy" not in row:
                scores = score_pool(base, pool, cache, settings_j, progress=False)
                row.update({k: v for k, v in judge_reliability(scores, dice).items()
                            if k in ("spearman/pooled", "spearman/per_case", "pairwise/accuracy", "top1/regret")})
                row["top_bottom"] = pair_rows(base, pool, cache, scores, dice, "top_bottom", 12345)
            for mining, h in hybrids.items():
                if mining in missing:
                    hybrid_scores = score_pool(base, pool, h, settings_j, progress=False)
                    row[mining] = pair_rows(base, pool, h, hybrid_scores, hybrid_dice[mining], mining, 12345)
            row["seconds"] = round(row.get("seconds", 0.0) + time.time() - started, 1)
            record["judges"][judge] = row
            save()
            print(f"[seed {seed}] {name} | {judge}: pair acc {row['pairwise/accuracy']:.3f}, per-case ρ "
                  f"{row['spearman/per_case']:.3f}, top_bottom right in D "
                  f"{row['top_bottom']['chosen_right_in_region']:.3f}"
                  + "".join(f", {m} right where decidable {row[m]['chosen_right_where_decidable']:.3f}"
                            for m in LOCAL_PARTS if m in row), flush=True)
    return results


def _mean(values: list[float]) -> float:
    values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _cell(values: list[float], digits: int = 3, signed: bool = False) -> str:
    """Mean over seeds, with the seeds' values in brackets when there are several."""
    mean = _mean(values)
    if math.isnan(mean):
        return "-"
    form = f"{{:{'+' if signed else ''}.{digits}f}}"
    text = form.format(mean)
    return text if len(values) < 2 else text + " (" + " / ".join(form.format(v) for v in values) + ")"


def table(dataset: str, labeled: int, per_seed: list[dict]) -> tuple[dict, str]:
    """The summary over seeds (JSON) and the markdown tables."""
    seeds = [r["seed"] for r in per_seed]
    names = [n for n in SETS if all(n in r["sets"] for r in per_seed)]
    summary: dict = {"dataset": dataset, "labeled": labeled, "seeds": seeds,
                     "pool_cases": [r["splits"]["pool_cases"] for r in per_seed], "sets": {}}
    lines = [f"### {dataset}, {labeled} labels, seeds {', '.join(map(str, seeds))}: proposal sets "
             "(oracle top_bottom pairs)",
             "", "| proposal set | forwards / tile | plain Dice | best-of-8 | oracle headroom | × today's | "
             "within-case sd |"
             " mean \\|D\\| | right in D | right where decidable |", "|---" * 10 + "|"]
    today = "today: mirror threshold temperature"
    for name in names:
        records = [r["sets"][name] for r in per_seed]
        h = {k: [rec["headroom"][k] for rec in records] for k in records[0]["headroom"]}
        ratio = [rec["headroom"]["headroom/oracle_headroom"] / r["sets"][today]["headroom"]["headroom/oracle_headroom"]
                 for rec, r in zip(records, per_seed, strict=True) if today in r["sets"]]
        summary["sets"][name] = {"sources": records[0]["sources"],
                                 "headroom": {k: _mean(v) for k, v in h.items()},
                                 "headroom_vs_today": _mean(ratio),
                                 "judges": {}}
        lines.append(f"| {name} | {int(h['headroom/forwards_per_case'][0])} | {_cell(h['headroom/plain_dice'])} | "
                     f"{_cell(h['headroom/best_of_k'])} | {_cell(h['headroom/oracle_headroom'], signed=True)} | "
                     f"{_cell(ratio, 2)} | {_cell(h['headroom/within_case_sd'])} | "
                     f"{_cell(h['headroom/region_size_mean'], 0)} | {_cell(h['headroom/chosen_right_in_region'])} | "
                     f"{_cell(h['headroom/chosen_right_where_decidable'])} |")
    lines += ["", f"### {dataset}, {labeled} labels: judges on each set (within a case) and their pairs", "",
              "| proposal set | judge | pair acc | per-case ρ | pooled ρ | top_bottom: mean \\|D\\| | right pairs |"
              " right in D | local: pairs | right pairs | right in D | right where decidable | local_fine: pairs |"
              " right in D | right where decidable |", "|---" * 15 + "|"]
    for name in names:
        for judge in JUDGES:
            rows = [r["sets"][name]["judges"][judge] for r in per_seed if judge in r["sets"][name]["judges"]]
            if len(rows) < len(per_seed):
                continue
            tb = {k: [row["top_bottom"][k] for row in rows] for k in rows[0]["top_bottom"]}
            lc = {k: [row["local"][k] for row in rows] for k in rows[0].get("local", {})}
            fine = {k: [row["local_fine"][k] for row in rows] for k in rows[0].get("local_fine", {})
                    if all("local_fine" in row for row in rows)}
            summary["sets"][name]["judges"][judge] = {
                "pairwise/accuracy": _mean([row["pairwise/accuracy"] for row in rows]),
                "spearman/per_case": _mean([row["spearman/per_case"] for row in rows]),
                "spearman/pooled": _mean([row["spearman/pooled"] for row in rows]),
                "top_bottom": {k: _mean(v) for k, v in tb.items()}, "local": {k: _mean(v) for k, v in lc.items()},
                "local_fine": {k: _mean(v) for k, v in fine.items()}}
            local = (f"{_cell(lc['pairs'], 0)} | {_cell(lc['pair_acc'])} | {_cell(lc['chosen_right_in_region'])} | "
                     f"{_cell(lc['chosen_right_where_decidable'])}") if lc else "- | - | - | -"
            local += (f" | {_cell(fine['pairs'], 0)} | {_cell(fine['chosen_right_in_region'])} | "
                      f"{_cell(fine['chosen_right_where_decidable'])}") if fine else " | - | - | -"
            lines.append(f"| {name} | {judge} | {_cell([row['pairwise/accuracy'] for row in rows])} | "
                         f"{_cell([row['spearman/per_case'] for row in rows])} | "
                         f"{_cell([row['spearman/pooled'] for row in rows])} | {_cell(tb['region_size_mean'], 0)} | "
                         f"{_cell(tb['pair_acc'])} | {_cell(tb['chosen_right_in_region'])} | {local} |")
    split = [m for m in LOCAL_PARTS if LOCAL_PARTS[m][2]]
    measured = [(name, judge, rows) for name in names for judge in JUDGES
                for rows in [[r["sets"][name]["judges"].get(judge, {}) for r in per_seed]]
                if all(any(m in row for m in split) for row in rows)]
    if measured:
        lines += ["", f"### {dataset}, {labeled} labels: hybrid parts split by change (local_split_by_change)", "",
                  "Share of the decidable part of D the chosen mask is right on, per local mining (parts of at most "
                  + ", ".join(f"{m} {LOCAL_PARTS[m][0]}" for m in LOCAL_PARTS) + " voxels); the ceiling is the most "
                  "one verdict per pair could be right on (`pairs/best_verdict_where_decidable`, mean over seeds).",
                  "",
                  "| proposal set | judge | " + " | ".join(LOCAL_PARTS) + " |", "|---" * (2 + len(LOCAL_PARTS)) + "|"]
        for name, judge, rows in measured:
            for m in split:
                if all(m in row for row in rows):
                    summary["sets"][name]["judges"][judge][m] = {
                        k: _mean([row[m][k] for row in rows]) for k in rows[0][m]}
            cells = [_cell([row[m]["chosen_right_where_decidable"] for row in rows])
                     + (f", ceiling {_mean([row[m]['best_verdict_where_decidable'] for row in rows]):.3f}"
                        if all("best_verdict_where_decidable" in row[m] for row in rows) else "")
                     if all(m in row for row in rows) else "-" for m in LOCAL_PARTS]
            lines.append(f"| {name} | {judge} | " + " | ".join(cells) + " |")
    return summary, "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="hc18", help="a study dataset: hc18, hippocampus, synthetic")
    parser.add_argument("--source", default=None, help="its source folder")
    parser.add_argument("-o", "--output", required=True, help="work folder (a study folder: nnU-Net folders)")
    parser.add_argument("--labeled", type=int, default=None,
                        help="labeled cases of the base model. Default: the study's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="study seeds (labeled draws). Default: 0")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS), metavar="SET",
                        help="proposal sets (names of SETS). Default: all")
    parser.add_argument("--judges", nargs="+", default=list(JUDGES), choices=JUDGES)
    parser.add_argument("--minings", nargs="+", default=list(MININGS), choices=MININGS)
    parser.add_argument("--sigma", type=float, default=0.2, help="perturb σ. Default: 0.2 (the config default)")
    parser.add_argument("-n", type=int, default=8, help="proposals per case. Default: 8")
    parser.add_argument("--max-cases", type=int, default=None,
                        help="measure on the first N pool cases (sorted ids) only. Default: the whole pool")
    parser.add_argument("--results", default=None, help="write the table over all seeds to PREFIX.json / PREFIX.md")
    parser.add_argument("--table-only", action="store_true",
                        help="measure nothing: build the table from the seeds' headroom_seed<s>.json in -o")
    parser.add_argument("-device", default="cpu")
    args = parser.parse_args()
    if args.table_only:
        per_seed = [json.loads((Path(args.output) / f"headroom_seed{seed}.json").read_text()) for seed in args.seeds]
    else:
        per_seed = [measure_seed(args, seed) for seed in args.seeds]
    from nnunetv2_rndpo.study_protocol import SCALES

    labeled = args.labeled or SCALES["cpu"].num_labeled
    summary, text = table(args.dataset, labeled, per_seed)
    print(text)
    if args.results:
        prefix = Path(args.results)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        summary["per_seed"] = per_seed
        prefix.with_suffix(".json").write_text(json.dumps(summary, indent=1))
        cases = ", ".join(str(r["splits"]["pool_cases"]) for r in per_seed)
        prefix.with_suffix(".md").write_text(
            f"Generated by `python benchmarks/headroom.py --dataset {args.dataset} ... --seeds "
            f"{' '.join(map(str, args.seeds))} --results {args.results}` (the study's CPU base models, {cases} pool "
            "cases, K = 8; measured on a 2-core CPU; the command and findings: docs/toolkit.md, \"Which proposal set, "
            "judge and mining: measured\"). Cells: mean over seeds (the seeds' values in brackets).\n\n" + text)


if __name__ == "__main__":
    main()
