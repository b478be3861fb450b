"""The ``nnUNetv2_rndpo_*`` commands: thin argparse wrappers over :mod:`nnunetv2_rndpo.pipeline`.

They read and write the same cache as ``nnUNetv2_train ... -tr nnUNetTrainerRNDPO`` (docs/toolkit.md)::

    nnUNetv2_rndpo_proposals -d 4 -c 3d_fullres -f 0 [-num_parts 2 -part_id 0]
    nnUNetv2_rndpo_judge     -d 4 -c 3d_fullres -f 0 --judge agreement [--report]
    nnUNetv2_rndpo_mine      -d 4 -c 3d_fullres -f 0 --scores scores.csv --mining margin --tau 0.02
    nnUNetv2_rndpo_train_judge -d 4 -c 3d_fullres -f 0
    nnUNetv2_rndpo_clean     -d 4 [--delete]
    nnUNetv2_rndpo_make_dataset -i SRC -d ID --labeled N --test M   (over :mod:`nnunetv2_rndpo.datasets`)

Also runnable as ``python -m nnunetv2_rndpo.commands {proposals,judge,mine,train_judge,clean,make_dataset} ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from nnunetv2_rndpo.config import BAD_CASE_ACTIONS, RNDPOConfig
from nnunetv2_rndpo.datasets import MASK_FOLDERS
from nnunetv2_rndpo.judges import JUDGES, SCORE_NORMALIZATIONS
from nnunetv2_rndpo.mining import MININGS
from nnunetv2_rndpo.proposals import PROPOSAL_SOURCES

DEFAULTS = RNDPOConfig()


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _add_base_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that select the base model and its proposals (identical in every command)."""
    group = parser.add_argument_group("base model and proposals (must match nnUNetv2_rndpo_proposals)")
    group.add_argument("-d", required=True, help="dataset name or id, e.g. 4 or Dataset004_Hippocampus")
    group.add_argument("-c", required=True, help="configuration, e.g. 3d_fullres or 2d")
    group.add_argument("-f", nargs="+", default=["0"],
                       help="fold of the base model; further folds add their models as 'model' proposals. Default: 0")
    group.add_argument("-tr", default=DEFAULTS.base_trainer,
                       help=f"base model's trainer. Default: {DEFAULTS.base_trainer}")
    group.add_argument("-p", default="nnUNetPlans", help="plans identifier. Default: nnUNetPlans")
    group.add_argument("-chk", default="checkpoint_final.pth", help="base checkpoint. Default: checkpoint_final.pth")
    group.add_argument("-n", type=int, default=DEFAULTS.num_proposals,
                       help=f"proposals per case (num_proposals). Default: {DEFAULTS.num_proposals}")
    group.add_argument("--sources", nargs="+", default=list(DEFAULTS.proposal_sources), choices=PROPOSAL_SOURCES,
                       help=f"proposal sources (proposal_sources). Default: {' '.join(DEFAULTS.proposal_sources)}")
    group.add_argument("--models", nargs="*", default=[],
                       help="extra models 'FOLD/CHECKPOINT' for the 'model' source, e.g. 0/checkpoint_best.pth")
    group.add_argument("--perturb-sigma", type=float, default=DEFAULTS.perturb_sigma,
                       help="'perturb' source: σ of the weight noise w·(1 + σ·ε) (perturb_sigma). "
                            f"Default: {DEFAULTS.perturb_sigma}")
    group.add_argument("--seed", type=int, default=DEFAULTS.seed, help=f"seed. Default: {DEFAULTS.seed}")
    group.add_argument("--hybrids", type=int, default=0,
                       help="hybrids per case for 'local' mining (a proposal with one part of its disagreement with "
                            "another swapped in; indices after the -n proposals). Default: 0 (none)")
    group.add_argument("--local-part-voxels", type=int, default=DEFAULTS.local_part_voxels,
                       help=f"largest part a hybrid swaps (local_part_voxels). Default: {DEFAULTS.local_part_voxels}")
    group.add_argument("--local-split-by-change", action="store_true",
                       help="split the disagreement region by change (label a -> b) before its parts "
                            "(local_split_by_change)")
    group.add_argument("--local-min-part-voxels", type=int, default=DEFAULTS.local_min_part_voxels,
                       help="smaller parts make no hybrid (local_min_part_voxels). "
                            f"Default: {DEFAULTS.local_min_part_voxels}")
    group.add_argument("--unlabeled-dir", default=None,
                       help="folder of unlabeled images. Default: $nnUNet_raw/DatasetXXX/imagesUnlabeled")
    group.add_argument("--on-bad-case", default=DEFAULTS.on_bad_case, choices=BAD_CASE_ACTIONS,
                       help="a pool case that cannot be read or does not match the dataset: stop with an error, or "
                            f"skip it with a warning (on_bad_case). Default: {DEFAULTS.on_bad_case}")
    group.add_argument("-device", default=None, choices=("cpu", "cuda", "mps"),
                       help="device. Default: cuda if available, else cpu")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def _fold(value: str) -> int | str:
    return value if value == "all" else int(value)


def _load(args):
    """``(base model, proposal settings)`` from the shared flags."""
    from nnunetv2_rndpo.hybrids import HybridSettings
    from nnunetv2_rndpo.pipeline import ProposalSettings, load_base_model

    if args.n < 2:
        raise ValueError(f"-n must be >= 2 (a pair needs two proposals), got {args.n}")
    if args.hybrids < 0:
        raise ValueError(f"--hybrids must be >= 0, got {args.hybrids}")
    hybrids = (HybridSettings(args.local_part_voxels, args.local_min_part_voxels, args.hybrids,
                              args.local_split_by_change) if args.hybrids else None)
    if args.perturb_sigma <= 0:
        raise ValueError(f"--perturb-sigma must be > 0, got {args.perturb_sigma}")
    folds = [_fold(f) for f in args.f]
    models = list(args.models) + [f"{f}/{args.chk}" for f in folds[1:]]
    sources = list(dict.fromkeys(args.sources + (["model"] if models else [])))
    if "model" in sources and not models:
        raise ValueError("--sources model needs models: add folds (-f 0 1 2) or --models 0/checkpoint_best.pth")
    base = load_base_model(args.d, args.c, folds[0], args.tr, args.p, args.chk, args.device or _default_device())
    return base, ProposalSettings(args.n, tuple(sources), tuple(models), args.seed, args.perturb_sigma, hybrids)


def _trainer_config(settings, **extra) -> str:
    keys = {"num_proposals": settings.num_proposals, "proposal_sources": list(settings.sources), "seed": settings.seed}
    if settings.models:
        keys["proposal_models"] = list(settings.models)
    if settings.hybrids:
        keys.update({"mining": "local", "mining_max_pairs_per_case": settings.hybrids.per_case,
                     "local_part_voxels": settings.hybrids.part_voxels,
                     "local_min_part_voxels": settings.hybrids.min_part_voxels,
                     "local_split_by_change": settings.hybrids.by_change})
    if "perturb" in settings.sources:
        keys["perturb_sigma"] = settings.perturb_sigma
    return json.dumps({**keys, **extra})


# ------------------------------------------------------------------------------------------- proposals


def proposals_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_rndpo_proposals",
        description="Generate and cache K proposals per unlabeled case with the base model (the cache the "
                    "RN-DPO trainer reads). A rerun skips finished cases.")
    _add_base_arguments(parser)
    parser.add_argument("-num_parts", type=int, default=1,
                        help="split the pool into this many parts (as nnUNetv2_predict)")
    parser.add_argument("-part_id", type=int, default=0, help="which part this run does: cases[part_id::num_parts]")
    parser.add_argument("--report", action="store_true",
                        help="headroom of the proposals against the hidden labels in labelsUnlabeled/: plain TTA "
                             "prediction vs best-of-K, within-case spread, oracle pairs (printed, saved as "
                             "rndpo_headroom_<key>.report.json in the base model's fold folder; needs every part done)")
    parser.add_argument("--report-labeled", action="store_true",
                        help="the same headroom on the fold's labeled validation cases (no hidden labels needed), "
                             "saved as rndpo_headroom_<key>.labeled_report.json in the base model's fold folder")
    parser.add_argument("--mining", default=DEFAULTS.mining, choices=MININGS,
                        help=f"strategy of the oracle pairs in the headroom reports. Default: {DEFAULTS.mining}")
    parser.add_argument("--tau", type=float, default=DEFAULTS.mining_tau, help="'margin' mining's tau in the reports")
    return parser


def run_proposals(args: argparse.Namespace) -> Path:
    """Fills this part of the proposal cache; returns the cache folder."""
    from nnunetv2_rndpo.pipeline import ensure_proposals, prepare_pool, split_cases

    split_cases([], args.num_parts, args.part_id)  # validates the flags before any work
    base, settings = _load(args)
    progress = not args.quiet
    pool = prepare_pool(base, args.unlabeled_dir, args.num_parts, args.part_id, progress, args.on_bad_case)
    if args.report and not pool.has_labels:
        raise FileNotFoundError("--report needs hidden ground truth for every pool case in labelsUnlabeled/ "
                                "(CASE<file_ending>); without it use --report-labeled")
    part = split_cases(pool.case_ids, args.num_parts, args.part_id)
    cache = ensure_proposals(base, pool, settings, part, progress)
    done = sum(cache.has_case(c, pool.source_digest(c)) for c in pool.case_ids)
    print(f"proposals: {done}/{len(pool.case_ids)} pool cases in {cache.folder}"
          + ("" if cache.is_complete else " (other parts still missing)"))
    print(f"the trainer reuses them with this in $nnUNet_rndpo_config: {_trainer_config(settings)}"
          + ("" if args.chk == "checkpoint_final.pth" else f' and "base_checkpoint": "{base.fold_folder / args.chk}"'))
    from nnunetv2_rndpo.mining import MiningParams

    mining = MiningParams(args.mining, tau=args.tau)
    if args.report:
        write_headroom_report(base.fold_folder / f"rndpo_headroom_{cache.folder.name}.report.json", base, pool, cache,
                              settings, mining, progress,
                              f"headroom of {' '.join(settings.sources)} (K={settings.num_proposals}) on the pool")
    if args.report_labeled:
        from nnunetv2_rndpo.pipeline import labeled_proposals

        labeled_pool, labeled_cache = labeled_proposals(base, settings, progress)
        write_headroom_report(base.fold_folder / f"rndpo_headroom_{labeled_cache.folder.name}.labeled_report.json",
                              base, labeled_pool,
                              labeled_cache, settings, mining, progress,
                              f"headroom of {' '.join(settings.sources)} (K={settings.num_proposals}) on the "
                              f"labeled validation cases of fold {base.fold}")
    return cache.folder


def write_headroom_report(path: Path, base, pool, cache, settings, mining, progress: bool, title: str) -> Path:
    """Prints the proposals' headroom table and saves it as JSON (keys ``headroom/*``)."""
    from nnunetv2_rndpo.atomic_files import atomic_write_text
    from nnunetv2_rndpo.pipeline import headroom_report
    from nnunetv2_rndpo.reliability import format_table, report_json

    report = headroom_report(base, pool, cache, settings, mining, progress)
    print(format_table(report, title))
    atomic_write_text(path, report_json(report))
    print(f"headroom report saved to {path}")
    return path


# ------------------------------------------------------------------------------------------- judge


def judge_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_rndpo_judge",
        description="Score every cached proposal (CSV case_id,proposal,score: the format the trainer's "
                    "judge='external' reads) and optionally report the judge's reliability against hidden labels.")
    _add_base_arguments(parser)
    parser.add_argument("--judge", required=True, choices=JUDGES, help="which judge (docs/toolkit.md)")
    parser.add_argument("--judge-sigma", type=float, default=0.0, help="oracle: Gaussian noise on Dice")
    parser.add_argument("--size-bias", type=float, default=0.0, help="oracle: size bias B (> 0 prefers larger masks)")
    parser.add_argument("--pair-accuracy", type=float, default=None,
                        help="oracle: calibrate σ so that the judge orders this share of within-case pairs right "
                             "(with --size-bias), e.g. 0.7 (judge_pair_accuracy); instead of --judge-sigma")
    parser.add_argument("--scores", default=None, help="external: the QC system's CSV to validate and normalise")
    parser.add_argument("--learned-judge", default=None,
                        help="learned: judge file. Default: rndpo_judge.pth beside the base checkpoint")
    parser.add_argument("--normalize", default="none", choices=SCORE_NORMALIZATIONS,
                        help="per-case rescaling of the scores (order unchanged). Default: none")
    parser.add_argument("-o", default=None,
                        help="output CSV. Default: <base fold folder>/rndpo_scores_<judge>.csv (per fold, never "
                             "cleaned)")
    parser.add_argument("--report", action="store_true",
                        help="reliability vs hidden labels in labelsUnlabeled/ (printed, saved as "
                             "<output>.report.json)")
    parser.add_argument("--report-labeled", action="store_true",
                        help="reliability on the fold's labeled validation cases (proposals by this fold's base model; "
                             "no hidden labels needed), saved as <output>.labeled_report.json, with the ε that "
                             "label_smoothing 'auto' would use")
    parser.add_argument("--mining", default=DEFAULTS.mining, choices=MININGS,
                        help="strategy whose pair accuracy sets the flip rate in --report-labeled")
    parser.add_argument("--tau", type=float, default=DEFAULTS.mining_tau, help="'margin' mining's tau in the reports")
    return parser


def run_judge(args: argparse.Namespace) -> Path:
    """Writes the scores CSV (and the report); returns the CSV's path."""
    from nnunetv2_rndpo.judges import normalize_scores, write_scores_csv
    from nnunetv2_rndpo.mining import MiningParams
    from nnunetv2_rndpo.pipeline import JudgeSettings, hidden_true_dice, open_pool, score_pool

    if args.judge == "external" and not args.scores:
        raise ValueError("--judge external needs --scores FILE (CSV case_id,proposal,score from your QC system)")
    if args.judge_sigma < 0:
        raise ValueError(f"--judge-sigma must be >= 0, got {args.judge_sigma}")
    if args.pair_accuracy is not None and not (0.5 < args.pair_accuracy <= 1 and args.judge_sigma == 0):
        raise ValueError(f"--pair-accuracy must be in (0.5, 1] and replaces --judge-sigma, got {args.pair_accuracy} "
                         f"with --judge-sigma {args.judge_sigma}")
    base, settings = _load(args)
    pool, cache = open_pool(base, settings, args.unlabeled_dir, progress=not args.quiet, on_bad_case=args.on_bad_case)
    with cache.remembering():
        dice = hidden_true_dice(base, pool, cache) if args.report or args.judge == "oracle" else None
        if args.report and dice is None:
            raise FileNotFoundError("--report needs hidden ground truth for every pool case in labelsUnlabeled/ "
                                    "(CASE<file_ending>); without it, drop --report")
        judge = JudgeSettings(args.judge, args.judge_sigma, args.size_bias, args.scores, args.learned_judge, args.seed,
                              args.pair_accuracy)
        scores = normalize_scores(score_pool(base, pool, cache, judge, not args.quiet, dice), args.normalize)
        output = Path(args.o) if args.o else base.fold_folder / f"rndpo_scores_{args.judge}.csv"
        output.parent.mkdir(parents=True, exist_ok=True)
        write_scores_csv(output, scores)
        print(f"scores of {len(scores)} cases written to {output}"
              + (" (proposals, then their hybrids)" if settings.hybrids else ""))
        if args.report:
            extra = {}
            if args.judge == "oracle":
                from nnunetv2_rndpo.pipeline import oracle_sigma

                extra = {"judge/sigma": oracle_sigma(base, pool, cache, judge, dice), "judge/size_bias": args.size_bias}
                if args.pair_accuracy is not None:
                    extra["judge/target_pair_accuracy"] = args.pair_accuracy
            elif args.judge == "learned":
                extra = {"judge/learned_model": learned_model(args.learned_judge, base)}
            write_judge_report(output, scores, dice, cache, args.seed, args.tau, f"judge {args.judge} reliability",
                               extra)
    if args.report_labeled:
        write_labeled_report(output, base, settings, judge, MiningParams(args.mining, tau=args.tau), not args.quiet)
    return output


def learned_model(path: str | None, base) -> str:
    """The model (``JudgeTraining.model``) of the learned judge in ``path`` (None: the fold's default file)."""
    from nnunetv2_rndpo.learned_judge import load_learned_judge
    from nnunetv2_rndpo.pipeline import LEARNED_JUDGE_FILE
    from nnunetv2_rndpo.profile_judge import ProfileJudge

    judge = load_learned_judge(path or base.fold_folder / LEARNED_JUDGE_FILE)
    return "boundary_profile" if isinstance(judge, ProfileJudge) else "ranking_net"


def write_labeled_report(scores_file: Path, base, settings, judge, mining, progress: bool) -> Path:
    """Prints the judge's reliability on the fold's labeled validation cases and saves it beside the scores."""
    from nnunetv2_rndpo.atomic_files import atomic_write_text
    from nnunetv2_rndpo.pipeline import labeled_reliability
    from nnunetv2_rndpo.reliability import format_table, report_json

    report = labeled_reliability(base, settings, judge, mining, progress)
    print(format_table(report, f"judge {judge.judge} on the labeled validation cases of fold {base.fold}"))
    print(f'label_smoothing "auto" would use eps = {report["labeled/flip_rate"]:.4f} (mining {mining.strategy})')
    path = scores_file.with_name(scores_file.name.removesuffix(".csv") + ".labeled_report.json")
    atomic_write_text(path, report_json(report))
    print(f"labeled report saved to {path}")
    return path


def write_judge_report(scores_file: Path, scores, dice, cache, seed: int, tau: float, title: str,
                 extra: dict | None = None) -> Path:
    """Prints the reliability table (with ``extra`` keys, e.g. the oracle's σ) and saves it as
    ``<scores>.report.json`` (ranking metrics over the base proposals; with hybrids also ``mining/local/*``)."""
    from nnunetv2_rndpo.atomic_files import atomic_write_text
    from nnunetv2_rndpo.hybrids import base_scores
    from nnunetv2_rndpo.reliability import format_table, judge_reliability, mining_reliability, report_json

    report = {**judge_reliability(base_scores(cache, scores), base_scores(cache, dice)),
              **mining_reliability(cache, scores, dice, seed, tau), **(extra or {})}
    print(format_table(report, title))
    path = scores_file.with_name(scores_file.name.removesuffix(".csv") + ".report.json")
    atomic_write_text(path, report_json(report))
    print(f"report saved to {path}")
    return path


# ------------------------------------------------------------------------------------------- mine


def mine_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_rndpo_mine",
        description="Mine preference pairs from a scores CSV into the pairs file the trainer reads "
                    "(config key pairs_file) and print their statistics.")
    _add_base_arguments(parser)
    parser.add_argument("--scores", required=True, help="CSV case_id,proposal,score (nnUNetv2_rndpo_judge or your QC)")
    parser.add_argument("--mining", default=DEFAULTS.mining, choices=MININGS,
                        help=f"strategy. Default: {DEFAULTS.mining}")
    parser.add_argument("--tau", type=float, default=DEFAULTS.mining_tau, help="'margin': minimum score gap")
    parser.add_argument("--min-margin", type=float, default=DEFAULTS.mining_min_margin,
                        help="drop pairs with a smaller judge margin")
    parser.add_argument("--min-region", type=int, default=DEFAULTS.mining_min_region,
                        help="drop pairs with smaller |D| (voxels)")
    parser.add_argument("--max-region", type=int, default=None, help="drop pairs with larger |D| (voxels)")
    parser.add_argument("--max-pairs-per-case", type=int, default=None,
                        help="cap per case. Default: --hybrids for --mining local, else "
                             f"{DEFAULTS.mining_max_pairs_per_case}")
    parser.add_argument("-o", default=None,
                        help="output JSON. Default: <base fold folder>/rndpo_pairs_<mining>.json (per fold, never "
                             "cleaned)")
    return parser


def run_mine(args: argparse.Namespace) -> Path:
    """Writes the pairs file; returns its path."""
    from nnunetv2_rndpo.atomic_files import atomic_write_text
    from nnunetv2_rndpo.judges import read_external_scores
    from nnunetv2_rndpo.mining import MiningParams, mine_pool, pairs_document
    from nnunetv2_rndpo.pipeline import hidden_true_dice, open_pool
    from nnunetv2_rndpo.reliability import format_table, region_label_accuracy

    if (args.mining == "local") != bool(args.hybrids):
        raise ValueError("--mining local pairs proposals with their hybrids and needs --hybrids N (the hybrids per "
                         "case, as given to nnUNetv2_rndpo_judge when it scored them); the other strategies mine the "
                         f"proposals alone: drop --hybrids (got --mining {args.mining} --hybrids {args.hybrids})")
    max_pairs = args.max_pairs_per_case
    if max_pairs is None:
        max_pairs = args.hybrids if args.mining == "local" else DEFAULTS.mining_max_pairs_per_case
    params = MiningParams(args.mining, args.tau, args.min_margin, args.min_region, args.max_region, max_pairs)
    base, settings = _load(args)
    pool, cache = open_pool(base, settings, args.unlabeled_dir, progress=not args.quiet, on_bad_case=args.on_bad_case)
    with cache.remembering():
        scores = read_external_scores(args.scores, {c: len(cache.masks(c)) for c in pool.case_ids})
        pairs, stats = mine_pool(cache, pool.case_ids, scores, params, args.seed, hidden_true_dice(base, pool, cache))
        if not pairs:
            raise ValueError(f"no pairs: every case's candidate pairs were identical or filtered out ({params}); "
                             "relax --min-margin/--min-region/--max-region or choose another --mining")
        if pool.has_labels:
            stats.update(region_label_accuracy(pairs, cache, pool, base.label_manager.ignore_label))
    output = Path(args.o) if args.o else base.fold_folder / f"rndpo_pairs_{args.mining}.json"
    judge_metrics = {k: stats[k] for k in ("judge/margin_mean", "pairs/identical_cases", "judge/oracle_pair_acc")
                     if k in stats}
    document = {**pairs_document(pairs, judge_metrics, cache), "statistics": stats, "mining": vars(params)}
    atomic_write_text(output, json.dumps(document, indent=1))
    print(format_table(stats, f"{len(pairs)} pairs mined with {args.mining}"))
    print(f"pairs written to {output}\nthe trainer uses them with this in $nnUNet_rndpo_config: "
          f"{_trainer_config(settings, pairs_file=str(output))}")
    return output


# ------------------------------------------------------------------------------------------- train_judge


def train_judge_parser() -> argparse.ArgumentParser:
    from nnunetv2_rndpo.learned_judge import JUDGE_MODELS, RANKING_TARGETS, TRAINING_MASKS, JudgeTraining

    default = JudgeTraining()
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_rndpo_train_judge",
        description="Train the learned judge, which ranks the masks of one case (a linear ranker on the image "
                    "across each mask's boundary, or a small convolutional net on full-resolution crops of where "
                    "they differ), on the fold's labeled training cases: their labels moved and corrupted, the base "
                    "model's proposals for them and weight-noise predictions. Prints its reliability on the fold's "
                    "validation cases; saved beside the base model.")
    _add_base_arguments(parser)
    parser.add_argument("--model", choices=JUDGE_MODELS, default=default.model,
                        help="boundary_profile: intensity and edge strength at 1-3 voxels inside and outside each "
                             "mask's boundary near where the masks differ, weighted by a linear ranker (seconds to "
                             "fit; --epochs, --samples-per-case, --crop-size, --width do not apply); ranking_net: "
                             f"the convolutional net on crops (docs/toolkit.md, 'The learned judge'). Default: "
                             f"{default.model}")
    parser.add_argument("--epochs", type=int, default=default.epochs,
                        help=f"passes over the training cases, one ranking step per case; more = slower, better "
                             f"fitted. Default: {default.epochs}")
    parser.add_argument("--samples-per-case", type=int, default=default.masks_per_step,
                        help=f"masks of one case ranked together per step. Default: {default.masks_per_step}")
    parser.add_argument("--crop-size", type=int, default=None,
                        help="crop side in voxels (full resolution); larger sees more context, costs more. "
                             "Default: 128 in 2D, 24 in 3D")
    parser.add_argument("--width", type=int, default=default.width,
                        help=f"channels of the network's first layers; larger = slower. Default: {default.width}")
    parser.add_argument("--training-masks", choices=TRAINING_MASKS, default=default.masks,
                        help="what the ranking steps draw masks from: the base model's predictions of the training "
                             "cases (in-sample: their errors can lean one way, docs/toolkit.md), the label alone "
                             "(moved and corrupted; no predictions computed), or cross_validation: each training "
                             "case's proposals by the trained cross-validation fold (fold_0 … fold_4) that held it "
                             f"out. Default: {default.masks}")
    parser.add_argument("--targets", choices=RANKING_TARGETS, default=default.targets,
                        help="what a training step orders its masks by: their true Dice in the crop, or size_free: "
                             "that Dice with its least-squares line in mask size taken out, so that the judge cannot "
                             f"lower its loss by reading mask size alone (docs/toolkit.md). Default: {default.targets}")
    parser.add_argument("--weight-noise", type=float, nargs="*", default=list(default.weight_noise),
                        help="σ of the multiplicative Gaussian weight noise, one base-model prediction per value and "
                             "training case (none: no such masks; --training-masks predictions only). Default: "
                             f"{' '.join(map(str, default.weight_noise))}")
    parser.add_argument("--with-proposals", action="store_true",
                        help="also train on the fold's validation cases (their val/* metrics are then no longer "
                             "held out)")
    parser.add_argument("-o", default=None, help="output file. Default: <base fold folder>/rndpo_judge.pth")
    return parser


def run_train_judge(args: argparse.Namespace) -> Path:
    """Trains and saves the learned judge; returns its path."""
    from nnunetv2_rndpo.judge_training import train_learned_judge
    from nnunetv2_rndpo.learned_judge import JudgeTraining
    from nnunetv2_rndpo.pipeline import LEARNED_JUDGE_FILE
    from nnunetv2_rndpo.reliability import format_table

    training = JudgeTraining(args.epochs, args.samples_per_case, args.crop_size, args.width,
                             tuple(args.weight_noise), args.training_masks, args.targets, seed=args.seed,
                             model=args.model)
    base, settings = _load(args)
    output = Path(args.o) if args.o else base.fold_folder / LEARNED_JUDGE_FILE
    require_writable(output)  # before the training, not after it
    judge = train_learned_judge(base, settings, training, progress=not args.quiet,
                                with_validation_cases=args.with_proposals)
    print(format_table(judge.metrics, "learned judge (val = the base model's proposals for the fold's validation "
                                      "cases; val/agreement = the agreement judge on the same proposals)"))
    save_learned_judge(judge, output)
    print(f"learned judge saved to {output}")
    return output


def require_writable(path: Path) -> None:
    """Checks that ``path`` can be written (its folder is created), by writing and removing its temporary file.

    Raises:
        PermissionError: the folder cannot be created or written; the message names it and ``-o``.
    """
    probe = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"cannot write {path} ({type(error).__name__}: {error.strerror or error}); choose "
                              "a writable file with -o (then point learned_judge / --learned-judge at it)") from None


def save_learned_judge(judge, output: Path) -> None:
    """Saves a trained judge; if ``output`` cannot be written after all, saves it in the temporary folder
    instead and raises an error naming both, so the training is not lost.

    Raises:
        PermissionError: ``output`` could not be written (the judge is then in the file the message names).
    """
    import tempfile

    try:
        judge.save(output)
    except OSError as error:
        rescue = Path(tempfile.gettempdir()) / f"{output.stem}_{os.getpid()}{output.suffix}"
        judge.save(rescue)
        raise PermissionError(
            f"cannot write {output} ({type(error).__name__}: {error.strerror or error}); the trained judge was saved "
            f"to {rescue} instead: move it to {output}, or point learned_judge / --learned-judge at it") from None
# ------------------------------------------------------------------------------------------- clean


def clean_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_rndpo_clean",
        description="List the proposal caches of a dataset (every fold, base model and setting keeps its own) and, "
                    "with --delete, remove those no pairs file under $nnUNet_results refers to. Nothing is deleted "
                    "while a preference run of the dataset is in progress.")
    parser.add_argument("-d", required=True, help="dataset name or id, e.g. 4 or Dataset004_Hippocampus")
    parser.add_argument("--delete", action="store_true", help="remove the removable caches (default: only list them)")
    return parser


def run_clean(args: argparse.Namespace) -> list[Path]:
    """Lists (and with ``--delete`` removes) the dataset's unreferenced proposal caches."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunetv2_rndpo.cleanup import clean

    if nnUNet_preprocessed is None or nnUNet_results is None:
        raise RuntimeError("nnUNet_preprocessed and nnUNet_results must be set (the caches and the models that refer "
                           "to them)")
    return clean(Path(nnUNet_preprocessed), Path(nnUNet_results), maybe_convert_to_dataset_name(args.d), args.delete)


# ------------------------------------------------------------------------------------------- make_dataset


def make_dataset_parser() -> argparse.ArgumentParser:
    """``nnUNetv2_rndpo_make_dataset``'s flags."""
    p = argparse.ArgumentParser(
        prog="nnUNetv2_rndpo_make_dataset",
        description="Make a label-budget study dataset in $nnUNet_raw: N labeled cases (imagesTr/labelsTr), an "
                    "unlabeled pool (imagesUnlabeled/, hidden labels in labelsUnlabeled/), M test cases "
                    "(imagesTs/labelsTs), dataset.json and the split manifest rndpo_splits.json. From an MSD folder "
                    "(imagesTr/, labelsTr/), a 2D PNG folder with masks, or the built-in synthetic generator.")
    p.add_argument("-i", dest="source", default=None, help="source folder (MSD layout or PNG images + masks)")
    p.add_argument("--synthetic", choices=("2d", "3d"), default=None,
                   help="generate the built-in synthetic dataset instead")
    p.add_argument("-d", dest="dataset_id", type=int, required=True, help="nnU-Net dataset id (1 … 999)")
    p.add_argument("-n", dest="name", default=None,
                   help="dataset name. Default: the source folder's name, or Synthetic2D/3D")
    p.add_argument("-o", dest="raw_root", default=None, help="nnU-Net raw folder. Default: $nnUNet_raw")
    p.add_argument("--labeled", type=int, required=True, help="N: labeled cases for the base model")
    p.add_argument("--test", type=int, required=True, help="M: held-out test cases")
    p.add_argument("--unlabeled", "--pool", dest="unlabeled", type=int, default=None,
                   help="K: pool size. Default: every remaining case (synthetic: 3·N)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (and of the synthetic data). Default: 0")
    p.add_argument("--validation", type=int, default=0,
                   help="V: cases with labels held out of the pool into imagesVal/labelsVal, on which hyperparameters "
                        "are chosen (the fine-tuning runs' eval/val_dice); never mined, never tested. Default: 0")
    p.add_argument("--test-seed", type=int, default=None,
                   help="seed of the test split only, so that one test set serves every --seed. Default: --seed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset with this id")
    png = p.add_argument_group("2D PNG folders")
    png.add_argument("--images-dir", default=None, help="image subfolder. Default: images/ if it exists, else -i")
    png.add_argument("--masks-dir", "--masks", dest="masks_dir", default=None,
                     help=f"mask subfolder. Default: the first of {', '.join(MASK_FOLDERS)}")
    png.add_argument("--mask-suffix", default=None,
                     help="mask name = image name + suffix + .png. Default: the first of '', _mask, _Annotation, _seg, "
                          "_label that exists")
    png.add_argument("--resize", type=float, nargs="+", metavar="H W | F", default=None,
                     help="resize images (bilinear) and masks (nearest) to H×W pixels, or by one factor F (e.g. 0.25)")
    group = p.add_argument_group("group-aware splitting (cases of one group never straddle splits)")
    group.add_argument("--group-regex", default=None,
                       help=r"group = first capture of this regex in the name, e.g. '^(\d{3})'")
    group.add_argument("--group-chars", type=int, default=None, help="group = the first N characters of the name")
    return p


def _resize_argument(values: list[float] | None) -> tuple[int, int] | float | None:
    """``--resize H W`` (pixels) or ``--resize F`` (factor)."""
    if values is None:
        return None
    if len(values) == 1 and 0 < values[0]:
        return float(values[0])
    if len(values) == 2 and all(v >= 1 and v == int(v) for v in values):
        return int(values[0]), int(values[1])
    raise ValueError(f"--resize takes H W (whole pixels) or one factor F > 0, got {values}")


def run_make_dataset(args: argparse.Namespace) -> Path:
    """Makes the dataset; returns its folder."""
    from nnunetv2_rndpo.datasets import default_dataset_name, make_dataset, read_manifest
    from nnunetv2_rndpo.synthetic import make_synthetic_dataset

    raw_root = args.raw_root or os.environ.get("nnUNet_raw")
    if not raw_root:
        raise ValueError("no output folder: set $nnUNet_raw or pass -o RAW_FOLDER")
    if (args.source is None) == (args.synthetic is None):
        raise ValueError("give exactly one of -i SRC and --synthetic 2d|3d")
    resize = _resize_argument(args.resize)
    if args.synthetic:
        folder = make_synthetic_dataset(raw_root, args.dataset_id, dim=int(args.synthetic[0]), num_labeled=args.labeled,
                                        num_unlabeled=args.unlabeled or 3 * args.labeled, num_test=args.test,
                                        seed=args.seed, name=args.name, overwrite=args.overwrite,
                                        test_seed=args.test_seed, num_validation=args.validation)
    else:
        folder = make_dataset(args.source, raw_root, args.dataset_id, args.name or default_dataset_name(args.source),
                              args.labeled, args.test, args.seed, args.unlabeled, args.group_regex, args.group_chars,
                              args.images_dir, args.masks_dir, args.mask_suffix, resize, args.overwrite,
                              args.test_seed, args.validation)
    counts = {k: len(v) for k, v in read_manifest(folder)["splits"].items()}
    print(f"{folder}: {counts['labeled']} labeled, {counts['unlabeled']} unlabeled, {counts['test']} test cases"
          + (f", {counts['validation']} validation" if counts.get("validation") else "")
          + (f", {counts['unused']} unused" if counts.get("unused") else ""))
    return folder


# ------------------------------------------------------------------------------------------- entry points


def run_command(parser: argparse.ArgumentParser, run, argv: list[str] | None) -> None:
    """Parses ``argv`` and calls ``run(args)``; a user error exits 2 with ``<prog>: error: <message>``, as argparse
    does for bad flags, instead of a traceback. Every ``nnUNetv2_rndpo_*`` command goes through here."""
    args = parser.parse_args(argv)
    try:
        run(args)
    # nnU-Net raises RuntimeError for unknown datasets; PermissionError: an output that cannot be written;
    # FileExistsError: a dataset that exists without --overwrite
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, RuntimeError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


def main_proposals(argv: list[str] | None = None) -> None:
    run_command(proposals_parser(), run_proposals, argv)


def main_judge(argv: list[str] | None = None) -> None:
    run_command(judge_parser(), run_judge, argv)


def main_mine(argv: list[str] | None = None) -> None:
    run_command(mine_parser(), run_mine, argv)


def main_train_judge(argv: list[str] | None = None) -> None:
    run_command(train_judge_parser(), run_train_judge, argv)


def main_clean(argv: list[str] | None = None) -> None:
    run_command(clean_parser(), run_clean, argv)


def main_make_dataset(argv: list[str] | None = None) -> None:
    run_command(make_dataset_parser(), run_make_dataset, argv)


COMMANDS = {"proposals": main_proposals, "judge": main_judge, "mine": main_mine, "train_judge": main_train_judge,
            "clean": main_clean, "make_dataset": main_make_dataset}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m nnunetv2_rndpo.commands {{{','.join(COMMANDS)}}} ...")
    COMMANDS[sys.argv[1]](sys.argv[2:])
