"""``nnUNetv2_rndpo_study``: the study on real data — every arm under every judge, resumable, with a report.

    nnUNetv2_rndpo_study --dataset hippocampus --source /path/to/msd_task04_hippocampus --scale cpu -o OUT
    nnUNetv2_rndpo_study --dataset hc18 --source /path/to/hc18_fetal_head_us --scale cpu -o OUT2
    nnUNetv2_rndpo_study --report-from OUT OUT2 --report-to docs/results.md   # or the results.json files

Per seed s (the seed draws the labeled cases; the test set is the same for every seed):
dataset ``Dataset<id+s>`` from ``nnUNetv2_rndpo_make_dataset`` → plan and preprocess → base model
(``Scale.base_trainer``, fold ``all``) → proposals once (``nnUNetv2_rndpo_proposals``) → every judge's
scores and reliability report (``nnUNetv2_rndpo_judge --report``; the weak oracle's σ is calibrated so
that it orders 70% of the within-case proposal pairs right, with a size bias; the ``uncertainty`` judge's
reliability is reported beside the others even where no arm trains on it) → every arm, each an ``nnUNetv2_train`` run
from the base checkpoint in its own results folder, reading the judge's scores as ``judge: external``, with
the test Dice curve of :mod:`nnunetv2_rndpo.evaluation` after every epoch. Plus one full-label model (labeled
and pool cases with their labels, same test set) as the upper bound.

``OUT/results.json`` is rewritten (atomically) after every arm; a rerun skips what is finished and restarts a
killed arm from scratch. ``OUT/report.md`` and ``OUT/figures/`` are regenerated at the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from nnunetv2_rndpo.atomic_files import atomic_write_text, read_jsonl
from nnunetv2_rndpo.datasets import MANIFEST
from nnunetv2_rndpo.metrics import curve_summary
from nnunetv2_rndpo.paths import nnunet_environment, results_folder, run_logged

PROPOSALS = {"num_proposals": 8, "proposal_sources": ["mirror", "threshold", "temperature"], "seed": 12345}
# The weak judge is calibrated the way DPO uses it: on within-case pair accuracy, not on a pooled Spearman,
# which differences between cases alone reach (docs/study.md says what that did to the earlier results).
WEAK_TARGET_PAIR_ACCURACY = 0.70
WEAK_SIZE_BIAS = 0.05
# judges whose reliability every study reports beside the scale's arm judges (cheap: no arms, no training)
REPORTED_JUDGES = ("uncertainty",)


@dataclass(frozen=True)
class StudyDataset:
    """How a source folder becomes the study's nnU-Net datasets."""

    dataset_id: int
    name: str
    configuration: str
    num_test: int
    import_args: tuple[str, ...] = ()


DATASETS = {
    "hippocampus": StudyDataset(960, "HippocampusStudy", "3d_fullres", 60),
    # HC18: split by exam id (the number before the first "_"); images at 1/4 size (docs/study.md).
    "hc18": StudyDataset(970, "HC18Study", "2d", 50,
                         ("--masks", "masks_filled", "--group-regex", r"^(\d+)_", "--resize", "0.25")),
    "synthetic": StudyDataset(980, "SyntheticStudy", "2d", 6, ("--synthetic", "2d")),
}


@dataclass(frozen=True)
class Arm:
    """One fine-tuning run: a trainer, the judge whose scores it reads, the mining, config overrides."""

    method: str
    trainer: str
    judge: str | None  # None: the arm does not read a judge (the continued-supervised control)
    mining: str = "top_bottom"
    overrides: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return " | ".join(x for x in (self.method, self.judge, self.mining if self.judge else None) if x)

    @property
    def folder_name(self) -> str:
        return "".join(c if c.isalnum() else "_" for c in self.name)


# The β every protocol arm was run with (the starting point, before this study): pinned, so that the committed
# results stay reproducible when the config's defaults (set from this study, docs/study.md "Defaults") change.
PROTOCOL_BETA = {"none": 0.01, "region": 1.0}
# Likewise the step the committed arms ran: a full labeled batch beside the pairs (with sft_weight > 0) and no
# learning-rate warm-up; an arm's overrides may change them.
PROTOCOL_STEP = {"sft_batch_fraction": None, "warmup_fraction": 0.0}
# the warm-up the sweep's warm-up arm runs: the config default when this arm was added
WARMUP_FRACTION = 0.05


def arms_for(judges: tuple[str, ...], full: bool) -> list[Arm]:
    """The arms of the study: the control, and per judge pseudo-label, DPO and RN-DPO (top_bottom and
    top_random) and RN-DPO with the supervised anchor.

    DPO and RN-DPO keep the label-free anchors (consistency, agreement: the defaults) and switch the
    supervised one off, so the "+ sft" arm isolates it. Pseudo-label keeps it (``sft_weight`` 1: each step
    trains on a labeled batch beside the pseudo-labeled one, as self-training does), so its fair preference
    counterpart is "RN-DPO + sft"; the ablation arm "pseudo-label (no sft)" (``--sweep``) drops it.
    ``full=False`` (cpu scale) runs the mining comparison and pseudo-label only under the oracle and weak
    judges, and RN-DPO + sft only under the oracle, to keep a dataset's CPU run short (docs/study.md, Time).
    """
    dpo = {"sft_weight": 0.0, "beta": PROTOCOL_BETA["none"]}
    rn_dpo = {"sft_weight": 0.0, "beta": PROTOCOL_BETA["region"]}
    arms = [Arm("control (continued supervised)", "nnUNetTrainerContinuedSFT", None)]
    for judge in judges:
        arms += [Arm("DPO", "nnUNetTrainerDPO", judge, overrides=dpo),
                 Arm("RN-DPO", "nnUNetTrainerRNDPO", judge, overrides=rn_dpo)]
        if full or judge in ("oracle", "weak"):
            arms += [Arm("DPO", "nnUNetTrainerDPO", judge, "top_random", dpo),
                     Arm("RN-DPO", "nnUNetTrainerRNDPO", judge, "top_random", rn_dpo),
                     Arm("pseudo-label", "nnUNetTrainerPseudoLabel", judge, overrides={"sft_weight": 1.0})]
        if full or judge == "oracle":
            arms.append(Arm("RN-DPO + sft", "nnUNetTrainerRNDPO", judge, overrides={**rn_dpo, "sft_weight": 1.0}))
    return arms


# Why does RN-DPO move further than DPO? At the protocol's β (PROTOCOL_BETA) RN-DPO's sigmoid saturates only at
# a ~|D|·0.01 times larger mean log-ratio gap than DPO's; β = 4 matches DPO's saturation point at HC18's median
# |D| (docs/study.md, "Defaults"). ``--sweep`` adds these arms to a study.
SWEEP_BETAS = (4.0,)
SWEEP_JUDGES = ("oracle", "learned")
# Does pseudo-label gain from the judge's masks or from the labeled batches it trains on beside them?
ABLATION_JUDGES = ("oracle", "weak")


# The first look at what a better proposal set buys (benchmarks/headroom.py chose both, docs/results/preferences_*):
# RN-DPO with the default step and the best label-free judge, on today's proposals and on the best set.
FIRST_LOOK_JUDGE = "agreement"
FIRST_LOOK_SOURCES = ("mirror", "affine")
DEFAULT_STEP = {"sft_batch_fraction": 0.5, "warmup_fraction": WARMUP_FRACTION}


def proposal_arms(judge: str = FIRST_LOOK_JUDGE, sources: tuple[str, ...] = FIRST_LOOK_SOURCES) -> list[Arm]:
    """RN-DPO as a user runs it (the config's defaults: β, every anchor, the split batch, the warm-up) with
    ``judge``, on the protocol's proposals and on the proposal set ``sources``: paired on the same base models."""
    return [Arm("RN-DPO (default step)", "nnUNetTrainerRNDPO", judge, overrides=dict(DEFAULT_STEP)),
            Arm(f"RN-DPO (default step, {' '.join(sources)} proposals)", "nnUNetTrainerRNDPO", judge,
                overrides={**DEFAULT_STEP, "proposal_sources": list(sources)})]


def sweep_arms() -> list[Arm]:
    """The arms beyond the protocol: RN-DPO at each β of SWEEP_BETAS under the reliable and the learned judge,
    pseudo-label without the supervised anchor under the ABLATION_JUDGES, RN-DPO with uniformly random
    patches (``disagreement_oversample: 0``) under the reliable judge, and RN-DPO + sft under it with the
    default step's batch split (``sft_batch_fraction`` 0.5: nnU-Net's batch, not twice it), without and with
    the default learning-rate warm-up (``warmup_fraction``); and :func:`proposal_arms`."""
    return ([Arm(f"RN-DPO (β {beta:g})", "nnUNetTrainerRNDPO", judge, overrides={"sft_weight": 0.0, "beta": beta})
             for beta in SWEEP_BETAS for judge in SWEEP_JUDGES]
            + [Arm("pseudo-label (no sft)", "nnUNetTrainerPseudoLabel", judge, overrides={"sft_weight": 0.0})
               for judge in ABLATION_JUDGES]
            + [Arm("RN-DPO (random patches)", "nnUNetTrainerRNDPO", "oracle",
                   overrides={"sft_weight": 0.0, "beta": PROTOCOL_BETA["region"], "disagreement_oversample": 0.0})]
            + [Arm("RN-DPO + sft (split batch)", "nnUNetTrainerRNDPO", "oracle",
                   overrides={"sft_weight": 1.0, "beta": PROTOCOL_BETA["region"], "sft_batch_fraction": 0.5})]
            + [Arm("RN-DPO + sft (split batch, warm-up)", "nnUNetTrainerRNDPO", "oracle",
                   overrides={"sft_weight": 1.0, "beta": PROTOCOL_BETA["region"], "sft_batch_fraction": 0.5,
                              "warmup_fraction": WARMUP_FRACTION})]
            + proposal_arms())


@dataclass(frozen=True)
class Scale:
    """The size of a study run."""

    base_trainer: str
    num_epochs: int  # evaluation points after the base = epochs (eval_every = 1)
    iterations_per_epoch: int
    learning_rate: float
    seeds: tuple[int, ...]
    judges: tuple[str, ...]
    num_labeled: int = 10
    full_arms: bool = False
    max_pool: int | None = None  # cap on the unlabeled pool (None = every non-test, non-labeled case)


SCALES = {
    # its time per dataset: docs/study.md, "Time". Learning rate 1e-5, the config default: at 1e-4 the label-free
    # anchors alone let the model fall before it recovered (docs/results/anchors_hippocampus_cpu.md); at 1e-5
    # RN-DPO with every anchor (sft too) stayed above its base, while the study arms without sft fell on
    # Hippocampus (docs/study.md).
    "cpu": Scale("nnUNetTrainer_cpuBase", 5, 20, 1e-5, (0, 1), ("oracle", "weak", "agreement", "learned"), max_pool=60),
    # paper-sized: nnU-Net's 250-epoch schedule for the base, 3 seeds, every arm under every judge.
    "gpu": Scale("nnUNetTrainer_250epochs", 10, 100, 1e-5, (0, 1, 2), ("oracle", "weak", "agreement", "learned"),
                 full_arms=True),
    # a minutes-long run of the machinery on the synthetic dataset (tests)
    "smoke": Scale("nnUNetTrainer_rndpoSmoke", 2, 5, 1e-4, (0,), ("oracle",), num_labeled=8),
}


class Study:
    """Runs one dataset's study into ``output`` (see the module docstring)."""

    def __init__(self, dataset: str, source: str | None, scale: str, output: str | Path,
                 seeds: tuple[int, ...] | None = None,
                 device: str = "cpu", only_arms: list[str] | None = None, sweep: bool = False,
                 labeled: int | None = None, full_label: bool = True):
        if dataset not in DATASETS:
            raise ValueError(f"unknown --dataset {dataset!r}; valid: {', '.join(DATASETS)}")
        if scale not in SCALES:
            raise ValueError(f"unknown --scale {scale!r}; valid: {', '.join(SCALES)}")
        if dataset != "synthetic" and not (source and Path(source).is_dir()):
            raise FileNotFoundError(f"--source {source!r} is not a folder; point it at the dataset, e.g. "
                                    "/path/to/msd_task04_hippocampus (imagesTr/, labelsTr/)")
        if labeled is not None and labeled < 1:
            raise ValueError(f"--labeled {labeled}: the labeled budget must be at least 1 case")
        self.dataset, self.spec, self.scale_name, self.scale = dataset, DATASETS[dataset], scale, SCALES[scale]
        if labeled is not None:  # a second label budget: the same protocol with another N
            self.scale = replace(self.scale, num_labeled=labeled)
        self.source = Path(source).resolve() if source else None
        self.root = Path(output).resolve()
        self.seeds = tuple(seeds) if seeds else self.scale.seeds
        self.device = device
        self.only_arms = only_arms
        self.sweep = sweep
        self.full_label = full_label
        self.results_file = self.root / "results.json"
        self.results = json.loads(self.results_file.read_text()) if self.results_file.is_file() else {}
        if self.results and self.results.get("dataset") != dataset:
            raise ValueError(f"{self.results_file} holds the {self.results.get('dataset')!r} study; use another -o")
        held = self.results.get("protocol", {}).get("num_labeled", self.scale.num_labeled)
        if held != self.scale.num_labeled:
            raise ValueError(f"{self.results_file} holds the study with {held} labeled cases, not "
                             f"{self.scale.num_labeled}; use another -o for another --labeled budget")
        self.results.update(dataset=dataset, scale=scale, configuration=self.spec.configuration,
                            protocol={**asdict(self.scale), "proposals": PROPOSALS})
        self.results.setdefault("seeds", {})
        self.env = nnunet_environment(self.root)

    # ------------------------------------------------------------------------------------------ running

    def _run(self, name: str, command: list[str], log_folder: Path, **extra_env: str) -> float:
        """Runs an installed console script, logging to ``log_folder/name.log``; returns seconds."""
        log = log_folder / f"{name}.log"
        print(f"[{name}] {' '.join(command)}", flush=True)
        start = time.time()
        code = run_logged(command, {**self.env, **extra_env}, log)
        seconds = time.time() - start
        if code:
            raise RuntimeError(f"{name} failed (exit {code}); see {log}. Rerun the same command to resume.")
        print(f"[{name}] done in {seconds:.0f} s", flush=True)
        return seconds

    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.results_file, json.dumps(self.results, indent=1))

    def run(self) -> dict:
        for seed in self.seeds:
            self.run_seed(seed)
        if self.full_label:
            self.run_full_label()
        write_report([self.results], self.root / "report.md", self.root / "figures")
        print(f"results: {self.results_file}; report: {self.root / 'report.md'}")
        return self.results

    @property
    def report_judges(self) -> tuple[str, ...]:
        """Every judge whose reliability the study measures: the arm judges, then ``REPORTED_JUDGES``."""
        return tuple(dict.fromkeys(self.scale.judges + REPORTED_JUDGES))

    def dataset_id(self, seed: int, full_label: bool = False) -> int:
        return self.spec.dataset_id + (50 if full_label else 0) + seed

    def _raw(self, dataset_id: int) -> Path:
        return next((self.root / "nnUNet_raw").glob(f"Dataset{dataset_id:03d}_*"), None)

    def make_dataset(self, seed: int) -> Path:
        did = self.dataset_id(seed)
        if self._raw(did) is None:
            source = ["--synthetic", "2d"] if self.dataset == "synthetic" else ["-i", str(self.source)]
            args = [a for a in self.spec.import_args if self.dataset != "synthetic"]
            pool = ["--pool", str(self.scale.max_pool)] if self.scale.max_pool else []
            # the test set is drawn with --test-seed 0 for every seed: one fixed held-out set
            self._run(f"make_dataset_{did}", ["nnUNetv2_rndpo_make_dataset", *source, "-d", str(did),
                                              "-n", f"{self.spec.name}Seed{seed}",
                                              "--labeled", str(self.scale.num_labeled),
                                              "--test", str(self.spec.num_test), "--seed", str(seed),
                                              "--test-seed", "0",
                                              *pool, *args], self.root / "logs")
        return self._raw(did)

    def train_base(self, dataset_id: int, trainer: str) -> Path:
        c = self.spec.configuration
        plans = self.root / "nnUNet_preprocessed" / self._raw(dataset_id).name / "nnUNetPlans.json"
        if not plans.is_file():
            self._run(f"plan_{dataset_id}", ["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", c,
                                             "-npfp", "1", "-np", "1"], self.root / "logs", nnUNet_n_proc_DA="1")
        folder = results_folder(self.root / "nnUNet_results", self._raw(dataset_id).name, trainer, "nnUNetPlans", c)
        if not (folder / "fold_all" / "checkpoint_final.pth").is_file():
            self._run(f"base_{dataset_id}", ["nnUNetv2_train", str(dataset_id), c, "all", "-tr", trainer,
                                             "-device", self.device], self.root / "logs")
        return folder

    def _base_args(self, dataset_id: int, sources: list[str] | None = None) -> list[str]:
        """The base model and proposal settings, the same for every toolkit command (they name the cache).
        ``sources``: another proposal set than the protocol's (``PROPOSALS``)."""
        return ["-d", str(dataset_id), "-c", self.spec.configuration, "-f", "all", "-tr", self.scale.base_trainer,
                "-n", str(PROPOSALS["num_proposals"]), "--sources", *(sources or PROPOSALS["proposal_sources"]),
                "--seed", str(PROPOSALS["seed"]), "-device", self.device]

    def judge_scores(self, seed: int, judge: str, sources: list[str] | None = None) -> tuple[Path, dict]:
        """The judge's score CSV and reliability report for a seed's pool (computed once), on the protocol's
        proposals or, with ``sources``, on that proposal set's (generated first if missing)."""
        did, folder = self.dataset_id(seed), self.root / f"seed_{seed}"
        tag = "" if sources is None else "__" + "_".join(sources)
        csv = folder / f"scores_{judge}{tag}.csv"
        report = csv.with_suffix(".report.json")
        if not report.is_file():
            if sources is not None:
                self._run(f"proposals{tag}", ["nnUNetv2_rndpo_proposals", *self._base_args(did, sources)], folder)
            if judge == "weak":
                extra = ["--judge", "oracle", "--pair-accuracy", str(WEAK_TARGET_PAIR_ACCURACY), "--size-bias",
                         str(WEAK_SIZE_BIAS)]
            elif judge == "learned":
                if not (results_folder(self.root / "nnUNet_results", self._raw(did).name, self.scale.base_trainer,
                                       "nnUNetPlans", self.spec.configuration, "all") / "rndpo_judge.pth").is_file():
                    self._run(f"train_judge_{did}", ["nnUNetv2_rndpo_train_judge", *self._base_args(did)], folder)
                extra = ["--judge", "learned"]
            else:
                extra = ["--judge", judge]
            self._run(f"judge_{judge}{tag}", ["nnUNetv2_rndpo_judge", *self._base_args(did, sources), *extra,
                                                "--report", "-o", str(csv)], folder)
        return csv, json.loads(report.read_text())

    def run_seed(self, seed: int) -> None:
        record = self.results["seeds"].setdefault(str(seed), {"arms": {}, "judges": {}})
        raw = self.make_dataset(seed)
        did = self.dataset_id(seed)
        base_folder = self.train_base(did, self.scale.base_trainer)
        self._run("proposals", ["nnUNetv2_rndpo_proposals", *self._base_args(did)], self.root / f"seed_{seed}")
        manifest = raw / MANIFEST
        if manifest.is_file():
            record["splits"] = {k: len(v) for k, v in json.loads(manifest.read_text())["splits"].items()}
        for judge in self.report_judges:
            record["judges"][judge] = self.judge_scores(seed, judge)[1]
        report = record["judges"].get("weak", {})
        if "judge/target_pair_accuracy" in report:  # not in a study folder made before the pair-accuracy target
            record["weak_calibration"] = {"size_bias": WEAK_SIZE_BIAS,
                                          "target_pair_accuracy": WEAK_TARGET_PAIR_ACCURACY,
                                          "sigma": report.get("judge/sigma"),
                                          "pair_accuracy": report.get("pairwise/accuracy")}
        self._save()
        for arm in arms_for(self.scale.judges, self.scale.full_arms) + (sweep_arms() if self.sweep else []):
            if arm.name in record["arms"] and "drift" not in record["arms"][arm.name]:  # results of older runs
                fold = self._arm_fold(seed, arm, base_folder)
                if (fold / "rndpo_metrics.jsonl").is_file():
                    record["arms"][arm.name]["drift"] = read_arm_metrics(fold)["drift"]
            if arm.name in record["arms"] or (self.only_arms and arm.name not in self.only_arms):
                continue
            scores = None
            if arm.judge:
                sources = arm.overrides.get("proposal_sources")
                scores, report = self.judge_scores(seed, arm.judge, sources)
                if sources is None:
                    record["judges"][arm.judge] = report
                else:
                    record.setdefault("judges_by_proposals", {})[f"{arm.judge} | {' '.join(sources)}"] = report
            record["arms"][arm.name] = self.run_arm(seed, arm, base_folder, scores)
            self._save()
        self._save()

    def run_arm(self, seed: int, arm: Arm, base_folder: Path, scores: Path | None) -> dict:
        """One ``nnUNetv2_train`` of the arm in ``seed_<s>/runs/<arm>/`` (removed first: a clean restart)."""
        did = self.dataset_id(seed)
        fold = self._arm_fold(seed, arm, base_folder)
        results = fold.parents[1]  # run_root/nnUNet_results/DatasetXXX
        run_root = results.parents[1]
        shutil.rmtree(run_root, ignore_errors=True)
        results.mkdir(parents=True)
        os.symlink(base_folder, results / base_folder.name)  # the arm finds its start point, writes beside it
        s = self.scale
        config = {**PROPOSALS, "num_epochs": s.num_epochs, "num_iterations_per_epoch": s.iterations_per_epoch,
                  "num_val_iterations_per_epoch": 5, "learning_rate": s.learning_rate, "eval_every": 1,
                  "base_trainer": s.base_trainer, "mining": arm.mining, "final_validation": False, **PROTOCOL_STEP,
                  **arm.overrides}
        if scores is not None:
            config.update(judge="external", judge_scores=str(scores))
        config_file = run_root / "rndpo_config.json"
        config_file.write_text(json.dumps(config, indent=1))
        seconds = self._run("train", ["nnUNetv2_train", str(did), self.spec.configuration, "all", "-tr", arm.trainer,
                                      "-device", self.device], run_root,
                            nnUNet_results=str(run_root / "nnUNet_results"), nnUNet_rndpo_config=str(config_file))
        metrics = read_arm_metrics(fold)
        iterations = [i * s.iterations_per_epoch for i in range(len(metrics["curve"]))]  # eval_every = 1, row 0 = base
        for checkpoint in fold.glob("checkpoint_*.pth"):  # the curve is what the study keeps; weights are large
            checkpoint.unlink()
        return {"method": arm.method, "judge": arm.judge, "mining": arm.mining, "trainer": arm.trainer,
                "config": config,
                "iterations": iterations, "summary": curve_summary(metrics["curve"]), "seconds": round(seconds),
                **metrics}

    def _arm_fold(self, seed: int, arm: Arm, base_folder: Path) -> Path:
        """``seed_<s>/runs/<arm>/nnUNet_results/<dataset>/<trainer>__nnUNetPlans__<configuration>/fold_all``."""
        return results_folder(self.root / f"seed_{seed}" / "runs" / arm.folder_name / "nnUNet_results",
                              base_folder.parent.name, arm.trainer, "nnUNetPlans", self.spec.configuration, "all")

    def run_full_label(self) -> None:
        """The upper bound: the base trainer on labeled + pool cases with their labels, the same test set."""
        if "full_label" in self.results:
            return
        seed = self.seeds[0]
        did = self.dataset_id(seed, full_label=True)
        if self._raw(did) is None:
            full_label_dataset(self._raw(self.dataset_id(seed)), self.root / "nnUNet_raw", did)
        self.train_base(did, self.scale.base_trainer)
        dice = self._model_dice(did, self.scale.base_trainer)
        self.results["full_label"] = {"dice": dice, "seed": seed, "trainer": self.scale.base_trainer}
        self._save()

    def _model_dice(self, dataset_id: int, trainer: str) -> float:
        code = ("import sys; from nnunetv2_rndpo.evaluation import model_dice_on_test_set as d; "
                f"print(d({dataset_id}, {self.spec.configuration!r}, 'all', {trainer!r}, device={self.device!r}))")
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"evaluating Dataset{dataset_id} {trainer} failed:\n{out.stderr[-2000:]}")
        return float(out.stdout.strip().splitlines()[-1])


def read_arm_metrics(fold: Path) -> dict:
    """What the study keeps of a finished arm: its test-Dice curve (row 0 = base), its drift from the base per
    epoch (``guard/kl``: mean KL of the policy to the reference on the guard cases, nnunetv2_rndpo/phase.py) and
    the number of pairs it trained on."""
    rows = read_jsonl(fold / "rndpo_metrics.jsonl")
    pairs_file = fold / "rndpo_pairs.json"
    return {"curve": [r["eval/dice"] for r in rows if "eval/dice" in r],
            "drift": [r["guard/kl"] for r in rows if "guard/kl" in r],
            "pairs": len(json.loads(pairs_file.read_text())["pairs"]) if pairs_file.is_file() else None}


def full_label_dataset(source: Path, raw_root: Path, dataset_id: int) -> Path:
    """``Dataset<id>_<name>FullLabel``: ``source``'s labeled and pool cases, all with labels, and its test set.

    Files are linked, not copied. The pool's hidden labels (``labelsUnlabeled/``) become training labels.
    """
    source = Path(source)
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{source.name.split('_', 1)[1]}FullLabel"
    dataset = json.loads((source / "dataset.json").read_text())
    ending = dataset["file_ending"]
    for needed in ("labelsTr", "imagesUnlabeled", "labelsUnlabeled", "imagesTs", "labelsTs"):
        if not (source / needed).is_dir():
            raise FileNotFoundError(f"{source / needed} is missing: the full-label model needs the pool's labels "
                                    "and the test set (make the dataset with nnUNetv2_rndpo_make_dataset)")
    count = 0
    for images, labels, target in (("imagesTr", "labelsTr", "Tr"), ("imagesUnlabeled", "labelsUnlabeled", "Tr"),
                                   ("imagesTs", "labelsTs", "Ts")):
        for kind, folder_name in (("images", images), ("labels", labels)):
            (folder / f"{kind}{target}").mkdir(parents=True, exist_ok=True)
            for file in sorted((source / folder_name).glob(f"*{ending}")):
                os.symlink(file.resolve(), folder / f"{kind}{target}" / file.name)
                count += kind == "labels" and target == "Tr"
    dataset.update(numTraining=count, name=folder.name.split("_", 1)[1])
    atomic_write_text(folder / "dataset.json", json.dumps(dataset, indent=1))
    return folder


# ---------------------------------------------------------------------------------------------- report


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def arm_table(results: dict) -> list[dict]:
    """One row per arm (over seeds): peak/sustained/final/worst drop, Δ to base and the label-gap share.

    gap share = (sustained − base) / (full-label − base), per seed, then averaged. drift = the mean over epochs
    of ``guard/kl`` (how far the policy moved from the base on the guard cases), per seed, then averaged.
    """
    full = results.get("full_label", {}).get("dice")
    by_arm: dict[str, list[dict]] = {}
    for seed in results["seeds"].values():
        for name, arm in seed["arms"].items():
            by_arm.setdefault(name, []).append(arm)
    rows = []
    for name, runs in by_arm.items():
        s = [r["summary"] for r in runs]
        gap = [(x["sustained"] - x["base"]) / (full - x["base"]) for x in s if full is not None and full != x["base"]]
        rows.append({"arm": name, "method": runs[0]["method"], "judge": runs[0]["judge"], "mining": runs[0]["mining"],
                     "seeds": len(runs), **{k: [x[k] for x in s] for k in ("base", "peak", "sustained", "final",
                                                                           "worst_drop", "delta_peak",
                                                                           "delta_sustained",
                                                                           "delta_final")},
                     "gap_share": gap, "drift": [float(np.mean(r["drift"])) for r in runs if r.get("drift")]})
    return rows


def _completeness(results: dict) -> str:
    """Which part of the protocol the results hold: finished arms per seed, and the full-label model."""
    protocol = results.get("protocol", {})
    names = {a.name for a in arms_for(tuple(protocol.get("judges", ())), protocol.get("full_arms", False))}
    expected = len(names) or None
    seeds = protocol.get("seeds") or []
    finished = {s: len(names & set(results["seeds"].get(str(s), {}).get("arms", {}))) for s in seeds}
    done = [f"seed {s}: {n}/{expected} arms" for s, n in finished.items()]
    state = "complete" if expected and all(n == expected for n in finished.values()) and "full_label" in results \
        else "INCOMPLETE"
    full_label = "done" if "full_label" in results else "missing"
    return f"Protocol {state}: {'; '.join(done) or 'no seeds'}; full-label model {full_label}."


def _sweep_lines(rows: list[dict]) -> list[str]:
    """The β table the config's default for ``region`` was set from: per sweep judge, DPO and RN-DPO at the
    protocol's β and RN-DPO at each swept β (``top_bottom``), with Δ sustained, worst drop and drift."""
    from nnunetv2_rndpo.config import DEFAULT_BETA

    by_name = {r["arm"]: r for r in rows}
    table = []
    for judge in SWEEP_JUDGES:
        swept = [(f"RN-DPO (β {b:g}) | {judge} | top_bottom", "RN-DPO", b) for b in SWEEP_BETAS]
        if not any(name in by_name for name, _, _ in swept):
            continue
        for name, method, beta in [(f"DPO | {judge} | top_bottom", "DPO", PROTOCOL_BETA["none"]),
                                   (f"RN-DPO | {judge} | top_bottom", "RN-DPO", PROTOCOL_BETA["region"]), *swept]:
            if name in by_name:
                r = by_name[name]
                table.append(f"| {judge} | {method} | {beta:g} | {r['seeds']} | {_mean_sd(r['delta_sustained'])} | "
                             f"{_mean_sd(r['worst_drop'])} | {_mean_sd(r['drift'])} |")
    if not table:
        return []
    return ["", f"β sweep (`top_bottom`; the config's default β for `region` is {DEFAULT_BETA['region']:g}, set from "
            f"this table; the protocol arms above run DPO at β {PROTOCOL_BETA['none']:g} and RN-DPO at β "
            f"{PROTOCOL_BETA['region']:g}):", "",
            "| judge | method | β | seeds | Δ sustained | worst drop | drift |", "|---|---|---|---|---|---|---|",
            *table]


JUDGE_ORDER = ("oracle", "weak", "agreement", "uncertainty", "learned", "external")
DRIFT_BINS = (0.0, 0.0025, 0.005, 0.01, 0.02, 0.05, math.inf)


def _drift_lines(results: dict) -> list[str]:
    """Runs (arm × seed, the control excluded) binned by their largest guard KL to the base: how many gained
    sustained Dice and the mean Δ sustained per bin. The evidence for or against a default ``guard_max_kl``."""
    runs = [(max(a["drift"]), a["summary"]["delta_sustained"]) for seed in results["seeds"].values()
            for a in seed["arms"].values() if a.get("drift") and a["judge"]]
    table = []
    for low, high in itertools.pairwise(DRIFT_BINS):
        deltas = [d for kl, d in runs if low <= kl < high]
        if deltas:
            table.append(f"| [{low:g}, {high:g}) | {len(deltas)} | {sum(d > 0 for d in deltas)} | "
                         f"{np.mean(deltas):.4f} |")
    if not table:
        return []
    return ["", "Drift and outcome (every run with a judge, per seed; largest guard KL over its epochs):", "",
            "| largest guard KL | runs | gained | mean Δ sustained |", "|---|---|---|---|", *table]


def write_report(all_results: list[dict], report_file: Path, figure_folder: Path) -> Path:
    """Markdown with the main, mining and judge tables and a curve figure per dataset and judge."""
    report_file, figure_folder = Path(report_file), Path(figure_folder)
    figure_folder.mkdir(parents=True, exist_ok=True)
    lines = ["# RN-DPO study: results", "",
             "Generated by `nnUNetv2_rndpo_study` (nnunetv2_rndpo/study.py; the protocol is in its docstring and "
             "in each `results.json`). Test Dice = mean over test cases of the foreground-mean Dice "
             "(nnunetv2_rndpo/evaluation.py). Values are mean ± sd over seeds; peak/sustained/final/worst drop as "
             "in nnunetv2_rndpo/metrics.py; gap share = (sustained − base) / (full-label − base); drift = mean over "
             "epochs of the KL of the fine-tuned model to its base on the guard cases (`guard/kl`).", ""]
    for results in all_results:
        if not results.get("seeds"):
            continue
        rows = arm_table(results)
        labels = results["protocol"]["num_labeled"]
        title = f"{results['dataset']} ({results['configuration']}, scale {results['scale']}, {labels} labels)"
        default_budget = labels == SCALES[results["scale"]].num_labeled
        tag = results["dataset"] if default_budget else f"{results['dataset']}_n{labels}"
        full = results.get("full_label", {}).get("dice")
        base = [a["summary"]["base"] for s in results["seeds"].values() for a in list(s["arms"].values())[:1]]
        lines += [f"## {title}", "",
                  f"Base ({labels} labels): {_mean_sd(base)}; full-label upper bound: "
                  f"{'-' if full is None else f'{full:.4f}'}; seeds: {', '.join(results['seeds'])}.", "",
                  _completeness(results), "",
                  "| method | judge | mining | seeds | peak | sustained | final | worst drop | Δ sustained | "
                  "gap share | drift |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            judge, mining = (r["judge"], r["mining"]) if r["judge"] else ("–", "–")
            lines.append(f"| {r['method']} | {judge} | {mining} | {r['seeds']} | {_mean_sd(r['peak'])} | "
                         f"{_mean_sd(r['sustained'])} | "
                         f"{_mean_sd(r['final'])} | {_mean_sd(r['worst_drop'])} | {_mean_sd(r['delta_sustained'])} | "
                         f"{_mean_sd(r['gap_share'])} | {_mean_sd(r['drift'])} |")
        mining = [r for r in rows if r["method"] in ("DPO", "RN-DPO") and r["judge"] in ("oracle", "weak")]
        if mining:
            lines += ["", "Mining (reliable = oracle σ=0, weak = calibrated noisy and size-biased oracle):", "",
                      "| method | judge | mining | Δ peak | Δ sustained | worst drop |", "|---|---|---|---|---|---|"]
            for r in sorted(mining, key=lambda r: (r["method"], r["judge"], r["mining"])):
                lines.append(f"| {r['method']} | {r['judge']} | {r['mining']} | {_mean_sd(r['delta_peak'])} | "
                             f"{_mean_sd(r['delta_sustained'])} | {_mean_sd(r['worst_drop'])} |")
        lines += _sweep_lines(rows)
        lines += _drift_lines(results)
        keys = ("spearman/pooled", "spearman/per_case", "pairwise/accuracy", "top1/regret",
                "mining/top_bottom/oracle_acc", "mining/top_random/oracle_acc")
        judges = sorted({j for s in results["seeds"].values() for j in s.get("judges", {})},
                        key=lambda j: (JUDGE_ORDER.index(j) if j in JUDGE_ORDER else len(JUDGE_ORDER), j))
        if judges:
            lines += ["", "Judge reliability on the pool (hidden labels; pooled ρ can be high from differences "
                      "between cases alone, DPO pairs depend on the per-case ρ and the within-case pair accuracy):", "",
                      "| judge | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
            for judge in judges:
                reports = [s["judges"][judge] for s in results["seeds"].values() if judge in s.get("judges", {})]
                lines.append(f"| {judge} | " + " | ".join(_mean_sd([r.get(k) for r in reports]) for k in keys) + " |")
        for judge in sorted({r["judge"] for r in rows if r["judge"]}):
            figure = figure_folder / f"{tag}_{judge}.png"
            plot_curves(results, judge, figure)
            lines += ["", f"![{results['dataset']}, judge {judge}]({os.path.relpath(figure, report_file.parent)})"]
        lines.append("")
    atomic_write_text(report_file, "\n".join(lines) + "\n")
    return report_file


def plot_curves(results: dict, judge: str, path: Path) -> list[str]:
    """Mean test-Dice curves over seeds of the arms under ``judge`` and the control, with base and full-label.

    Only arms run on every seed are drawn (a mean over fewer seeds starts from another base); the tables
    give the others with their number of seeds. Returns the names of the arms drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    curves: dict[str, list] = {}
    for seed in results["seeds"].values():
        for name, arm in seed["arms"].items():
            if arm["judge"] in (judge, None):
                curves.setdefault(name, []).append(arm)
    curves = {name: runs for name, runs in curves.items() if len(runs) == len(results["seeds"])}
    base = None
    for name, runs in curves.items():
        length = min(len(r["curve"]) for r in runs)
        mean = np.mean([r["curve"][:length] for r in runs], axis=0)
        ax.plot(runs[0]["iterations"][:length], mean, marker="o", label=name)
        base = mean[0]
    if base is not None:
        ax.axhline(base, color="gray", linestyle=":", label="base")
    if results.get("full_label"):
        ax.axhline(results["full_label"]["dice"], color="black", linestyle="--", label="full-label")
    ax.set_xlabel("fine-tuning iteration")
    ax.set_ylabel("test Dice")
    ax.set_title(f"{results['dataset']} ({results['protocol']['num_labeled']} labels): judge {judge}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return list(curves)


def load_results(path: str | Path) -> dict:
    """A study's results from its folder (``OUT/results.json``) or from a results JSON file."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"--report-from {str(path)!r}: no study folder with a results.json and no results "
                                "file there; pass a study's -o folder or a results JSON such as "
                                "docs/results/study_hc18_cpu.json")
    results = json.loads(file.read_text())
    if "seeds" not in results or "dataset" not in results:
        raise ValueError(f"{file} is not a study's results.json (it has no 'dataset' and 'seeds'); "
                         "pass the results.json that nnUNetv2_rndpo_study wrote")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nnUNetv2_rndpo_study", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=list(DATASETS), help="which study dataset")
    parser.add_argument("--source", help="the dataset's source folder (not needed for 'synthetic')")
    parser.add_argument("--scale", choices=list(SCALES), default="cpu",
                        help="cpu (2 seeds, CPU-sized; its time: docs/study.md, 'Time'), "
                        "gpu (paper-sized), smoke (minutes, synthetic). Default: cpu")
    parser.add_argument("-o", "--output", help="study folder (results.json, report.md, nnU-Net folders)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds (labeled draws). Default: the scale's")
    parser.add_argument("--arms", nargs="+", default=None, help="run only these arm names (as in results.json)")
    parser.add_argument("--labeled", type=int, default=None, help="labeled budget N (cases drawn per seed). "
                        "Default: the scale's (10 at cpu/gpu scale); another N needs its own -o")
    parser.add_argument("--sweep", action="store_true", help="also run the arms beyond the protocol: RN-DPO at β "
                        f"{', '.join(f'{b:g}' for b in SWEEP_BETAS)} under the {' and '.join(SWEEP_JUDGES)} judges, "
                        f"pseudo-label without the supervised anchor under the {' and '.join(ABLATION_JUDGES)} judges, "
                        "RN-DPO with random patches under the oracle")
    parser.add_argument("--no-full-label", action="store_true",
                        help="skip the full-label model (the upper bound; trained once per study folder)")
    parser.add_argument("-device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--report-from", nargs="+", default=None, metavar="STUDY",
                        help="only write a report (with --report-to) from study folders or their results.json files")
    parser.add_argument("--report-to", default="results.md", help="report file for --report-from. Default: results.md")
    args = parser.parse_args(argv)
    if args.report_from:
        results = [load_results(f) for f in args.report_from]
        report = Path(args.report_to)
        print(f"wrote {write_report(results, report, report.parent / 'figures')}")
        return
    if not (args.dataset and args.output):
        parser.error("--dataset and -o are required (or --report-from)")
    Study(args.dataset, args.source, args.scale, args.output, tuple(args.seeds) if args.seeds else None,
          args.device, args.arms, args.sweep, args.labeled, not args.no_full_label).run()


if __name__ == "__main__":
    main()
