"""The first-epoch dip with and without the learning-rate warm-up, on a finished demo run.

    nnUNetv2_rndpo_demo -o /tmp/demo                      # once: dataset, base model, proposals, judges
    python benchmarks/warmup_drop.py --demo /tmp/demo [--fractions 0 0.05] [-o /tmp/demo/warmup] \
        [--trainers RN-DPO DPO] [--extra '{"sft_batch_fraction": null}']

For each ``warmup_fraction`` and each fine-tuning trainer of the demo (RN-DPO, DPO), one ``nnUNetv2_train``
from the demo's base model with the demo's own fine-tuning config (``OUTDIR/rndpo_config.json``) plus that
fraction, in its own results folder ``-o/results_<fraction>/`` (the demo's results are only read; its
preprocessed data and proposal cache are reused). The test
Dice curve (``eval_every`` 1, row 0 = the base) gives the demo report's numbers: **worst drop** =
d_0 − min_{t≥1} d_t, the epoch of the minimum, and the final Dice (``nnunetv2_rndpo.metrics.curve_summary``).
Everything else (pairs, patches, seeds) is the same in every run, so the difference is the warm-up alone.
The demo's own fine-tuning runs already are the runs at the default fraction (its config does not set
``warmup_fraction``): their curves are read, not recomputed (``--rerun-default`` trains them again, and so
does ``--extra``, config keys added to every run, e.g. the former doubled batch).
Writes ``-o/warmup.json`` after every run (a rerun skips finished runs) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from nnunetv2_rndpo.atomic_files import read_jsonl
from nnunetv2_rndpo.config import RNDPOConfig
from nnunetv2_rndpo.metrics import curve_summary
from nnunetv2_rndpo.paths import nnunet_environment, results_folder, run_logged

TRAINERS = {"RN-DPO": "nnUNetTrainerRNDPO", "DPO": "nnUNetTrainerDPO"}
DEFAULT_FRACTION = RNDPOConfig().warmup_fraction


def demo_layout(demo: Path) -> tuple[str, str, Path]:
    """The demo's dataset id, configuration and base model folder (``nnUNet_results/DatasetXXX/<base>``)."""
    settings = json.loads((demo / "demo_settings.json").read_text())
    (dataset,) = (demo / "nnUNet_results").glob(f"Dataset{settings['dataset_id']:03d}_*")
    (base,) = dataset.glob(f"{settings['base_trainer']}__nnUNetPlans__*")
    if not (base / "fold_0" / "checkpoint_final.pth").is_file():
        raise SystemExit(f"{base} has no fold_0/checkpoint_final.pth: run the demo first "
                         f"(nnUNetv2_rndpo_demo -o {demo})")
    return str(settings["dataset_id"]), base.name.split("__")[-1], base


def curve_result(fold: Path) -> dict:
    """The test-Dice curve of a finished run's fold folder and its summary (worst drop, epoch of the minimum)."""
    curve = [r["eval/dice"] for r in read_jsonl(fold / "rndpo_metrics.jsonl") if "eval/dice" in r]
    after = curve[1:]
    return {"curve": curve, **curve_summary(curve), "min_epoch": 1 + after.index(min(after))}


def demo_run(demo: Path, trainer: str) -> dict | None:
    """The demo's own run of ``trainer`` if it finished (it used the default ``warmup_fraction``)."""
    if "warmup_fraction" in json.loads((demo / "rndpo_config.json").read_text()):
        return None
    _, configuration, base = demo_layout(demo)
    fold = results_folder(base.parent.parent, base.parent.name, trainer, "nnUNetPlans", configuration, 0)
    return {**curve_result(fold), "from": str(fold)} if (fold / "checkpoint_final.pth").is_file() else None


def fine_tune(demo: Path, out: Path, trainer: str, fraction: float, extra: dict) -> dict:
    """One fine-tuning run at ``warmup_fraction`` = ``fraction``; returns its curve and summary."""
    dataset_id, configuration, base = demo_layout(demo)
    results = out / f"results_{fraction:g}"
    (results / base.parent.name).mkdir(parents=True, exist_ok=True)
    link = results / base.parent.name / base.name
    if not link.exists():
        os.symlink(base, link)  # the run finds its start point and writes beside it, not in the demo's folder
    config = {**json.loads((demo / "rndpo_config.json").read_text()), **extra, "warmup_fraction": fraction}
    config_file = out / f"config_{trainer}_{fraction:g}.json"
    config_file.write_text(json.dumps(config, indent=1))
    env = nnunet_environment(demo, {"nnUNet_results": str(results), "nnUNet_rndpo_config": str(config_file)})
    log = out / f"train_{trainer}_{fraction:g}.log"
    start = time.time()
    if run_logged(["nnUNetv2_train", dataset_id, configuration, "0", "-tr", trainer, "-device", "cpu"], env, log):
        raise SystemExit(f"nnUNetv2_train -tr {trainer} (warmup_fraction {fraction}) failed; see {log}")
    fold = results_folder(results, base.parent.name, trainer, "nnUNetPlans", configuration, 0)
    return {**curve_result(fold), "seconds": round(time.time() - start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", required=True, help="a finished nnUNetv2_rndpo_demo OUTDIR")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.05], help="warmup_fraction values")
    parser.add_argument("--trainers", nargs="+", choices=list(TRAINERS), default=list(TRAINERS))
    parser.add_argument("--extra", type=json.loads, default={}, help="JSON object of config keys added to every run")
    parser.add_argument("--rerun-default", action="store_true",
                        help="train the default fraction again instead of reading the demo's own runs")
    parser.add_argument("-o", "--output", help="folder of the runs and warmup.json. Default: DEMO/warmup")
    args = parser.parse_args()
    demo = Path(args.demo).resolve()
    out = Path(args.output).resolve() if args.output else demo / "warmup"
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "warmup.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for fraction in args.fractions:
        for name in args.trainers:
            trainer = TRAINERS[name]
            key = f"{name} | warmup_fraction {fraction:g}"
            if key in results:
                continue
            reuse = not (args.rerun_default or args.extra or fraction != DEFAULT_FRACTION)
            reused = demo_run(demo, trainer) if reuse else None
            print(f"{key}: " + ("the demo's own run" if reused else "fine-tuning"), flush=True)
            results[key] = reused or {**fine_tune(demo, out, trainer, fraction, args.extra), "extra": args.extra}
            results_file.write_text(json.dumps(results, indent=1))
    print(f"\nload average now: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)\n")
    print("| arm | warmup_fraction | d_0 | min d_t (epoch) | worst drop | final | curve |\n"
          "|---|---|---|---|---|---|---|")
    for key, r in results.items():
        name, fraction = key.split(" | warmup_fraction ")
        print(f"| {name} | {fraction} | {r['base']:.4f} | {min(r['curve'][1:]):.4f} ({r['min_epoch']}) | "
              f"{r['worst_drop']:.4f} | {r['final']:.4f} | {' '.join(f'{d:.3f}' for d in r['curve'])} |")


if __name__ == "__main__":
    main()
