"""Everything the preference trainers add to an nnU-Net training run, held in one object.

:class:`PreferencePhase` is created in ``on_train_start`` after nnU-Net has initialised the network and
its data loaders (so nothing here ends up in ``debug.json``). It loads the base model into the policy
and a frozen reference, prepares the unlabeled pool, proposals, judge scores and pairs, replaces the
training data loader by one that yields preference batches, and writes the per-epoch metrics.
It holds two components: the metrics log (:class:`~nnunetv2_rndpo.metrics_log.MetricsLog`, the JSONL rows and
their plot) and the drift guard (:class:`~nnunetv2_rndpo.drift_guard.DriftGuard`, KL to the reference on held-out
pool cases, rollback).

Files in the fold folder:
- ``debug.json``            nnU-Net's, with ``"rndpo"`` added: the provenance (effective config, base model
                            and the SHA-256 of its checkpoint), the one file of ours that
                            ``nnUNetv2_export_model_to_zip`` packs
- ``rndpo_config.json``     the effective configuration
- ``rndpo_reference.pth``   the frozen reference (= base) weights, restored on ``--c``
- ``rndpo_pairs.json``      the mined pairs with both judge scores (and true Dice when hidden labels exist)
- ``rndpo_metrics.jsonl``   one row per epoch: ``rewards/*``, ``logps/*``, ``region/*``, ``pairs/skipped``,
                            ``judge/*`` and, when evaluated, ``eval/dice`` and ``eval/dice_per_case`` (test set;
                            ``eval/val_dice`` and ``eval/val_dice_per_case`` on a validation split)
- ``rndpo_progress.png``    a plot of them
- ``checkpoint_*.rndpo.json`` the patch sampler's generator state next to each nnU-Net checkpoint
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from nnunetv2_rndpo.atomic_files import atomic_write, atomic_write_text
from nnunetv2_rndpo.checkpoint import base_weights, describe_trained_models, load_checkpoint_file
from nnunetv2_rndpo.config import CONFIG_ENV_VAR
from nnunetv2_rndpo.distributed import barrier, broadcast_from_rank0, rank_and_world
from nnunetv2_rndpo.drift_guard import GUARD_KEYS, DriftGuard
from nnunetv2_rndpo.evaluation import EVALUATION_SPLITS, DiceCurve, policy_predictor
from nnunetv2_rndpo.messages import TIMED_ITERATIONS, pairs_summary, schedule_summary, time_estimate
from nnunetv2_rndpo.metrics_log import LOSS_TERMS, METRIC_KEYS, MetricsLog, register_logger_keys
from nnunetv2_rndpo.mining import (
    MiningParams,
    Pair,
    mine_pool,
    pairs_document,
    read_pairs_file,
    require_trainable_pairs,
)
from nnunetv2_rndpo.paths import results_folder
from nnunetv2_rndpo.pipeline import (
    BaseModel,
    JudgeSettings,
    ProposalSettings,
    hidden_true_dice,
    labeled_reliability,
    open_pool,
    score_pool,
)
from nnunetv2_rndpo.pool import PreprocessedPool
from nnunetv2_rndpo.proposals import ProposalCache
from nnunetv2_rndpo.sampling import PairPatchSampler, PreferenceBatchLoader
from nnunetv2_rndpo.schedule import split_batch


def epoch_metrics(train_outputs: list[dict]) -> dict[str, float]:
    """Aggregates per-step sums into per-epoch means.

    ``rewards/*`` and ``logps/*`` are means over the pairs that entered the loss (0 if none did);
    ``logps/*`` are per-voxel means over D (Σ_D ℓ_θ / |D|); ``region/size_mean`` is the mean |D| of a
    patch, ``region/frac`` the mean |D| / V; ``pairs/skipped`` counts patches below ``min_region_voxels``;
    ``loss/<term>`` is the epoch mean of each term of the loss (preference, consistency, agreement, sft).
    """
    total = lambda key: float(sum(o.get(key, 0.0) for o in train_outputs))  # noqa: E731
    used, patches = total("n/used"), total("n/patches")
    metrics = {"loss": float(np.mean([o["loss"] for o in train_outputs]))}
    if any("n/used" in o for o in train_outputs):
        for key in METRIC_KEYS:
            denominator = patches if key.startswith("region/") else used
            metrics[key] = total(f"sum/{key}") / denominator if denominator else 0.0
        metrics["pairs/skipped"] = patches - used
    for key in sorted({k for o in train_outputs for k in o if k.startswith("loss/")}):
        metrics[key] = float(np.mean([o[key] for o in train_outputs if key in o]))
    return metrics


class PreferenceBatches:
    """The training iterator nnU-Net's loop pulls from: preference batches, plus labeled batches if needed."""

    def __init__(self, preference_loader, labeled_loader=None):
        self.preference_loader, self.labeled_loader = preference_loader, labeled_loader

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = {"preference": next(self.preference_loader)}
        if self.labeled_loader is not None:
            batch["labeled"] = next(self.labeled_loader)
        return batch


class PreferencePhase:
    """The preference-specific state of one trainer (see the module docstring)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.rank, self.world = rank_and_world()
        self.config = trainer.rndpo_config
        self.base: BaseModel | None = None  # built in setup, once the reference network exists
        self.fold_folder = Path(trainer.output_folder)
        self.reference: torch.nn.Module | None = None
        self.pairs: list[Pair] = []
        self.judge_metrics: dict[str, float] = {}
        # rank 0, when eval_every > 0: the test curve (when the dataset has a test set) and the validation curve (when
        # it has imagesVal/labelsVal), by split name
        self.curves: dict[str, DiceCurve] = {}
        self._labeled_loader = None
        self.metrics_log = MetricsLog(self.fold_folder)
        self.drift_guard = DriftGuard(trainer, self.config, self.rank, self._policy_predictor)
        self._iterations_done = 0
        self._timer_start = 0.0

    # ------------------------------------------------------------------ paths

    @property
    def cascade_labels(self) -> list[int] | None:
        """For a cascade, the labels of the previous-stage one-hot input channels (:mod:`nnunetv2_rndpo.cascade`)."""
        t = self.trainer
        return None if t.previous_stage is None else t.label_manager.foreground_labels

    def base_checkpoint(self) -> Path:
        """The base model's checkpoint; a missing one is an error that prints the command creating it."""
        t, cfg = self.trainer, self.config
        if cfg.base_checkpoint:
            path = Path(cfg.base_checkpoint)
        else:
            dataset_results = Path(t.output_folder_base).parent
            path = results_folder(dataset_results.parent, dataset_results.name, cfg.base_trainer,
                                  t.plans_manager.plans_name, t.configuration_name, t.fold) / "checkpoint_final.pth"
        if cfg.base_checkpoint and not path.is_file():
            raise FileNotFoundError(f"base_checkpoint {path} (in the file named by $nnUNet_rndpo_config) "
                                    f"{'is a directory' if path.is_dir() else 'does not exist'}; point it at a "
                                    "checkpoint_final.pth written by nnUNetv2_train, or remove it to use base_trainer")
        if not path.is_file():
            dataset_id = t.plans_manager.dataset_name.split("_")[0].replace("Dataset", "")
            found, candidates = describe_trained_models(Path(t.output_folder_base).parent, t.plans_manager.plans_name,
                                                        t.configuration_name, t.fold, exclude=(t.__class__.__name__,))
            trainer = candidates[0] if candidates else "<the base model's trainer>"
            raise FileNotFoundError(
                f"Base checkpoint {path} not found (base_trainer {cfg.base_trainer!r}). The preference phase "
                f"fine-tunes a trained nnU-Net model.\n{found}\nIf the base model was trained with another trainer, "
                "set "
                f"{{\"base_trainer\": \"{trainer}\"}} (or base_checkpoint: a path) in the file named by "
                f"$nnUNet_rndpo_config; or train it first with\n  nnUNetv2_train {int(dataset_id)} "
                f"{t.configuration_name} {t.fold} -tr {cfg.base_trainer} -p {t.plans_manager.plans_name}"
            )
        return path

    # ------------------------------------------------------------------ setup

    def setup(self, sampler_state: dict | None = None) -> None:
        """Prepares everything, then writes the fold's files (config, reference, pairs, metrics row 0).

        The files are written last, when nothing can fail anymore: a run that fails while preparing
        (a bad pool case, no pairs, a missing test label) leaves the fold folder as it found it.
        """
        t = self.trainer
        t.print_to_log_file(schedule_summary(self.config, t.__class__.__name__, self.config.batch_size or t.batch_size,
                                             os.environ.get(CONFIG_ENV_VAR)))
        new_pairs = None
        self._load_policy_and_reference()
        self.base = BaseModel.from_trainer(t, self.reference, self.base_checkpoint())
        pool, cache = open_pool(self.base, ProposalSettings.from_config(self.config), self.config.unlabeled_dir,
                                generate=True, num_parts=self.world, part_id=self.rank, progress=True,
                                on_bad_case=self.config.on_bad_case, log=t.print_to_log_file, barrier=barrier,
                                name_large_cases=t.current_epoch == 0)
        self.drift_guard.choose_cases(pool)
        pairs_file = self.fold_folder / "rndpo_pairs.json"
        if t.current_epoch > 0 and pairs_file.is_file():
            saved = json.loads(pairs_file.read_text())
            self.pairs = [Pair(**p) for p in saved["pairs"]]
            self.judge_metrics = saved["judge_metrics"]
        else:
            if self.rank == 0:  # one judgement for all ranks, sent to the others
                self._judge_and_mine(pool, cache)
                if self.config.label_smoothing == "auto":
                    self.judge_metrics.update(self._measure_flip_rate())
                new_pairs = pairs_document(self.pairs, self.judge_metrics, cache)
            self.pairs, self.judge_metrics = broadcast_from_rank0((self.pairs, self.judge_metrics))
        if self.config.label_smoothing == "auto":
            self._resolve_label_smoothing()
        source = (f"from {self.config.pairs_file}" if self.config.pairs_file else
                  f"judge {self.config.judge}, mining {self.config.mining}")
        t.print_to_log_file(f"{pairs_summary(self.pairs, len(pool.case_ids), source)}; {self.judge_metrics}")
        self._install_dataloader(pool, cache, sampler_state)
        register_logger_keys(t.logger, (*METRIC_KEYS, *LOSS_TERMS, *GUARD_KEYS, "pairs/skipped", *self.judge_metrics))
        self._prepare_evaluation()
        self.drift_guard.prepare(pool, self.reference, self.cascade_labels)
        if self.rank != 0:
            return
        base_row = {k: v for split, curve in self.curves.items() if t.current_epoch == 0
                    for k, v in curve.base_dice(self.reference).row(split).items()}
        self._write_run_files(new_pairs)
        self._record_provenance(cache)
        if t.current_epoch == 0:
            self.metrics_log.start(base_row)
        else:
            self.metrics_log.truncate(t.current_epoch)

    def provenance(self, cache: ProposalCache) -> dict:
        """Where this model comes from: the effective config, the base checkpoint (path, trainer, SHA-256 of the
        file), the proposals and the number of pairs it was fine-tuned on."""
        from nnunetv2_rndpo import __version__

        base = self.base_checkpoint()
        digest = hashlib.sha256()
        with open(base, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
        return {"trainer": self.trainer.__class__.__name__, "nnunetv2_rndpo": __version__,
                "config": self.config.to_dict(), "base_checkpoint": str(base),
                "base_model": base.parent.parent.name, "base_fold": base.parent.name,
                "base_checkpoint_sha256": digest.hexdigest(), "proposals": str(cache.folder), "pairs": len(self.pairs)}

    def _record_provenance(self, cache: ProposalCache) -> None:
        """Adds :meth:`provenance` as ``"rndpo"`` to nnU-Net's ``debug.json`` in the fold folder.

        ``nnUNetv2_export_model_to_zip`` packs, per fold, the checkpoints, ``debug.json``, ``progress.png`` and
        ``validation/summary.json``, not ``rndpo_config.json``; ``debug.json`` (written by nnU-Net in
        ``on_train_start``, just before this) carries the model's provenance through export and install.
        """
        path = self.fold_folder / "debug.json"
        debug = json.loads(path.read_text()) if path.is_file() else {}
        debug["rndpo"] = self.provenance(cache)
        atomic_write_text(path, json.dumps(debug, indent=4))

    def _write_run_files(self, new_pairs: dict | None) -> None:
        """``rndpo_config.json``, ``rndpo_reference.pth`` (fresh runs) and ``rndpo_pairs.json`` (when mined here)."""
        atomic_write_text(self.fold_folder / "rndpo_config.json", json.dumps(self.config.to_dict(), indent=2))
        if self._fresh_reference_weights is not None:
            weights = self._fresh_reference_weights
            atomic_write(self.fold_folder / "rndpo_reference.pth", lambda f: torch.save(weights, f))
            self._fresh_reference_weights = None
        if new_pairs is not None:
            atomic_write_text(self.fold_folder / "rndpo_pairs.json", json.dumps(new_pairs, indent=1))

    def _load_policy_and_reference(self) -> None:
        """Fresh run: policy and reference from the base checkpoint (every rank reads it; rank 0 saves the
        reference in :meth:`_write_run_files`). ``--c``: the reference from ``rndpo_reference.pth``."""
        t = self.trainer
        self._fresh_reference_weights = None
        if t.current_epoch == 0:
            path = self.base_checkpoint()
            network = t.network.module if t.is_ddp else t.network
            network = getattr(network, "_orig_mod", network)
            weights = base_weights(load_checkpoint_file(path, t.device), path,
                                   t.configuration_name, network.state_dict(), t.label_manager.num_segmentation_heads)
            network.load_state_dict(weights)
            reference_weights = {k: v.detach().clone() for k, v in weights.items()}
            if self.rank == 0:
                self._fresh_reference_weights = reference_weights
        else:
            reference_weights = torch.load(self.fold_folder / "rndpo_reference.pth", map_location=t.device,
                                           weights_only=True)
        self.reference = t.build_network_architecture(
            t.plans_manager, t.configuration_manager, t.num_input_channels,
            t.label_manager.num_segmentation_heads, enable_deep_supervision=False,
        ).to(t.device)
        self.reference.load_state_dict(reference_weights)
        self.reference.eval().requires_grad_(False)

    def _judge_and_mine(self, pool: PreprocessedPool, cache: ProposalCache) -> None:
        """Pairs from ``pairs_file`` (nnUNetv2_rndpo_mine) if set, else judged and mined here, guard cases out."""
        cfg = self.config
        if cfg.pairs_file:
            pairs, self.judge_metrics = read_pairs_file(cfg.pairs_file, pool, cache)
            self.pairs = [p for p in pairs if p.case_id not in self.drift_guard.cases]
        else:
            with cache.remembering():
                dice = hidden_true_dice(self.base, pool, cache)
                scores = score_pool(self.base, pool, cache, JudgeSettings.from_config(cfg), progress=False, dice=dice)
                cases = [c for c in pool.case_ids if c not in self.drift_guard.cases]
                self.pairs, stats = mine_pool(cache, cases, scores, MiningParams.from_config(cfg), cfg.seed, dice)
            self.judge_metrics = {k: stats[k] for k in ("judge/margin_mean", "pairs/identical_cases",
                                                         "judge/oracle_pair_acc") if k in stats}
        no_pair = int(self.judge_metrics.get("pairs/identical_cases", 0))
        if no_pair:
            self.trainer.print_to_log_file(
                f"RN-DPO: {no_pair} of {len(pool.case_ids) - len(self.drift_guard.cases)} pool cases gave no pair "
                "(identical proposals, tied scores or filtered out)")
        min_region = self.config.min_region_voxels if getattr(self.trainer, "skips_small_regions", True) else 1
        require_trainable_pairs(self.pairs, min_region, len(pool.case_ids))

    def _measure_flip_rate(self) -> dict[str, float]:
        """``label_smoothing: "auto"``: the judge's flip rate on the fold's labeled validation cases."""
        cfg = self.config
        report = labeled_reliability(self.base, ProposalSettings.from_config(cfg),
                                     JudgeSettings.from_config(cfg), MiningParams.from_config(cfg), progress=False,
                                     log=self.trainer.print_to_log_file)
        self.trainer.print_to_log_file(f"RN-DPO: judge reliability on labeled validation cases: {report}")
        return {"judge/labeled_pair_acc": report["labeled/mined_pair_acc"],
                "judge/auto_label_smoothing": report["labeled/flip_rate"]}

    def _resolve_label_smoothing(self) -> None:
        """Replaces "auto" by the measured ε (kept in rndpo_pairs.json, so ``--c`` reuses it)."""
        if "judge/auto_label_smoothing" not in self.judge_metrics:  # pairs written by a run without "auto"
            self.judge_metrics.update(self._measure_flip_rate())
        epsilon = float(self.judge_metrics["judge/auto_label_smoothing"])
        self.config = dataclasses.replace(self.config, label_smoothing=epsilon)
        self.trainer.rndpo_config = self.config
        self.trainer.print_to_log_file(f"RN-DPO: label_smoothing 'auto' = {epsilon:.4f}")

    def _install_dataloader(self, pool, cache, sampler_state) -> None:
        t, cfg = self.trainer, self.config
        rotation, dummy_2d, initial_patch_size, mirror_axes = (
            t.configure_rotation_dummyDA_mirroring_and_inital_patch_size())
        patch_size = t.configuration_manager.patch_size
        transforms = t.get_training_transforms(
            patch_size, rotation, t._get_deep_supervision_scales(), mirror_axes, dummy_2d,
            use_mask_for_norm=t.configuration_manager.use_mask_for_norm, is_cascaded=t.is_cascaded,
            foreground_labels=t.label_manager.foreground_labels, regions=None, ignore_label=None)
        rng = np.random.default_rng(cfg.seed + self.rank)  # each rank draws its own patches
        if sampler_state is not None:
            rng.bit_generator.state = sampler_state
        self.sampler = PairPatchSampler(self.pairs, pool, cache, patch_size, initial_patch_size, transforms,
                                        cfg.disagreement_oversample, rng, self.cascade_labels)
        self._labeled_loader = t.dataloader_train
        if cfg.sft_weight == 0 and hasattr(self._labeled_loader, "_finish"):
            self._labeled_loader._finish()  # no labeled batches needed: stop nnU-Net's augmentation workers
        self.batch_split = split_batch(cfg.batch_size or t.batch_size, cfg.sft_weight, cfg.sft_batch_fraction)
        self._preference_loader = self._augmenter(PreferenceBatchLoader(self.sampler, self.batch_split.preference,
                                                                        cfg.seed + self.rank))
        t.dataloader_train = PreferenceBatches(self._preference_loader,
                                               self._labeled_loader if cfg.sft_weight > 0 else None)

    def _augmenter(self, loader: PreferenceBatchLoader):
        """nnU-Net's choice for its own training loader: the loader itself without ``nnUNet_n_proc_DA``
        workers, else ``NonDetMultiThreadedAugmenter`` with as many workers and the same queue settings."""
        from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
        from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

        workers = get_allowed_n_proc_DA()
        if workers == 0:
            return loader
        return NonDetMultiThreadedAugmenter(loader, None, workers, max(6, workers // 2), None,
                                            pin_memory=self.trainer.device.type == "cuda", wait_time=0.002)

    def restore_dataloader(self) -> None:
        """Stops the preference workers and gives nnU-Net back its own loader, which ``on_train_end`` shuts down."""
        if hasattr(getattr(self, "_preference_loader", None), "_finish"):
            self._preference_loader._finish()
        if self._labeled_loader is not None:
            self.trainer.dataloader_train = self._labeled_loader

    # ------------------------------------------------------------------ step helpers

    def iteration_done(self) -> None:
        """Counts this process's training iterations; after the first few prints :func:`time_estimate` once.

        The first iteration is a warm-up (allocations, first batches) and is not timed; at most
        ``TIMED_ITERATIONS`` are, all within the first epoch (nnU-Net's validation is not in the rate).
        """
        t = self.trainer
        now = time.perf_counter()
        self._iterations_done += 1
        timed = min(TIMED_ITERATIONS, t.num_iterations_per_epoch - 1)
        if self._iterations_done == 1:
            self._timer_start = now
        elif self._iterations_done == timed + 1:
            rate = (now - self._timer_start) / timed
            t.print_to_log_file(time_estimate(rate, t.num_epochs - t.current_epoch, t.num_iterations_per_epoch))

    def autocast(self):
        t = self.trainer
        return torch.autocast(t.device.type, enabled=True) if t.device.type == "cuda" else contextlib.nullcontext()

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """Backward, clip at ``grad_clip`` and step, with nnU-Net's grad scaler on CUDA."""
        t = self.trainer
        if t.grad_scaler is not None:
            t.grad_scaler.scale(loss).backward()
            t.grad_scaler.unscale_(t.optimizer)
            torch.nn.utils.clip_grad_norm_(t.network.parameters(), self.config.grad_clip)
            t.grad_scaler.step(t.optimizer)
            t.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(t.network.parameters(), self.config.grad_clip)
            t.optimizer.step()

    # ------------------------------------------------------------------ logging

    def log_epoch(self, metrics: dict[str, float]) -> None:
        t = self.trainer
        self._pending = {**metrics, **self.judge_metrics}
        for key in (*METRIC_KEYS, *LOSS_TERMS, "pairs/skipped", *self.judge_metrics):
            if key in self._pending:
                t.logger.log(key, self._pending[key], t.current_epoch)

    def end_epoch(self, epochs_done: int) -> None:
        """Runs the drift guard, then test Dice every ``eval_every`` epochs, and writes the epoch's row."""
        row = {**getattr(self, "_pending", {}), **self.drift_guard.check()}
        if self.rank != 0:
            return
        for key in GUARD_KEYS:
            if key in row:
                self.trainer.logger.log(key, row[key], self.trainer.current_epoch)
        every = self.config.eval_every
        due = every and (epochs_done % every == 0 or epochs_done == self.trainer.num_epochs)
        for split, curve in self.curves.items() if due else ():
            dice = curve.evaluate()
            row.update(dice.row(split))
            self.trainer.print_to_log_file(f"RN-DPO: {split} Dice after {epochs_done} epochs: {dice.mean:.4f}")
        self.metrics_log.append(epochs_done, row)
        self.metrics_log.plot()

    # ------------------------------------------------------------------ evaluation

    def _prepare_evaluation(self) -> None:
        """The test- and validation-Dice curves (:class:`~nnunetv2_rndpo.evaluation.DiceCurve`), measured by rank 0."""
        if self.config.eval_every and self.rank == 0:
            for split in EVALUATION_SPLITS:
                curve = DiceCurve.open(self.trainer, self.base.raw_folder, self.base.cache_folder, split)
                if curve is not None:
                    self.curves[split] = curve

    def _policy_predictor(self, network: torch.nn.Module | None = None):
        """An nnU-Net predictor (no TTA) over a copy of the current policy, or over ``network``."""
        return policy_predictor(self.trainer, network)

    # ------------------------------------------------------------------ resume

    def save_state(self, checkpoint_filename: str) -> None:
        path = Path(checkpoint_filename).with_suffix(".rndpo.json")
        atomic_write_text(path, json.dumps({"sampler_rng": self.sampler.rng.bit_generator.state}))

    @staticmethod
    def load_state(checkpoint_filename: str) -> dict | None:
        path = Path(checkpoint_filename).with_suffix(".rndpo.json")
        return json.loads(path.read_text())["sampler_rng"] if path.is_file() else None
