"""Headroom of proposal sets on a real dataset at CPU scale: what a perfect judge could gain from each set.

    nice -n 10 python benchmarks/headroom.py --dataset hc18 --source ../shared/data/hc18_fetal_head_us \
        -o /tmp/headroom_hc18 --labeled 5 [--seed 0] [--sigmas 0.1 0.2] [--max-cases 20]

Makes the study's dataset for one seed (``nnUNetv2_rndpo_make_dataset``, the study's split and import
arguments, ``--labeled`` cases), plans it and trains the study's CPU base model (``nnUNetTrainer_cpuBase``,
fold ``all``), unless the folder has them already. Then, in this process, for each proposal set (K = 8):
today's ``mirror threshold`` (the config default) and ``mirror threshold temperature`` (the study's),
``perturb`` at each σ, ``affine``, ``intensity``, and combinations, it generates the pool's proposals into
``<cache>/headroom_benchmark/<key>`` (beside, never instead of, the trainer's cache) and computes the
headroom report of ``nnUNetv2_rndpo_proposals --report`` (nnunetv2_rndpo/pipeline.py ``headroom_report``)
against the pool's hidden labels, with oracle ``top_bottom`` pairs. nnU-Net's plain TTA prediction is made
once and shared by every set.

Prints a table and writes ``<output>/headroom.json`` and ``<output>/headroom.md``: per set the forward
passes per tile, the seconds its proposals took here, plain Dice, best-of-K, oracle headroom, the proposals'
mean Dice and within-case sd, the oracle pairs' mean |D| and the share of D (and of its decidable part)
where the chosen mask is right.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

SETS = (
    ("mirror threshold (config default)", ("mirror", "threshold"), None),
    ("mirror threshold temperature (study)", ("mirror", "threshold", "temperature"), None),
    ("affine", ("affine",), None),
    ("perturb σ={sigma}", ("perturb",), "each"),
    ("mirror threshold temperature affine", ("mirror", "threshold", "temperature", "affine"), None),
    ("mirror threshold perturb affine (σ={sigma})", ("mirror", "threshold", "perturb", "affine"), "best"),
    ("perturb affine (σ={sigma})", ("perturb", "affine"), "best"),
    ("intensity", ("intensity",), None),
)
COLUMNS = ("headroom/forwards_per_case", "seconds", "headroom/plain_dice", "headroom/best_of_k",
           "headroom/oracle_headroom", "headroom/proposal_dice_mean", "headroom/within_case_sd",
           "headroom/region_size_mean", "headroom/chosen_right_in_region", "headroom/chosen_right_where_decidable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="hc18", help="a study dataset: hc18, hippocampus, synthetic")
    parser.add_argument("--source", default=None, help="its source folder")
    parser.add_argument("-o", "--output", required=True, help="work folder (nnU-Net folders, results)")
    parser.add_argument("--labeled", type=int, default=5, help="labeled cases of the base model. Default: 5")
    parser.add_argument("--seed", type=int, default=0, help="the study seed (labeled draw). Default: 0")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.2], help="perturb σ values")
    parser.add_argument("-n", type=int, default=8, help="proposals per case. Default: 8")
    parser.add_argument("--max-cases", type=int, default=None,
                        help="measure on the first N pool cases (sorted ids) only. Default: the whole pool")
    parser.add_argument("-device", default="cpu")
    args = parser.parse_args()

    from nnunetv2_rndpo.study import Study

    study = Study(args.dataset, args.source, "cpu", args.output, seeds=(args.seed,), device=args.device,
                  labeled=args.labeled)
    study.make_dataset(args.seed)
    dataset_id = study.dataset_id(args.seed)
    study.train_base(dataset_id, study.scale.base_trainer)
    os.environ.update(study.env)  # before nnU-Net is imported: nnunetv2.paths reads them once

    from nnunetv2_rndpo.mining import MiningParams
    from nnunetv2_rndpo.pipeline import (
        ProposalSettings,
        headroom_report,
        load_base_model,
        plain_prediction_dice,
        prepare_pool,
        proposal_cache,
    )
    from nnunetv2_rndpo.pool import PreprocessedPool
    from nnunetv2_rndpo.proposals import generate_proposals
    from nnunetv2_rndpo.reliability import format_table

    base = load_base_model(dataset_id, study.spec.configuration, "all", study.scale.base_trainer, device=args.device)
    pool = prepare_pool(base)
    if args.max_cases:
        pool = PreprocessedPool(pool.folder, sorted(pool.cases, key=lambda c: c.case_id)[: args.max_cases])
    start = time.time()
    plain = plain_prediction_dice(base, pool)
    print(f"plain TTA prediction of {len(pool.case_ids)} pool cases: {time.time() - start:.0f} s", flush=True)
    output = Path(args.output)
    results_file = output / "headroom.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}

    def measure(name: str, sources: tuple[str, ...], sigma: float) -> dict:
        if name in results:
            return results[name]
        settings = ProposalSettings(args.n, sources, (), 12345, sigma)
        cache, specs, extra = proposal_cache(base, settings, "headroom_benchmark")
        started = time.time()
        generate_proposals(cache, pool, base.predictor(), specs, base.label_manager, base.mirror_axes, base.device,
                           seed=settings.seed, extra_weights=extra)
        seconds = time.time() - started
        report = headroom_report(base, pool, cache, settings, MiningParams("top_bottom"), plain_dice=plain)
        report.update(seconds=round(seconds, 1), sources=list(sources), perturb_sigma=sigma)
        print(format_table({k: v for k, v in report.items() if k != "sources"}, name), flush=True)
        results[name] = report
        output.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(results, indent=1))
        return report

    sigmas = list(args.sigmas)
    for title, sources, which in SETS:
        if which == "each":
            for sigma in sigmas:
                measure(title.format(sigma=sigma), sources, sigma)
        elif which == "best":  # the σ with the largest oracle headroom alone
            best = max(sigmas, key=lambda s: results[f"perturb σ={s}"]["headroom/oracle_headroom"])
            measure(title.format(sigma=best), sources, best)
        else:
            measure(title, sources, 0.1)
    lines = [f"Headroom of proposal sets: {args.dataset}, {args.labeled} labels, seed {args.seed}, "
             f"{len(pool.case_ids)} pool cases, K = {args.n}, oracle top_bottom pairs "
             "(benchmarks/headroom.py).", "",
             "| proposal set | " + " | ".join(c.removeprefix("headroom/") for c in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for name, report in results.items():
        cells = [f"{report[c]:.4f}" if isinstance(report[c], float) else str(report[c]) for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (output / "headroom.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
