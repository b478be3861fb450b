"""``nnUNetv2_rndpo_study``: the study on real data — every arm under every judge, resumable, with a report.

    nnUNetv2_rndpo_study --dataset hippocampus --source /path/to/msd_task04_hippocampus --scale cpu -o OUT
    nnUNetv2_rndpo_study --dataset hc18 --source /path/to/hc18_fetal_head_us --scale cpu -o OUT2
    nnUNetv2_rndpo_study --report-from OUT OUT2 --report-to docs/results.md   # or the results.json files

Per seed s (the seed draws the labeled cases; the test set is the same for every seed):
dataset ``Dataset<id+s>`` from ``nnUNetv2_rndpo_make_dataset`` → plan and preprocess → base model
(``Scale.base_trainer``, fold ``all``) → proposals once (``nnUNetv2_rndpo_proposals``) → every judge's
scores and reliability report (``nnUNetv2_rndpo_judge --report``; a weak oracle's σ is calibrated so that it
orders a share of the within-case proposal pairs right, with a size bias: 70% for ``weak``, 75% and 62% for the
second round's ``weak75`` and ``weak62``; ``local`` arms read scores of the proposals and their hybrids; the
``uncertainty`` judge's
reliability is reported beside the others even where no arm trains on it) → every arm, each an ``nnUNetv2_train`` run
from the base checkpoint in its own results folder, reading the judge's scores as ``judge: external``, with
the test Dice curve of :mod:`nnunetv2_rndpo.evaluation` after every epoch. Plus one full-label model (labeled
and pool cases with their labels, same test set) as the upper bound, and with ``--self-training`` per seed the
baseline a user would pick instead (:mod:`nnunetv2_rndpo.self_training`): the base trainer retrained from scratch
on the labeled cases and the pool with pseudo-labels (``tta``: the base model's ``nnUNetv2_predict``;
``top_proposal``: the judge's top-scored proposal), same test set.

``OUT/results.json`` is rewritten (atomically, merged under a lock with what other runs on the same ``OUT``
saved) after every arm; a rerun skips what is finished and restarts a killed arm from scratch. Runs on the same
``OUT`` share the work (:meth:`Study._share`): the same command started twice (one thread each) splits a seed's
arms, self-training and full-label model between the two. ``OUT/report.md`` and ``OUT/figures/`` are regenerated
at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from nnunetv2_rndpo.atomic_files import atomic_write_text, exclusive_lock, read_jsonl
from nnunetv2_rndpo.comparison import DEFAULT_RESAMPLES
from nnunetv2_rndpo.datasets import MANIFEST
from nnunetv2_rndpo.metrics import curve_summary
from nnunetv2_rndpo.paths import nnunet_environment, results_folder, run_logged
from nnunetv2_rndpo.self_training import SELF_TRAINING_SOURCES, pseudo_labeled_dataset
from nnunetv2_rndpo.study_protocol import (
    ABLATION_JUDGES,
    DATASETS,
    PROPOSALS,
    PROTOCOL_STEP,
    REPORTED_JUDGES,
    SCALES,
    SELF_TRAINING_JUDGE,
    SWEEP_BETAS,
    SWEEP_JUDGES,
    TUNED_METHODS,
    WEAK_JUDGES,
    WEAK_SIZE_BIAS,
    Arm,
    Scale,
    scale_arms,
    sweep_arms,
    tuned_arm,
    tuned_settings,
    tuning_arms,
)
from nnunetv2_rndpo.study_report import load_results, write_study_report

# the judges :meth:`Study.judge_scores` can run (``weak``, ``weak75``, ``weak62``: the calibrated oracle, WEAK_JUDGES)
STUDY_JUDGES = ("oracle", *WEAK_JUDGES, "agreement", "uncertainty", "learned")
RESULTS_LOCK = "results.json.lock"  # beside results.json: held while a run merges its results into the file


@dataclass(frozen=True)
class WorkUnit:
    """One piece of a study that runs on the same ``-o`` share (:meth:`Study._share`): an arm, a self-training
    source, the full-label model. ``name``: its claim's lock file; ``done``: whether ``results.json`` holds it;
    ``do``: runs it and saves it; ``ready``: whether the units it needs are done."""

    name: str
    done: Callable[[], bool]
    do: Callable[[], None]
    ready: Callable[[], bool] = lambda: True


class Study:
    """Runs one dataset's study into ``output`` (see the module docstring)."""

    def __init__(self, dataset: str, source: str | None, scale: str, output: str | Path,
                 seeds: tuple[int, ...] | None = None,
                 device: str = "cpu", only_arms: list[str] | None = None, sweep: bool = False,
                 labeled: int | None = None, full_label: bool = True, self_training: tuple[str, ...] | None = None,
                 self_training_judge: str = SELF_TRAINING_JUDGE, tuning_from: str | Path | None = None,
                 tuning_seed: int = 0, tuning_only: bool = False, full_label_from: str | Path | None = None):
        if dataset not in DATASETS:
            raise ValueError(f"unknown --dataset {dataset!r}; valid: {', '.join(DATASETS)}")
        if scale not in SCALES:
            raise ValueError(f"unknown --scale {scale!r}; valid: {', '.join(SCALES)}")
        if dataset != "synthetic" and not (source and Path(source).is_dir()):
            raise FileNotFoundError(f"--source {source!r} is not a folder; point it at the dataset, e.g. "
                                    "/path/to/msd_task04_hippocampus (imagesTr/, labelsTr/)")
        if labeled is not None and labeled < 1:
            raise ValueError(f"--labeled {labeled}: the labeled budget must be at least 1 case")
        if tuning_only and self_training:
            raise ValueError(f"--tuning-only runs no self-training, but --self-training {' '.join(self_training)} was "
                             "given: drop one of them")
        if self_training is None:  # the scale's (cpu2, gpu2: both sources)
            self_training = SCALES[scale].self_training
        unknown = [s for s in self_training if s not in SELF_TRAINING_SOURCES]
        if unknown:
            raise ValueError(f"unknown --self-training {' '.join(unknown)}; valid: {', '.join(SELF_TRAINING_SOURCES)}")
        if self_training_judge not in STUDY_JUDGES:
            raise ValueError(f"unknown --self-training-judge {self_training_judge!r}; valid: {', '.join(STUDY_JUDGES)}")
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
        self.self_training, self.self_training_judge = tuple(dict.fromkeys(self_training)), self_training_judge
        if tuning_only:  # a study used only for tuning (others take its choice with --tuning-from)
            if not self.scale.tuning or tuning_from is not None:
                raise ValueError(f"--tuning-only runs the tuning arms, which the {scale!r} scale "
                                 f"{'has none of' if not self.scale.tuning else 'borrows with --tuning-from'}: "
                                 "drop --tuning-only, or give a scale that tunes (cpu2, cpu2lean, gpu2)")
            names = [a.name for a in tuning_arms()]
            other = [a for a in only_arms or () if a not in names]
            if other:
                raise ValueError(f"--tuning-only runs only the tuning arms, and --arms {' '.join(other)} "
                                 f"{'is' if len(other) == 1 else 'are'} not one of them; valid: {', '.join(names)}")
            self.only_arms = list(only_arms) if only_arms else names
            self.self_training = ()
        self.results_file = self.root / "results.json"
        self.results = json.loads(self.results_file.read_text()) if self.results_file.is_file() else {}
        if self.results and self.results.get("dataset") != dataset:
            raise ValueError(f"{self.results_file} holds the {self.results.get('dataset')!r} study; use another -o")
        held = self.results.get("protocol", {}).get("num_labeled", self.scale.num_labeled)
        if held != self.scale.num_labeled:
            raise ValueError(f"{self.results_file} holds the study with {held} labeled cases, not "
                             f"{self.scale.num_labeled}; use another -o for another --labeled budget")
        self.borrowed_tuning = None if tuning_from is None else \
            borrowed_tuning(tuning_from, tuning_seed, dataset, scale, self.scale)
        held = self.results.get("protocol", {}).get("tuning_from")
        ours = self.borrowed_tuning and {k: self.borrowed_tuning[k] for k in ("file", "seed")}
        tuned = [s for s, r in self.results.get("seeds", {}).items()
                 if "tuning" in r or any(a.get("tunes") for a in r.get("arms", {}).values())]
        if tuned and _tuning_source(held) != _tuning_source(ours):  # arms run at another choice: not comparable
            raise ValueError(f"{self.results_file} holds a study tuned "
                             f"{'on each seed' if held is None else 'from ' + str(held)}, not "
                             f"{'on each seed' if ours is None else 'from ' + str(ours)}: give the same "
                             "--tuning-from/--tuning-seed as its first run, or use another -o")
        if full_label_from is not None:
            borrowed = borrowed_full_label(full_label_from, dataset, scale, self.scale)
            held = self.results.get("full_label")
            if held and _borrowed_file(held) != _borrowed_file(borrowed):
                raise ValueError(f"{self.results_file} holds a full-label model "
                                 f"{'of its own' if 'from' not in held else 'from ' + held['from']}, not from "
                                 f"{borrowed['from']}: drop --full-label-from, or use another -o")
            self.results["full_label"] = held or borrowed
        self.results.update(dataset=dataset, scale=scale, configuration=self.spec.configuration,
                            protocol={**asdict(self.scale), "proposals": PROPOSALS,
                                      **({"tuning_from": ours} if ours else {}),
                                      **({"tuning_only": True} if tuning_only else {})})
        self.results.setdefault("seeds", {})
        held = {a["judge"] for seed in self.results["seeds"].values()
                for name, a in seed.get("self_training", {}).items() if name == "top_proposal"}
        if "top_proposal" in self.self_training and held - {self_training_judge}:
            raise ValueError(f"{self.results_file} holds self-training on the top proposals of the {held.pop()!r} "
                             f"judge, not {self_training_judge!r}; use another -o for another --self-training-judge")
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
        """Writes ``results.json``: this run's results merged with what other runs on the same ``-o`` saved.

        Two runs at once (other seeds, other ``--arms``) each hold the file as they read it when they started;
        under ``results.json.lock`` each save reads the file, adds what this run does not hold yet
        (:func:`merge_results`) and replaces it atomically, so neither loses the other's arms.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.results_file.with_name(RESULTS_LOCK)):
            if self.results_file.is_file():
                merge_results(self.results, json.loads(self.results_file.read_text()))
            atomic_write_text(self.results_file, json.dumps(self.results, indent=1))

    def _reload(self) -> None:
        """Adds to this run's results what other runs on the same ``-o`` saved since (:func:`merge_results`)."""
        if self.results_file.is_file():
            with exclusive_lock(self.results_file.with_name(RESULTS_LOCK)):
                merge_results(self.results, json.loads(self.results_file.read_text()))

    def _lock(self, name: str, wait: bool = True):
        """:func:`~nnunetv2_rndpo.atomic_files.exclusive_lock` on ``OUT/locks/<name>.lock``: what runs on the same
        ``-o`` do once (a seed's dataset, base model, proposals and judge scores) and the work they share."""
        folder = self.root / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        return exclusive_lock(folder / f"{name}.lock", wait)

    def _share(self, units: list[WorkUnit]) -> None:
        """Does every unit not done yet; several runs on the same ``-o`` (the same command started twice, e.g.
        one per CPU core) share them instead of repeating them.

        First pass: each unit not done, ready and not claimed by another run is claimed (a lock held while it
        runs; a killed run's claim ends with it) and done. Second pass: every unit skipped is waited for in order
        (its claim taken when the other run lets it go): done by then, it is skipped, else (the other run
        stopped, or it was not ready) done here. A unit is "ready" when the units it needs are done (a tuned arm
        needs its seed's tuning arms): all of them come before it, so the second pass never runs it too early.
        """
        skipped = [unit for unit in units if not self._claim_and_do(unit, wait=False)]
        for unit in skipped:
            self._claim_and_do(unit, wait=True)

    def _claim_and_do(self, unit: WorkUnit, wait: bool) -> bool:
        """Does ``unit`` under its claim unless it is done; False (nothing done) when ``wait`` is False and the
        unit is not ready or another run holds it."""
        self._reload()
        if unit.done():
            return True
        if not (wait or unit.ready()):
            return False
        with self._lock(unit.name, wait) as claimed:
            if not claimed:
                return False
            self._reload()  # the run that held it may have finished it
            if not unit.done():
                unit.do()
        return True

    def run(self) -> dict:
        for seed in self.seeds:
            self.run_seed(seed)
        write_study_report([self.results], self.root / "report.md", self.root / "figures")
        print(f"results: {self.results_file}; report: {self.root / 'report.md'}")
        return self.results

    @property
    def report_judges(self) -> tuple[str, ...]:
        """Every judge whose reliability the study measures: the arm judges, the scale's reported judges, then
        ``REPORTED_JUDGES``."""
        return tuple(dict.fromkeys(self.scale.judges + self.scale.reported_judges + REPORTED_JUDGES))

    def dataset_id(self, seed: int, full_label: bool = False, self_training: str | None = None) -> int:
        """The seed's dataset (id + seed), its full-label one (+ 50) or its self-training ones (+ 100: ``tta``,
        + 150: ``top_proposal``)."""
        offset = 50 if full_label else 0
        if self_training is not None:
            offset = 100 + 50 * SELF_TRAINING_SOURCES.index(self_training)
        return self.spec.dataset_id + offset + seed

    def _raw(self, dataset_id: int) -> Path:
        return next((self.root / "nnUNet_raw").glob(f"Dataset{dataset_id:03d}_*"), None)

    def make_dataset(self, seed: int) -> Path:
        did = self.dataset_id(seed)
        if self._raw(did) is None:
            source = ["--synthetic", "2d"] if self.dataset == "synthetic" else ["-i", str(self.source)]
            args = [a for a in self.spec.import_args if self.dataset != "synthetic"]
            pool = ["--pool", str(self.scale.max_pool)] if self.scale.max_pool else []
            if self.scale.num_validation:  # held out of the pool: the tuning's validation cases
                pool += ["--validation", str(self.scale.num_validation)]
            # the test set is drawn with --test-seed 0 for every seed: one fixed held-out set
            self._run(f"make_dataset_{did}", ["nnUNetv2_rndpo_make_dataset", *source, "-d", str(did),
                                              "-n", f"{self.spec.name}Seed{seed}",
                                              "--labeled", str(self.scale.num_labeled),
                                              "--test", str(self.spec.num_test), "--seed", str(seed),
                                              "--test-seed", "0",
                                              *pool, *args], self.root / "logs")
        return self._raw(did)

    def train_base(self, dataset_id: int, trainer: str) -> Path:
        """Plans the dataset and trains ``trainer`` on its fold ``all`` (each once); returns the results folder."""
        self.plan(dataset_id)
        self.train(dataset_id, trainer)
        return results_folder(self.root / "nnUNet_results", self._raw(dataset_id).name, trainer, "nnUNetPlans",
                              self.spec.configuration)

    def plan(self, dataset_id: int) -> float:
        """``nnUNetv2_plan_and_preprocess`` of the dataset, once: its seconds (0 when planned before)."""
        plans = self.root / "nnUNet_preprocessed" / self._raw(dataset_id).name / "nnUNetPlans.json"
        if plans.is_file():
            return 0.0
        return self._run(f"plan_{dataset_id}", ["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c",
                                                self.spec.configuration, "-npfp", "1", "-np", "1"], self.root / "logs",
                         nnUNet_n_proc_DA="1")

    def train(self, dataset_id: int, trainer: str, fold: int | str = "all") -> float:
        """``nnUNetv2_train`` of ``trainer`` on ``fold`` (the study's: ``all``), once: its seconds (0 when trained
        before)."""
        c = self.spec.configuration
        folder = results_folder(self.root / "nnUNet_results", self._raw(dataset_id).name, trainer, "nnUNetPlans", c)
        if (folder / f"fold_{fold}" / "checkpoint_final.pth").is_file():
            return 0.0
        name = f"base_{dataset_id}" + ("" if fold == "all" else f"_fold{fold}")
        return self._run(name, ["nnUNetv2_train", str(dataset_id), c, str(fold), "-tr", trainer,
                                "-device", self.device], self.root / "logs")

    def _base_args(self, dataset_id: int, sources: list[str] | None = None) -> list[str]:
        """The base model and proposal settings, the same for every toolkit command (they name the cache).
        ``sources``: another proposal set than the protocol's (``PROPOSALS``)."""
        return ["-d", str(dataset_id), "-c", self.spec.configuration, "-f", "all", "-tr", self.scale.base_trainer,
                "-n", str(PROPOSALS["num_proposals"]), "--sources", *(sources or PROPOSALS["proposal_sources"]),
                "--seed", str(PROPOSALS["seed"]), "-device", self.device]

    def judge_scores(self, seed: int, judge: str, sources: list[str] | None = None,
                     hybrids: int = 0) -> tuple[Path, dict]:
        """The judge's score CSV and reliability report for a seed's pool (computed once), on the protocol's
        proposals or, with ``sources``, on that proposal set's (generated first if missing); with ``hybrids``, of
        the proposals and that many hybrids per case (``local`` mining; made by the judge command if missing)."""
        tag = ("" if sources is None else "__" + "_".join(sources)) + (f"__hybrids{hybrids}" if hybrids else "")
        csv = self.root / f"seed_{seed}" / f"scores_{judge}{tag}.csv"
        with self._lock(f"seed_{seed}_scores"):  # one run computes them (and their proposals); the others wait
            self._score_once(seed, judge, sources, hybrids, tag, csv)
        return csv, json.loads(csv.with_suffix(".report.json").read_text())

    def _score_once(self, seed: int, judge: str, sources: list[str] | None, hybrids: int, tag: str,
                    csv: Path) -> None:
        did, folder = self.dataset_id(seed), self.root / f"seed_{seed}"
        if not csv.with_suffix(".report.json").is_file():
            if sources is not None:
                self._run(f"proposals{tag}", ["nnUNetv2_rndpo_proposals", *self._base_args(did, sources)], folder)
            if judge in WEAK_JUDGES:
                extra = ["--judge", "oracle", "--pair-accuracy", str(WEAK_JUDGES[judge]), "--size-bias",
                         str(WEAK_SIZE_BIAS)]
            elif judge == "learned":
                if not (results_folder(self.root / "nnUNet_results", self._raw(did).name, self.scale.base_trainer,
                                       "nnUNetPlans", self.spec.configuration, "all") / "rndpo_judge.pth").is_file():
                    self._run(f"train_judge_{did}", ["nnUNetv2_rndpo_train_judge", *self._base_args(did)], folder)
                extra = ["--judge", "learned"]
            else:
                extra = ["--judge", judge]
            if hybrids:
                extra += ["--hybrids", str(hybrids)]
            self._run(f"judge_{judge}{tag}", ["nnUNetv2_rndpo_judge", *self._base_args(did, sources), *extra,
                                                "--report", "-o", str(csv)], folder)

    def run_seed(self, seed: int) -> None:
        """The seed's dataset, base model, proposals and judge reports (once, under a lock), then its arms, its
        self-training and, on the first seed, the full-label model, shared with other runs on the same ``-o``
        (:meth:`_share`)."""
        record = self.results["seeds"].setdefault(str(seed), {"arms": {}, "judges": {}})
        with self._lock(f"seed_{seed}_base"):  # a second run waits here, then finds it all done
            raw = self.make_dataset(seed)
            did = self.dataset_id(seed)
            if self.scale.tuning and not (raw / "labelsVal").is_dir():
                raise ValueError(f"{raw} has no validation cases (imagesVal/labelsVal), which the {self.scale_name} "
                                 "scale tunes β and the learning rate on: it was made by an earlier run without them; "
                                 "use another -o (or remove this dataset) so that it is made again with --validation")
            base_folder = self.train_base(did, self.scale.base_trainer)
            self._run("proposals", ["nnUNetv2_rndpo_proposals", *self._base_args(did)], self.root / f"seed_{seed}")
        manifest = raw / MANIFEST
        if manifest.is_file():
            record["splits"] = {k: len(v) for k, v in json.loads(manifest.read_text())["splits"].items()}
        for judge in self.report_judges:
            record["judges"][judge] = self.judge_scores(seed, judge)[1]
        record.update(weak_calibrations(record["judges"]))
        self._save()
        s = self.scale
        if self.borrowed_tuning:  # the β and learning rate chosen on another seed's validation cases: no tuning arms
            record.setdefault("tuning", self.borrowed_tuning["choice"])
        arms = scale_arms(s, s.tuning and not self.borrowed_tuning) + (sweep_arms() if self.sweep else [])
        for arm in arms:
            if arm.name in record["arms"] and "drift" not in record["arms"][arm.name]:  # results of older runs
                fold = self._arm_fold(seed, arm, base_folder)
                if (fold / "rndpo_metrics.jsonl").is_file():
                    record["arms"][arm.name]["drift"] = read_arm_metrics(fold)["drift"]
        tuning = [a.name for a in arms if a.tunes]
        units = [WorkUnit(f"seed_{seed}_{arm.folder_name}", done=lambda arm=arm: arm.name in record["arms"],
                          do=lambda arm=arm: self._do_arm(seed, record, arm, base_folder),
                          **({"ready": lambda: "tuning" in record or all(n in record["arms"] for n in tuning)}
                             if self._is_tuned(arm) else {}))
                 for arm in arms if not (self.only_arms and arm.name not in self.only_arms)]
        units += [WorkUnit(f"seed_{seed}_self_training_{source}",
                           done=lambda source=source: source in record.get("self_training", {}),
                           do=lambda source=source: self.run_self_training(seed, source))
                  for source in self.self_training]
        if self.full_label and seed == self.seeds[0]:
            units.append(WorkUnit("full_label", done=lambda: "full_label" in self.results, do=self.run_full_label))
        self._share(units)
        self._save()

    def _is_tuned(self, arm: Arm) -> bool:
        """Whether the arm runs at its seed's tuning choice (so it needs the seed's tuning arms finished)."""
        return self.scale.tuning and not arm.tunes and arm.method in TUNED_METHODS

    def _do_arm(self, seed: int, record: dict, arm: Arm, base_folder: Path) -> None:
        """Runs one arm (at its seed's tuning choice if its method is tuned) and saves its record."""
        if self._is_tuned(arm):
            if "tuning" not in record:
                record["tuning"] = tuned_settings(record["arms"])
                self._save()
            arm = tuned_arm(arm, record["tuning"])
        scores = None
        if arm.judge:
            sources = arm.overrides.get("proposal_sources")
            scores, report = self.judge_scores(seed, arm.judge, sources, arm.hybrids)
            if arm.hybrids:  # the judge on the proposals and their hybrids: the local arms' pairs
                record.setdefault("judges_with_hybrids", {})[arm.judge] = report
            elif sources is None:
                record["judges"][arm.judge] = report
            else:
                record.setdefault("judges_by_proposals", {})[f"{arm.judge} | {' '.join(sources)}"] = report
        chosen = record.get("tuning", {}).get(arm.method, {}).get("arm")
        if chosen in record["arms"] and self.arm_config(arm, scores) == record["arms"][chosen]["config"]:
            # the tuned arm is the chosen tuning arm itself (same judge, mining and settings): not run twice
            same = {k: v for k, v in record["arms"][chosen].items() if k != "tunes"}
            record["arms"][arm.name] = {**same, "method": arm.method, "same_run_as": chosen}
        else:
            record["arms"][arm.name] = self.run_arm(seed, arm, base_folder, scores)
        self._save()

    def arm_config(self, arm: Arm, scores: Path | None) -> dict:
        """The ``rndpo_config.json`` of an arm: the proposals, the scale's schedule, the protocol's step, the arm's
        overrides (a ``learning_rate_factor`` scales the scale's learning rate) and the judge's scores."""
        s, overrides = self.scale, dict(arm.overrides)
        # 6 significant digits: 3e-05, not 1e-05 * 3 = 3.0000000000000004e-05
        learning_rate = float(f"{s.learning_rate * overrides.pop('learning_rate_factor', 1.0):.6g}")
        config = {**PROPOSALS, "num_epochs": s.num_epochs, "num_iterations_per_epoch": s.iterations_per_epoch,
                  "num_val_iterations_per_epoch": 5, "learning_rate": learning_rate, "eval_every": 1,
                  "base_trainer": s.base_trainer, "mining": arm.mining, "final_validation": False, **PROTOCOL_STEP,
                  **overrides}
        if scores is not None:
            config.update(judge="external", judge_scores=str(scores))
        return config

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
        config = self.arm_config(arm, scores)
        config_file = run_root / "rndpo_config.json"
        config_file.write_text(json.dumps(config, indent=1))
        seconds = self._run("train", ["nnUNetv2_train", str(did), self.spec.configuration, "all", "-tr", arm.trainer,
                                      "-device", self.device], run_root,
                            nnUNet_results=str(run_root / "nnUNet_results"), nnUNet_rndpo_config=str(config_file))
        metrics = read_arm_metrics(fold)
        iterations = [i * s.iterations_per_epoch for i in range(len(metrics["curve"]))]  # eval_every = 1, row 0 = base
        for checkpoint in fold.glob("checkpoint_*.pth"):  # the curve is what the study keeps; weights are large
            checkpoint.unlink()
        validation = {"validation_summary": curve_summary(metrics["validation_curve"])} \
            if metrics.get("validation_curve") else {}
        return {"method": arm.method, "judge": arm.judge, "mining": arm.mining, "trainer": arm.trainer,
                "config": config, **({"tunes": arm.tunes} if arm.tunes else {}),
                "iterations": iterations, "summary": curve_summary(metrics["curve"]), **validation,
                "seconds": round(seconds), **metrics}

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

    def run_self_training(self, seed: int, source: str) -> None:
        """The base trainer retrained from scratch on the labeled cases and the pool with ``source``'s
        pseudo-labels, tested on the seed's test set: ``results["seeds"][seed]["self_training"][source]``.

        Steps, each once (their seconds kept in ``seed_<s>/self_training/<source>/seconds.json``, so a killed run
        resumes at the step it was in): the pseudo-labels in ``seed_<s>/self_training/<source>/pseudo_labels/``
        (``tta``: ``nnUNetv2_predict`` of the pool with the base model; ``top_proposal``: the judge's top-scored
        proposal per case, ``python -m nnunetv2_rndpo.self_training``), the raw dataset
        (:func:`~nnunetv2_rndpo.self_training.pseudo_labeled_dataset`, id :meth:`dataset_id`), plan and
        preprocess, train, test Dice per case.
        """
        from nnunetv2_rndpo.self_training import pseudo_label_dice

        record = self.results["seeds"][str(seed)].setdefault("self_training", {})
        if source in record:
            return
        did, raw = self.dataset_id(seed), self._raw(self.dataset_id(seed))
        folder = self.root / f"seed_{seed}" / "self_training" / source
        folder.mkdir(parents=True, exist_ok=True)
        seconds_file, labels = folder / "seconds.json", folder / "pseudo_labels"
        seconds = json.loads(seconds_file.read_text()) if seconds_file.is_file() else {}
        judge = self.self_training_judge if source == "top_proposal" else None
        if "pseudo_labels" not in seconds:
            shutil.rmtree(labels, ignore_errors=True)  # a killed step's files: made again
            if source == "tta":
                command = ["nnUNetv2_predict", "-i", str(raw / "imagesUnlabeled"), "-o", str(labels), "-d", str(did),
                           "-c", self.spec.configuration, "-f", "all", "-tr", self.scale.base_trainer,
                           "-device", self.device, "-npp", "0", "-nps", "0", "--disable_progress_bar"]
            else:
                scores = self.judge_scores(seed, judge)[0]
                command = [Path(sys.executable).name, "-m", "nnunetv2_rndpo.self_training", *self._base_args(did),
                           "--scores", str(scores), "-o", str(labels), "--quiet"]
            seconds["pseudo_labels"] = self._run(f"pseudo_labels_{source}", command, folder)
            atomic_write_text(seconds_file, json.dumps(seconds))
        st_id = self.dataset_id(seed, self_training=source)
        if self._raw(st_id) is None or not (self._raw(st_id) / "dataset.json").is_file():
            suffix = "Tta" if source == "tta" else f"Top{judge.capitalize()}"
            pseudo_labeled_dataset(raw, self.root / "nnUNet_raw", st_id, labels, suffix)
        for step, run in (("plan", lambda: self.plan(st_id)),
                          ("train", lambda: self.train(st_id, self.scale.base_trainer))):
            if step not in seconds:
                seconds[step] = run()
                atomic_write_text(seconds_file, json.dumps(seconds))
        dice = self._model_dice_per_case(st_id, self.scale.base_trainer)
        dataset = json.loads((raw / "dataset.json").read_text())
        pool = len(list(labels.glob(f"*{dataset['file_ending']}")))
        record[source] = {
            "dice": float(np.nanmean(list(dice.values()))), "dice_per_case": dice,
            "seconds": {**{k: round(v, 1) for k, v in seconds.items()}, "total": round(sum(seconds.values()), 1)},
            "pseudo_label_dice": pseudo_label_dice(labels, raw / "labelsUnlabeled", dataset),
            "trainer": self.scale.base_trainer, "judge": judge,
            "cases": {"labeled": dataset["numTraining"], "pseudo": pool}}
        self._save()

    def _model_dice_per_case(self, dataset_id: int, trainer: str) -> dict[str, float]:
        """:func:`~nnunetv2_rndpo.evaluation.model_dice_per_test_case` of a trained model (in a subprocess)."""
        code = ("import json; from nnunetv2_rndpo.evaluation import model_dice_per_test_case as d; "
                f"print(json.dumps(d({dataset_id}, {self.spec.configuration!r}, 'all', {trainer!r}, "
                f"device={self.device!r})))")
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"evaluating Dataset{dataset_id} {trainer} failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def _model_dice(self, dataset_id: int, trainer: str) -> float:
        code = ("import sys; from nnunetv2_rndpo.evaluation import model_dice_on_test_set as d; "
                f"print(d({dataset_id}, {self.spec.configuration!r}, 'all', {trainer!r}, device={self.device!r}))")
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"evaluating Dataset{dataset_id} {trainer} failed:\n{out.stderr[-2000:]}")
        return float(out.stdout.strip().splitlines()[-1])


def borrowed_tuning(results_file: str | Path, seed: int, dataset: str, scale_name: str, scale: Scale) -> dict:
    """The β and learning rate that a finished study's seed chose on its validation cases (``--tuning-from``), for
    a study that runs no tuning arms of its own: ``{"file", "seed", "choice"}``, ``choice`` as
    :func:`~nnunetv2_rndpo.study_protocol.tuned_settings` gives it.

    Assumption: one seed's choice holds for the others (the issue allows "one dataset and budget used only for
    tuning"); it saves each later seed the tuning arms. The choice was made on validation cases, never on the test
    set, so reusing it keeps the tuning honest.

    Raises:
        ValueError: the file is not a study of the same dataset, scale and label budget, or its seed has no
            finished tuning (its tuning arms are not all done).
    """
    path, results = _same_protocol_study("--tuning-from", results_file, dataset, scale_name, scale)
    record = results.get("seeds", {}).get(str(seed))
    if record is None:
        raise ValueError(f"--tuning-from {path} has no seed {seed}; its seeds: {', '.join(results.get('seeds', {}))}")
    try:
        choice = record.get("tuning") or tuned_settings(record["arms"])
    except ValueError as error:
        raise ValueError(f"--tuning-from {path}, seed {seed}: {error}; finish that seed's tuning arms first") from None
    return {"file": str(path), "seed": seed, "choice": choice}


def borrowed_full_label(results_file: str | Path, dataset: str, scale_name: str, scale: Scale) -> dict:
    """The full-label model's record of a finished study (``--full-label-from``), with ``"from"`` (its file): the
    upper bound of a study that trains none of its own.

    Assumption: the same dataset, scale and label budget make the same full-label model: it trains on the labeled
    and pool cases of its study's first seed with their labels and is tested on the same test set (the test draw
    does not depend on the seed). Where that first seed is also ours, it is the model we would train.

    Raises:
        ValueError: the file is not a study of the same dataset, scale and label budget, or it has no full-label
            model yet.
    """
    path, results = _same_protocol_study("--full-label-from", results_file, dataset, scale_name, scale)
    if "full_label" not in results:
        raise ValueError(f"--full-label-from {path} has no full-label model yet: run that study to its end first "
                         "(without --no-full-label)")
    return {**results["full_label"], "from": str(path)}


def _same_protocol_study(flag: str, results_file: str | Path, dataset: str, scale_name: str,
                         scale: Scale) -> tuple[Path, dict]:
    """The results file (or folder) given with ``flag`` and its contents, checked to be a study of ``dataset`` at
    ``scale_name`` with ``scale``'s label budget (what another study may borrow from)."""
    path = _results_file(results_file)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {results_file}: no such results file; give a study's results.json "
                                "(e.g. docs/results/study2_hc18_n5_cpu2_restart.json) or its folder")
    results = json.loads(path.read_text())
    held = (results.get("dataset"), results.get("scale"), results.get("protocol", {}).get("num_labeled"))
    if held != (dataset, scale_name, scale.num_labeled):
        raise ValueError(f"{flag} {path} is the {held[0]!r} study at scale {held[1]!r} with {held[2]} labeled "
                         f"cases, not {dataset!r} at {scale_name!r} with {scale.num_labeled}: borrow from the same "
                         "dataset, scale and budget")
    return path, results


def _results_file(path: str | Path) -> Path:
    """A study's ``results.json`` from its folder, or the results file itself."""
    path = Path(path)
    return path / "results.json" if path.is_dir() else path


def _file_identity(path: str | Path) -> tuple[str, str]:
    """A borrowed-from results file's folder and name, so that a relative and an absolute path to the same file
    agree and two studies' ``results.json`` do not."""
    file = Path(path).resolve()
    return file.parent.name, file.name


def _borrowed_file(record: dict) -> tuple | None:
    """What identifies the file a borrowed ``full_label`` record came from (None: the study's own model)."""
    return _file_identity(record["from"]) if "from" in record else None


def _tuning_source(borrowed: dict | None) -> tuple | None:
    """What identifies a ``tuning_from`` record: its file (:func:`_file_identity`) and the seed; None for no
    record."""
    return (*_file_identity(borrowed["file"]), borrowed["seed"]) if borrowed else None


def weak_calibrations(judges: dict[str, dict]) -> dict[str, dict]:
    """``<judge>_calibration`` per weak judge (WEAK_JUDGES) in a seed's reliability reports ``judges``: its target
    pair accuracy, size bias, calibrated σ and measured within-case pair accuracy (``weak_calibration`` for
    ``weak``, as in the first round). A report from before the pair-accuracy target gives none."""
    return {f"{judge}_calibration": {"size_bias": WEAK_SIZE_BIAS, "target_pair_accuracy": target,
                                     "sigma": judges[judge].get("judge/sigma"),
                                     "pair_accuracy": judges[judge].get("pairwise/accuracy")}
            for judge, target in WEAK_JUDGES.items() if "judge/target_pair_accuracy" in judges.get(judge, {})}


def merge_results(ours: dict, on_disk: dict) -> dict:
    """Adds to ``ours`` (in place) every key of ``on_disk`` it lacks, recursively into nested dicts; returns it.

    Where both hold a value that is not a dict (an arm's curve, the protocol), ``ours`` is kept: a run's own
    results are the newest it knows of, and two runs of one arm give the same record.
    """
    for key, value in on_disk.items():
        if key not in ours:
            ours[key] = value
        elif isinstance(ours[key], dict) and isinstance(value, dict):
            merge_results(ours[key], value)
    return ours


def read_arm_metrics(fold: Path) -> dict:
    """What the study keeps of a finished arm: its test-Dice curve (row 0 = base) and, aligned with it, the Dice
    of every test case at each point (``curve_per_case``: one ``{case_id: Dice}`` per row; left out when the
    metrics predate ``eval/dice_per_case``), its drift from the base per epoch (``guard/kl``: mean KL of the
    policy to the reference on the guard cases, nnunetv2_rndpo/drift_guard.py) and the number of pairs it trained on;
    on a dataset with a validation split also ``validation_curve`` and ``validation_curve_per_case``
    (``eval/val_dice``)."""
    rows = read_jsonl(fold / "rndpo_metrics.jsonl")
    evaluated = [r for r in rows if "eval/dice" in r]
    pairs_file = fold / "rndpo_pairs.json"
    per_case = {"curve_per_case": [r["eval/dice_per_case"] for r in evaluated]} \
        if evaluated and all("eval/dice_per_case" in r for r in evaluated) else {}
    validated = [r for r in rows if "eval/val_dice" in r]
    if validated:
        per_case.update(validation_curve=[r["eval/val_dice"] for r in validated],
                        validation_curve_per_case=[r["eval/val_dice_per_case"] for r in validated])
    return {"curve": [r["eval/dice"] for r in evaluated], **per_case,
            "drift": [r["guard/kl"] for r in rows if "guard/kl" in r],
            "pairs": len(json.loads(pairs_file.read_text())["pairs"]) if pairs_file.is_file() else None}


def full_label_dataset(source: Path, raw_root: Path, dataset_id: int) -> Path:
    """``Dataset<id>_<name>FullLabel``: ``source``'s labeled and pool cases, all with labels, and its test set:
    :func:`~nnunetv2_rndpo.self_training.pseudo_labeled_dataset` with the pool's hidden labels
    (``labelsUnlabeled/``) as its labels. Files are linked, not copied."""
    source = Path(source)
    if not (source / "labelsUnlabeled").is_dir():
        raise FileNotFoundError(f"{source / 'labelsUnlabeled'} is missing: the full-label model needs the pool's "
                                "labels (make the dataset with nnUNetv2_rndpo_make_dataset)")
    return pseudo_labeled_dataset(source, raw_root, dataset_id, source / "labelsUnlabeled", "", kind="FullLabel")


# ---------------------------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nnUNetv2_rndpo_study", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=list(DATASETS), help="which study dataset")
    parser.add_argument("--source", help="the dataset's source folder (not needed for 'synthetic')")
    parser.add_argument("--scale", choices=list(SCALES), default="cpu",
                        help="cpu (2 seeds, CPU-sized; its time: docs/study.md, 'Time'), "
                        "gpu (paper-sized), cpu2 and gpu2 (the second round: longer fine-tuning, 4 seeds, weak "
                        "judges weak75 and weak62, self-training, β and learning rate tuned on validation cases; "
                        "docs/study.md, 'Second round'), cpu2lean (cpu2 in 11 arms instead of 25 and 3 seeds, for "
                        "a dataset whose arms are slow, e.g. Hippocampus: docs/study.md, 'Hippocampus, second "
                        "round'), smoke and smoke2 (minutes, synthetic: the first and second "
                        "round's machinery). Default: cpu")
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
    parser.add_argument("--self-training", nargs="+", default=None, choices=SELF_TRAINING_SOURCES,
                        help="also run self-training per seed (the base trainer retrained from scratch on the labeled "
                        "cases and the pool with pseudo-labels): tta = the base model's nnUNetv2_predict, "
                        "top_proposal = the judge's top-scored proposal (docs/study.md, 'Self-training'). "
                        "Default: the scale's (cpu2, gpu2: both; the others: none)")
    parser.add_argument("--no-self-training", action="store_true",
                        help="run no self-training, not even the scale's")
    parser.add_argument("--self-training-judge", default=SELF_TRAINING_JUDGE, choices=STUDY_JUDGES,
                        help=f"the judge of --self-training top_proposal. Default: {SELF_TRAINING_JUDGE}")
    parser.add_argument("--tuning-from", default=None, metavar="RESULTS",
                        help="take β and the learning rate from the tuning a finished study's seed made on its "
                        "validation cases (its results.json or folder, same dataset, scale and --labeled), and run "
                        "no tuning arms: saves each seed the tuning arms (docs/study.md, 'Honest tuning'). "
                        "Default: every seed tunes on its own validation cases (cpu2, gpu2)")
    parser.add_argument("--tuning-seed", type=int, default=0,
                        help="the seed of --tuning-from whose choice is taken. Default: 0")
    parser.add_argument("--tuning-only", action="store_true",
                        help="run only the tuning arms (and the full-label model; no self-training): a study used "
                        "only for tuning, whose choice other studies take with --tuning-from (docs/study.md, "
                        "'Hippocampus, second round')")
    parser.add_argument("--full-label-from", default=None, metavar="RESULTS",
                        help="take the full-label model (the upper bound) from a finished study (its results.json "
                        "or folder, same dataset, scale and --labeled) instead of training one")
    parser.add_argument("-device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--report-from", nargs="+", default=None, metavar="STUDY",
                        help="only write a report (with --report-to) from study folders or their results.json files")
    parser.add_argument("--report-to", default="results.md", help="report file for --report-from. Default: results.md")
    parser.add_argument("--bootstrap-resamples", type=int, default=DEFAULT_RESAMPLES,
                        help="bootstrap resamples of each paired comparison's 95%% CI (more: steadier, slower). "
                        f"Default: {DEFAULT_RESAMPLES}")
    args = parser.parse_args(argv)
    if args.report_from:
        results = [load_results(f) for f in args.report_from]
        report = Path(args.report_to)
        print(f"wrote {write_study_report(results, report, report.parent / 'figures', args.bootstrap_resamples)}")
        return
    if not (args.dataset and args.output):
        parser.error("--dataset and -o are required (or --report-from)")
    Study(args.dataset, args.source, args.scale, args.output, tuple(args.seeds) if args.seeds else None,
          args.device, args.arms, args.sweep, args.labeled, not args.no_full_label, self_training_sources(args),
          args.self_training_judge, args.tuning_from, args.tuning_seed, args.tuning_only, args.full_label_from).run()


def self_training_sources(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The CLI's self-training sources: none with --no-self-training, the given ones, or None (the scale's)."""
    if args.no_self_training and args.self_training:
        raise SystemExit("nnUNetv2_rndpo_study: --self-training and --no-self-training both given; drop one")
    return () if args.no_self_training else (tuple(args.self_training) if args.self_training else None)


if __name__ == "__main__":
    main()
