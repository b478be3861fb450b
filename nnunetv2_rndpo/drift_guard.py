"""The drift guard: how far the policy has moved from the frozen reference, and a rollback when too far.

``guard_num_cases`` pool cases, drawn with the seed, are held out of mining. Before the first step the
reference predicts them once (whole cases, nnU-Net's sliding window, no TTA); after every epoch the policy
predicts them again and ``guard/kl`` is the mean over those cases of the per-voxel KL(π_ref ‖ π_θ)
(:func:`~nnunetv2_rndpo.objective.consistency_loss` with every voxel outside D). Above ``guard_max_kl`` the
policy goes back to the weights it had after the last epoch below the limit and the learning rate is multiplied
by ``guard_lr_decay`` (``guard/triggered``, ``guard/rollbacks``).

Under DDP rank 0 measures and sends the value to every rank, so all ranks take the same decision and every rank
rolls back its own copy of the network.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from nnunetv2_rndpo.cascade import pool_input
from nnunetv2_rndpo.distributed import broadcast_from_rank0
from nnunetv2_rndpo.objective import consistency_loss

GUARD_KEYS = ("guard/kl", "guard/triggered", "guard/rollbacks")


class DriftGuard:
    """The drift guard of one trainer (see the module docstring).

    Args:
        trainer: the nnU-Net trainer: its ``network`` (the policy), ``lr_scheduler``, ``label_manager`` and log.
        config: the effective :class:`~nnunetv2_rndpo.config.RNDPOConfig` (``guard_num_cases``, ``guard_max_kl``,
            ``guard_lr_decay``, ``seed``).
        rank: this process's rank (rank 0 measures).
        predictor: ``predictor(network)``: an nnU-Net predictor over ``network``, or over a copy of the current
            policy when ``network`` is None (the phase's, so that the guard predicts as the test curve does).
    """

    def __init__(self, trainer, config, rank: int, predictor: Callable):
        self.trainer, self.config, self.rank, self.predictor = trainer, config, rank, predictor
        self.cases: list[str] = []
        self.reference_logits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # case -> (image, logits)
        self.rollbacks = 0
        self._accepted_weights: dict[str, torch.Tensor] | None = None

    def choose_cases(self, pool) -> list[str]:
        """``guard_num_cases`` pool cases drawn with the seed and held out of mining (none if the pool is small).

        Returns:
            The sorted case ids, also kept in ``cases``.
        """
        n = self.config.guard_num_cases
        self.cases = []
        if n == 0 or len(pool.case_ids) < 2 * n:
            if n:
                self.trainer.print_to_log_file(f"RN-DPO guard: pool of {len(pool.case_ids)} cases is too small to "
                                               f"hold out {n}; drift guard off")
            return self.cases
        rng = np.random.default_rng(self.config.seed + 1)
        self.cases = sorted(rng.choice(pool.case_ids, n, replace=False).tolist())
        return self.cases

    def prepare(self, pool, reference: torch.nn.Module, cascade_labels: list[int] | None) -> None:
        """Reference logits of the guard cases (rank 0), and the policy's weights as the last accepted ones.

        Args:
            pool: the preprocessed pool the cases come from.
            reference: the frozen reference network.
            cascade_labels: the labels of a cascade's previous-stage input channels, or None.
        """
        self.reference_logits = {}
        if not self.cases:
            return
        if self.rank == 0:  # rank 0 measures the drift, every rank can roll back
            predictor = self.predictor(reference)
            for case_id in self.cases:
                image = torch.from_numpy(pool_input(pool, case_id, cascade_labels))
                logits = predictor.predict_sliding_window_return_logits(image).cpu().clone()
                self.reference_logits[case_id] = (image, logits)
        self._accepted_weights = self.policy_weights()

    def _policy_network(self) -> torch.nn.Module:
        network = self.trainer.network.module if self.trainer.is_ddp else self.trainer.network
        return getattr(network, "_orig_mod", network)

    def policy_weights(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the policy's state dict (without DDP's and ``torch.compile``'s wrappers)."""
        return {k: v.detach().cpu().clone() for k, v in self._policy_network().state_dict().items()}

    def drift(self) -> float:
        """guard/kl: mean over the guard cases of the per-voxel KL(π_ref ‖ π_θ) of whole-case predictions."""
        label_manager = self.trainer.label_manager
        regions = label_manager.foreground_regions if label_manager.has_regions else None
        predictor = self.predictor(None)
        values = []
        for image, reference_logits in self.reference_logits.values():
            logits = predictor.predict_sliding_window_return_logits(image).cpu()  # (C, X, Y[, Z])
            outside = torch.ones((1, *logits.shape[1:]), dtype=torch.bool)
            values.append(float(consistency_loss(logits[None], reference_logits[None], outside, regions=regions)))
        self.trainer.network.train()
        return float(np.mean(values))

    def check(self) -> dict[str, float]:
        """Measures drift; above ``guard_max_kl`` rolls back to the last accepted weights and decays the lr.

        Returns:
            ``{"guard/kl", "guard/triggered", "guard/rollbacks"}``, or ``{}`` with the guard off (no cases).
        """
        if not self.cases:
            return {}
        t, cfg = self.trainer, self.config
        kl = self.drift() if self.rank == 0 else None
        kl = broadcast_from_rank0(kl)  # one decision for all ranks
        triggered = cfg.guard_max_kl is not None and kl > cfg.guard_max_kl
        if triggered:
            self._policy_network().load_state_dict(self._accepted_weights)
            t.lr_scheduler.initial_lr *= cfg.guard_lr_decay
            self.rollbacks += 1
            t.print_to_log_file(f"RN-DPO guard: KL {kl:.4f} > {cfg.guard_max_kl}; rolled back to the last accepted "
                                f"weights, learning rate × {cfg.guard_lr_decay}")
        else:
            self._accepted_weights = self.policy_weights()
        return {"guard/kl": kl, "guard/triggered": float(triggered), "guard/rollbacks": float(self.rollbacks)}
