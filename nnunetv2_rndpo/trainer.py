"""nnU-Net trainers for the preference fine-tuning phase.

``nnUNetv2_train D C F -tr nnUNetTrainerRNDPO`` starts from the full base checkpoint
(``nnUNetTrainer__<plans>__<C>/fold_F/checkpoint_final.pth`` unless ``base_checkpoint`` says otherwise),
keeps a frozen reference copy, proposes masks for the unlabeled pool, lets the judge rank them, mines
pairs and optimises the preference loss on patches centred on each pair's disagreement region. The
result is an ordinary nnU-Net model folder for ``nnUNetv2_predict``.

The classes override a few hooks of ``nnUNetTrainer`` and call ``super()``; the work is done by the
modules of this package. Configuration: :mod:`nnunetv2_rndpo.config`.
"""

from __future__ import annotations

import atexit
import os
import random
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from nnunetv2_rndpo.cascade import previous_stage_of, require_cascade_sources
from nnunetv2_rndpo.compat import require_supported_nnunet
from nnunetv2_rndpo.config import load_config
from nnunetv2_rndpo.distributed import rank_and_world
from nnunetv2_rndpo.errors import user_errors
from nnunetv2_rndpo.fold_lock import FinishedFoldError, FoldLock, FoldLockedError, refuse_finished_fold
from nnunetv2_rndpo.metrics import region_labels
from nnunetv2_rndpo.objective import preference_loss, preference_metrics, preference_terms
from nnunetv2_rndpo.paths import results_folder
from nnunetv2_rndpo.phase import PreferencePhase, epoch_metrics
from nnunetv2_rndpo.schedule import LinearWarmup, warmup_iterations

# nothing above imports nnunetv2: an unsupported version gets a clear error here, not a deep traceback later
require_supported_nnunet()

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402


class nnUNetTrainerRNDPO(nnUNetTrainer):
    """Region-Normalized DPO fine-tuning of a trained nnU-Net model (``normalization='region'``)."""

    preset: ClassVar[dict] = {"normalization": "region"}
    # pairs whose patch has fewer than min_region_voxels disagreeing voxels are skipped by the loss
    skips_small_regions: ClassVar[bool] = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnUNetTrainer's exact signature)
        logs_before = _training_logs(type(self).__name__, plans, configuration, fold)
        super().__init__(plans, configuration, fold, dataset_json, device)
        # nnU-Net's __init__ has just started a training log; a run refused in on_train_start removes it
        self._own_log_file = None if Path(self.log_file) in logs_before else Path(self.log_file)
        self._fold_lock: FoldLock | None = None
        with user_errors():  # a bad config ends nnUNetv2_train with its message alone (errors.py)
            self.rndpo_config = load_config(self.preset)
        cfg = self.rndpo_config
        self.num_epochs = cfg.num_epochs
        self.num_iterations_per_epoch = cfg.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = cfg.num_val_iterations_per_epoch
        self.initial_lr = cfg.learning_rate
        self.save_every = cfg.save_every
        # nnU-Net's augmentation draws from the global generators; seeding them makes CPU runs repeatable
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        # a cascade's labeled cases take the base trainer's previous-stage segmentations, as its base model did
        self.previous_stage = previous_stage_of(self.configuration_manager, configuration,
                                                self.plans_manager.dataset_name,
                                                cfg.base_trainer, self.plans_manager.plans_name, fold)
        if self.previous_stage is not None:
            require_cascade_sources(cfg.proposal_sources, configuration)
            self.folder_with_segs_from_previous_stage = str(self.previous_stage.labeled_segmentations)
        self.phase: PreferencePhase | None = None
        self.warmup: LinearWarmup | None = None
        self._resumed_sampler_state: dict | None = None
        self._trained_here = False  # set by on_train_end: ``final_validation`` applies after training, not to --val

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        """AdamW (default) or SGD with momentum 0.9 at ``learning_rate``, nnU-Net's poly schedule (per epoch),
        and on top of it a linear warm-up per iteration over ``warmup_fraction`` of the phase (:meth:`optimise`).

        Assumption: nnU-Net's SGD with momentum 0.99 at 1e-2 trains from scratch; a fine-tuning phase
        needs smaller steps.
        """
        from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

        params = self.network.parameters()
        if self.rndpo_config.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=self.initial_lr, weight_decay=self.weight_decay)
        else:
            optimizer = torch.optim.SGD(params, lr=self.initial_lr, momentum=0.9, nesterov=True,
                                        weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    # ------------------------------------------------------------------ lifecycle

    def run_training(self):
        try:
            super().run_training()
        finally:
            self._release_fold()

    def on_train_start(self):
        with user_errors():  # another run holds the fold, or the fold is finished: the message alone
            self._claim_fold()
        if self.previous_stage is not None:  # before nnU-Net's loaders read the segmentations, not mid-run
            train_ids, val_ids = self.do_split()
            self.previous_stage.require(self.plans_manager.dataset_name, self.plans_manager.plans_name,
                                        sorted({*train_ids, *val_ids}))
        super().on_train_start()
        self.phase = PreferencePhase(self)
        with user_errors():  # missing base model, bad pool case, bad scores ...: the message alone (errors.py)
            self.phase.setup(sampler_state=self._resumed_sampler_state)
        cfg, split = self.rndpo_config, self.phase.batch_split
        warmup = warmup_iterations(cfg.warmup_fraction, self.num_epochs * self.num_iterations_per_epoch)
        self.warmup = LinearWarmup(self.optimizer, warmup)
        self.print_to_log_file(f"RN-DPO: each step trains on {split.preference} pairs + {split.labeled} labeled "
                               f"samples (nnU-Net planned a batch of {self.batch_size}); learning-rate warm-up over "
                               f"{warmup} iterations")

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # nnU-Net's poly schedule sets this epoch's learning rate
        self.warmup.start_epoch(self.current_epoch * self.num_iterations_per_epoch)

    def optimise(self, loss: torch.Tensor) -> None:
        """One optimizer step on ``loss`` at the warmed-up learning rate (every trainer's step ends here)."""
        self.warmup.before_step()
        self.phase.backward_and_step(loss)

    def _claim_fold(self) -> None:
        """Takes the fold's lock and refuses a fresh run into a finished fold, before anything is written there.

        A refused run removes the training log its ``__init__`` started, so the folder stays as it was.
        """
        try:
            if rank_and_world()[0] == 0:
                self._fold_lock = FoldLock(self.output_folder)
                self._fold_lock.acquire(log=self.print_to_log_file)
                atexit.register(self._fold_lock.release)  # also when a caller never reaches run_training's end
            if self.current_epoch == 0:  # a fresh run: nothing was loaded with --c
                refuse_finished_fold(self.output_folder, type(self).__name__,
                                     self.rndpo_config.overwrite_finished_fold)
        except (FoldLockedError, FinishedFoldError):
            self._release_fold()
            if self._own_log_file is not None:
                self._own_log_file.unlink(missing_ok=True)
            raise

    def _release_fold(self) -> None:
        if self._fold_lock is not None:
            self._fold_lock.release()

    def on_train_end(self):
        self.phase.restore_dataloader()
        super().on_train_end()
        self._trained_here = True

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self._trained_here and not self.rndpo_config.final_validation:
            self.print_to_log_file("RN-DPO: final validation skipped (final_validation: false); "
                                   "nnUNetv2_train ... --val runs it")
            return
        super().perform_actual_validation(save_probabilities)

    def train_step(self, batch: dict) -> dict:
        pref = batch["preference"]
        data = pref["data"].to(self.device, non_blocking=True)
        target = [t.to(self.device, non_blocking=True) for t in pref["target"]]
        labeled = batch.get("labeled")
        n = data.shape[0]
        if labeled is not None:
            # nnU-Net's loader yields its planned batch; the step takes its share (sft_batch_fraction) and trains
            # on both in one forward: one DDP forward per backward, one pass of the weights
            m = self.phase.batch_split.labeled
            labeled = {"data": labeled["data"][:m], "target": [t[:m] for t in labeled["target"]]}
            data = torch.cat([data, labeled["data"].to(self.device, non_blocking=True)])
        self.optimizer.zero_grad(set_to_none=True)
        with self.phase.autocast():
            output = self.network(data)
            if isinstance(output, (list, tuple)):
                output, sft_output = [o[:n] for o in output], [o[n:] for o in output]
            else:
                output, sft_output = output[:n], output[n:]
            step_loss, outputs = self.preference_step(data[:n], output, target)
            if labeled is not None:
                sft_target = [t.to(self.device, non_blocking=True) for t in labeled["target"]]
                sft_loss = self.loss(sft_output, sft_target)
                step_loss = step_loss + self.rndpo_config.sft_weight * sft_loss
                outputs["loss/sft"] = float(sft_loss.detach())
            elif self.is_ddp and isinstance(output, list):
                # DDP needs a gradient for every parameter; the low-resolution heads get exact zeros
                step_loss = step_loss + 0.0 * sum(o.float().mean() for o in output[1:])
        self.optimise(step_loss)
        outputs["loss"] = step_loss.detach().cpu().numpy()
        self.phase.iteration_done()
        return outputs

    def preference_step(self, data: torch.Tensor, output, target: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """The preference loss of one batch plus its anchors, and the sums the epoch metrics need.

        total = preference + consistency_weight · consistency + agreement_weight · agreement
        (the supervised anchor ``sft_weight`` is added in :meth:`train_step`). The anchors act on the
        voxels outside the disagreement region D, where the preference term has no gradient
        (docs/objective.md, "Anchors").

        Deep supervision: the preference loss and the anchors use only the full-resolution head
        (``output[0]``), the one nnU-Net predicts with; the lower-resolution heads get gradients only
        from the supervised anchor, through nnU-Net's own deep-supervision loss.
        """
        logits = output[0] if isinstance(output, (list, tuple)) else output
        with torch.no_grad():
            reference_logits = self.phase.reference(data)
        lm, cfg = self.label_manager, self.rndpo_config
        regions = lm.foreground_regions if lm.has_regions else None
        chosen, rejected = target[0][:, 0], target[0][:, 1]
        terms = preference_terms(logits, reference_logits, chosen, rejected, regions=regions,
                                 ignore_label=lm.ignore_label, consistency=cfg.consistency_weight > 0,
                                 agreement=cfg.agreement_weight > 0)
        ratios = terms.ratios
        out = preference_loss(
            ratios.chosen_logratios, ratios.rejected_logratios, ratios.region_sizes, ratios.volumes,
            beta=cfg.effective_beta, loss_type=cfg.loss_type, normalization=cfg.normalization,
            label_smoothing=cfg.label_smoothing, min_region_voxels=cfg.min_region_voxels,
        )
        total = out.loss
        logs = {"loss/preference": float(out.loss.detach())}
        if terms.consistency is not None:
            consistency = terms.consistency.mean()
            total = total + cfg.consistency_weight * consistency
            logs["loss/consistency"] = float(consistency.detach())
        if terms.agreement is not None:
            agreement = terms.agreement.mean()
            total = total + cfg.agreement_weight * agreement
            logs["loss/agreement"] = float(agreement.detach())
        return total, {**logs, **preference_metrics(out, ratios)}

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        self.phase.log_epoch(epoch_metrics(train_outputs))

    def on_epoch_end(self):
        self.phase.end_epoch(self.current_epoch + 1)
        super().on_epoch_end()

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written to a temporary file and renamed: a run killed while writing keeps the
        previous checkpoint intact for ``--c``. The sampler state follows it (``checkpoint_*.rndpo.json``)."""
        temporary = f"{filename}.tmp"
        super().save_checkpoint(temporary)
        if os.path.isfile(temporary):  # only rank 0 writes, and nothing with checkpointing disabled
            os.replace(temporary, filename)
        if self.phase is not None and self.local_rank == 0 and not self.disable_checkpointing:
            self.phase.save_state(filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        if isinstance(filename_or_checkpoint, str):
            self._resumed_sampler_state = PreferencePhase.load_state(filename_or_checkpoint)


class nnUNetTrainerDPO(nnUNetTrainerRNDPO):
    """Standard DPO: identical to :class:`nnUNetTrainerRNDPO` without region normalisation."""

    preset: ClassVar[dict] = {"normalization": "none"}


class nnUNetTrainerPseudoLabel(nnUNetTrainerRNDPO):
    """Best-of-N self-training baseline: nnU-Net's supervised loss on the judge's top-ranked proposal.

    Same pairs, patches, augmentation, schedule and optimiser as the preference trainers; the rejected
    mask is unused and there is no reference term. The supervised anchor applies as in every trainer: at the
    default ``sft_weight`` (1) each step also trains on a labeled batch; ``sft_weight: 0`` trains on the
    judge's masks alone.
    """

    skips_small_regions: ClassVar[bool] = False

    def preference_step(self, data, output, target):
        chosen = [t[:, :1] for t in target]
        lm = self.label_manager
        if lm.has_regions:
            chosen = [region_target(t, lm.foreground_regions, lm.ignore_label) for t in chosen]
        loss = self.loss(output, chosen)
        return loss, {"n/patches": int(data.shape[0])}


def region_target(label_map: torch.Tensor, regions, ignore_label: int | None) -> torch.Tensor:
    """nnU-Net's region-based training target of a label map ``(B, 1, *spatial)``: one channel per region
    (:func:`~nnunetv2_rndpo.metrics.region_labels`), plus the ignore mask as a last channel when the dataset has
    an ignore label (what ``ConvertSegmentationToRegionsTransform`` makes and ``DC_and_BCE_loss`` expects)."""
    channels = [torch.isin(label_map, torch.as_tensor(region_labels(r), device=label_map.device)) for r in regions]
    if ignore_label is not None:
        channels.append(label_map == ignore_label)
    return torch.cat(channels, 1).to(label_map.dtype)
def _training_logs(trainer_name: str, plans: dict, configuration: str, fold) -> set[Path]:
    """The ``training_log_*.txt`` files already in the fold folder nnU-Net's ``__init__`` is about to use."""
    from nnunetv2.paths import nnUNet_results

    if nnUNet_results is None:
        return set()
    folder = results_folder(nnUNet_results, plans["dataset_name"], trainer_name, plans["plans_name"], configuration,
                            fold)
    return set(folder.glob("training_log_*.txt"))


class nnUNetTrainerContinuedSFT(nnUNetTrainerRNDPO):
    """Control for "more training": nnU-Net's supervised loss on the labeled cases only, with the same start
    point, schedule and optimiser as the preference trainers (the preference batches are drawn but unused)."""

    skips_small_regions: ClassVar[bool] = False

    preset: ClassVar[dict] = {"sft_weight": 1.0}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnUNetTrainer's exact signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        with user_errors():
            if self.rndpo_config.sft_weight == 0:
                raise ValueError("nnUNetTrainerContinuedSFT trains on labeled batches only; sft_weight must be > 0 "
                                 "(remove it from the file named by $nnUNet_rndpo_config)")

    def train_step(self, batch: dict) -> dict:
        labeled = batch["labeled"]
        target = [t.to(self.device, non_blocking=True) for t in labeled["target"]]
        self.optimizer.zero_grad(set_to_none=True)
        with self.phase.autocast():
            loss = self.loss(self.network(labeled["data"].to(self.device, non_blocking=True)), target)
        self.optimise(loss)
        self.phase.iteration_done()
        return {"loss": loss.detach().cpu().numpy(), "loss/sft": float(loss.detach())}


class nnUNetTrainer_rndpoSmoke(nnUNetTrainer):
    """Plain supervised nnU-Net on a smoke-test schedule (3 epochs × 10 iterations): a quick base model."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnUNetTrainer's exact signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 3, 10, 5


class nnUNetTrainer_cpuBase(nnUNetTrainer):
    """Plain supervised nnU-Net on the CPU-scale study schedule (20 epochs × 25 iterations, docs/study.md)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnUNetTrainer's exact signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 20, 25, 10
