"""The stages before fine-tuning — pool, proposals, judge, mining — shared by the trainer and the commands.

:class:`BaseModel` holds what every stage needs about the dataset and the base network. The trainer
builds it from itself (:meth:`BaseModel.from_trainer`); the ``nnUNetv2_rndpo_*`` commands load it from a
results folder (:func:`load_base_model`). Both then call the same functions here, so they read and write
one cache: ``$nnUNet_preprocessed/DatasetXXX/rndpo/<plans>_<configuration>/{pool,proposals}``
(:func:`~nnunetv2_rndpo.paths.rndpo_cache_folder`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nnunetv2_rndpo.cascade import PreviousStage, previous_stage_of, require_cascade_sources
from nnunetv2_rndpo.checkpoint import describe_trained_models, load_checkpoint_file
from nnunetv2_rndpo.hybrids import HybridCache, HybridSettings, base_scores, generate_hybrids
from nnunetv2_rndpo.judges import (
    JUDGES,
    agreement_scores,
    oracle_scores,
    read_external_scores,
    true_dice,
    uncertainty_scores,
)
from nnunetv2_rndpo.mining import MiningParams, mine_pool
from nnunetv2_rndpo.paths import rndpo_cache_folder
from nnunetv2_rndpo.pool import LabeledPool, PreprocessedPool, find_cases, labeled_cases
from nnunetv2_rndpo.proposals import (
    DEFAULT_PERTURB_SIGMA,
    ProposalCache,
    generate_proposals,
    plan_proposals,
    proposal_spec,
)

LEARNED_JUDGE_FILE = "rndpo_judge.pth"


@dataclass
class BaseModel:
    """The dataset, plans and base network that proposals are made from.

    ``model_folder`` is the base model's ``Trainer__Plans__configuration`` results folder and ``fold`` its
    fold; ``network`` is built with deep supervision off and holds ``weights``. For a cascade configuration
    ``previous_stage`` is the model whose segmentations the network takes as extra input channels
    (:mod:`nnunetv2_rndpo.cascade`).
    """

    dataset_name: str
    configuration_name: str
    plans_manager: object
    configuration_manager: object
    dataset_json: dict
    network: torch.nn.Module
    weights: dict[str, torch.Tensor]
    mirror_axes: tuple[int, ...]
    model_folder: Path
    fold: int | str
    checkpoint_name: str
    device: torch.device
    trainer_name: str = "nnUNetTrainer"
    previous_stage: PreviousStage | None = None

    @property
    def label_manager(self):
        return self.plans_manager.get_label_manager(self.dataset_json)

    @property
    def classes(self) -> list:
        """The foreground labels, or regions for region-based datasets."""
        lm = self.label_manager
        return lm.foreground_regions if lm.has_regions else lm.foreground_labels

    @property
    def cascade_labels(self) -> list[int] | None:
        """The labels whose one-hot previous-stage segmentation the network takes as input; None if no cascade."""
        return None if self.previous_stage is None else self.label_manager.foreground_labels

    @property
    def raw_folder(self) -> Path:
        from nnunetv2.paths import nnUNet_raw

        if nnUNet_raw is None:
            raise RuntimeError("nnUNet_raw is not set; export nnUNet_raw=/path/to/nnUNet_raw (the unlabeled pool "
                               "lives there)")
        return Path(nnUNet_raw) / self.dataset_name

    @property
    def cache_folder(self) -> Path:
        """``$nnUNet_preprocessed/DatasetXXX/rndpo/<plans>_<configuration>``: outside nnU-Net's own folders."""
        from nnunetv2.paths import nnUNet_preprocessed

        if nnUNet_preprocessed is None:
            raise RuntimeError("nnUNet_preprocessed is not set; export "
                               "nnUNet_preprocessed=/path/to/nnUNet_preprocessed")
        return rndpo_cache_folder(nnUNet_preprocessed, self.dataset_name, self.plans_manager.plans_name,
                                  self.configuration_name)

    @property
    def fold_folder(self) -> Path:
        return self.model_folder / f"fold_{self.fold}"

    def predictor(self):
        """An ``nnUNetPredictor`` over the base network (no TTA: flips are made explicitly)."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=self.device.type == "cuda", device=self.device,
                                    verbose=False, allow_tqdm=False)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.trainer_name, self.mirror_axes)
        return predictor

    def load_extra_weights(self, models: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        """Weights of the ``model`` proposal source: ``'FOLD/CHECKPOINT'`` names in ``model_folder``."""
        weights = {}
        for name in models:
            fold, _, checkpoint = name.partition("/")
            path = self.model_folder / f"fold_{fold}" / (checkpoint or "checkpoint_final.pth")
            if not path.is_file():
                raise FileNotFoundError(
                    f"proposal model {name!r}: {path} does not exist. Train that fold (nnUNetv2_train ... {fold}) "
                    "or remove it from proposal_models / -f.")
            weights[name] = _network_weights(path, self.device)
        return weights

    @classmethod
    def from_trainer(cls, trainer, network: torch.nn.Module, base_checkpoint: Path) -> BaseModel:
        """The base model as a preference trainer sees it (``network`` = its frozen reference)."""
        return cls(
            dataset_name=trainer.plans_manager.dataset_name, configuration_name=trainer.configuration_name,
            plans_manager=trainer.plans_manager, configuration_manager=trainer.configuration_manager,
            dataset_json=trainer.dataset_json, network=network, weights=network.state_dict(),
            mirror_axes=tuple(trainer.inference_allowed_mirroring_axes or ()),
            model_folder=Path(base_checkpoint).parent.parent, fold=trainer.fold,
            checkpoint_name=Path(base_checkpoint).name, device=trainer.device,
            trainer_name=trainer.__class__.__name__, previous_stage=trainer.previous_stage)


def _network_weights(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    checkpoint = load_checkpoint_file(path, device)
    return {k.removeprefix("module."): v for k, v in checkpoint["network_weights"].items()}


def load_base_model(
    dataset: str | int,
    configuration: str,
    fold: int | str,
    trainer: str = "nnUNetTrainer",
    plans: str = "nnUNetPlans",
    checkpoint: str = "checkpoint_final.pth",
    device: str | torch.device = "cpu",
) -> BaseModel:
    """Loads a trained base model the way ``nnUNetv2_predict`` finds it.

    Raises:
        FileNotFoundError: no such results folder or checkpoint (the message gives the training command).
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    dataset_name = maybe_convert_to_dataset_name(dataset)
    model_folder = Path(get_output_folder(dataset_name, trainer, plans, configuration))
    path = model_folder / f"fold_{fold}" / checkpoint
    if not path.is_file():
        found, candidates = describe_trained_models(model_folder.parent, plans, configuration, fold)
        raise FileNotFoundError(
            f"Base checkpoint {path} not found.\n{found}\nPick another with -tr/-p/-f/-chk"
            + (f" (e.g. -tr {candidates[0]})" if candidates else "") + ", or train the base model first:\n  "
            f"nnUNetv2_train {dataset} {configuration} {fold} -tr {trainer} -p {plans}")
    device = torch.device(device)
    load_checkpoint_file(path)  # a corrupt file: an error that names it, before nnU-Net's predictor loads it
    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=device.type == "cuda",
                                device=device, verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(fold,), checkpoint_name=checkpoint)
    network = getattr(predictor.network, "_orig_mod", predictor.network).to(device)
    return BaseModel(
        dataset_name=dataset_name, configuration_name=configuration, plans_manager=predictor.plans_manager,
        configuration_manager=predictor.configuration_manager, dataset_json=predictor.dataset_json,
        network=network, weights=network.state_dict(), mirror_axes=tuple(predictor.allowed_mirroring_axes or ()),
        model_folder=model_folder, fold=fold, checkpoint_name=checkpoint, device=device,
        trainer_name=predictor.trainer_name,
        previous_stage=previous_stage_of(predictor.configuration_manager, configuration, dataset_name, trainer, plans,
                                         fold))


# ---------------------------------------------------------------------------------------------- pool


def prepare_pool(base: BaseModel, unlabeled_dir: str | None = None, num_parts: int = 1, part_id: int = 0,
                 progress: bool = True, on_bad_case: str = "stop", log=print) -> PreprocessedPool:
    """Finds the unlabeled pool (and hidden labels) and preprocesses the cases not cached yet.

    Args:
        unlabeled_dir: folder of unlabeled images; default ``$nnUNet_raw/DatasetXXX/imagesUnlabeled``.
        num_parts, part_id: preprocess only this part (:func:`split_cases`); the pool lists every case.
        on_bad_case: ``"stop"`` raises on a case that cannot be read or does not match the dataset;
            ``"skip"`` leaves it out of the returned pool with a warning (``log``) and a count.

    Raises:
        BadCaseError: a bad case with ``on_bad_case="stop"``.
        ValueError: every case of the pool is bad.
    """
    folder = Path(unlabeled_dir) if unlabeled_dir else base.raw_folder / "imagesUnlabeled"
    labels = folder.parent / "labelsUnlabeled"
    cases = find_cases(folder, base.dataset_json["file_ending"], len(base.dataset_json["channel_names"]),
                       labels if labels.is_dir() else None)
    if base.previous_stage is not None:
        cases = base.previous_stage.with_segmentations(cases, base.cache_folder / "pool" / "previous_stage",
                                                       base.dataset_json["file_ending"])
    pool = PreprocessedPool(base.cache_folder / "pool", cases)
    part = set(split_cases(pool.case_ids, num_parts, part_id))
    todo = PreprocessedPool(pool.folder, [c for c in cases if c.case_id in part])
    if base.previous_stage is not None:
        base.previous_stage.predict(todo.cases, base.device, log)
    todo.preprocess(base.plans_manager, base.configuration_manager, base.dataset_json, progress=progress,
                    on_bad_case=on_bad_case)
    bad = pool.drop_bad_cases()
    if bad:
        log(f"RN-DPO WARNING: skipped {len(bad)} of {len(cases)} pool cases that cannot be used "
            f"(on_bad_case='skip'):\n  " + "\n  ".join(bad.values()))
    if not pool.case_ids:
        raise ValueError(f"every case of the unlabeled pool {folder} is bad (see the warnings above); fix the files")
    return pool


def split_cases(case_ids: list[str], num_parts: int, part_id: int) -> list[str]:
    """``case_ids[part_id::num_parts]``: the split ``nnUNetv2_predict -num_parts -part_id`` makes."""
    if num_parts < 1:
        raise ValueError(f"-num_parts must be >= 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise ValueError(f"-part_id must be in 0 ... {num_parts - 1} (-num_parts {num_parts}), got {part_id}")
    return list(case_ids)[part_id::num_parts]


# ---------------------------------------------------------------------------------------------- proposals


@dataclass(frozen=True)
class ProposalSettings:
    """What proposals to make; mirrors the config keys ``num_proposals``, ``proposal_sources``,
    ``proposal_models``, ``seed`` and ``perturb_sigma``, and ``hybrids`` (made when ``mining`` is ``local``;
    None = none)."""

    num_proposals: int = 8
    sources: tuple[str, ...] = ("mirror", "threshold")
    models: tuple[str, ...] = ()
    seed: int = 12345
    perturb_sigma: float = DEFAULT_PERTURB_SIGMA
    hybrids: HybridSettings | None = None

    @classmethod
    def from_config(cls, config) -> ProposalSettings:
        return cls(config.num_proposals, tuple(config.proposal_sources), tuple(config.proposal_models), config.seed,
                   perturb_sigma=config.perturb_sigma, hybrids=HybridSettings.from_config(config))


def proposal_specs(base: BaseModel, settings: ProposalSettings) -> list:
    """The recipes these settings make for this base model (:func:`~nnunetv2_rndpo.proposals.plan_proposals`)."""
    return plan_proposals(settings.num_proposals, list(settings.sources), base.mirror_axes, settings.seed,
                          list(settings.models), settings.perturb_sigma)


def proposal_cache(base: BaseModel, settings: ProposalSettings, subfolder: str = "proposals",
                   ) -> tuple[ProposalCache, list, dict]:
    """The cache for these settings (in ``<cache_folder>/<subfolder>``), the recipes and the ``model`` weights.

    Raises:
        ValueError: the ``intensity`` source on a cascade (it would rescale the previous-stage input channels too).
    """
    if base.previous_stage is not None:
        require_cascade_sources(settings.sources, base.configuration_name)
    specs = proposal_specs(base, settings)
    extra = base.load_extra_weights(list(settings.models)) if "model" in settings.sources else {}
    spec = proposal_spec(base.weights, base.plans_manager.plans_name, base.configuration_name, specs, settings.seed,
                         extra)
    origin = {"base_checkpoint": str(base.fold_folder / base.checkpoint_name), "dataset": base.dataset_name,
              "fold": base.fold}
    return ProposalCache(base.cache_folder / subfolder, spec, origin), specs, extra


def ensure_proposals(
    base: BaseModel, pool: PreprocessedPool, settings: ProposalSettings, case_ids: list[str] | None = None,
    progress: bool = True, log=print,
) -> ProposalCache:
    """Generates the proposals missing from the cache (of ``case_ids``, default all) and returns the cache.

    Caches of other folds, base models or settings are left alone: runs of several folds share the
    cache root and may run at once (``nnUNetv2_rndpo_clean`` removes caches no model refers to). With
    ``settings.hybrids`` the returned cache also holds the hybrids of those cases (:func:`ensure_hybrids`).
    """
    cache, specs, extra = proposal_cache(base, settings)
    wanted = pool.case_ids if case_ids is None else case_ids
    if cache.is_complete and all(cache.has_case(c, pool.source_digest(c)) for c in wanted):
        log(f"RN-DPO: reusing proposals from {cache.folder}")
        return ensure_hybrids(cache, pool, settings, wanted, progress, log)
    generated = generate_proposals(cache, pool, base.predictor(), specs, base.label_manager, base.mirror_axes,
                                   base.device, progress, case_ids=wanted, all_case_ids=pool.case_ids,
                                   seed=settings.seed, extra_weights=extra, cascade_labels=base.cascade_labels)
    log(f"RN-DPO: generated proposals for {generated} cases in {cache.folder}")
    return ensure_hybrids(cache, pool, settings, wanted, progress, log)


def ensure_hybrids(cache: ProposalCache, pool, settings: ProposalSettings, case_ids: list[str] | None = None,
                   progress: bool = True, log=print) -> ProposalCache | HybridCache:
    """``cache`` itself without ``settings.hybrids``; else its :class:`~nnunetv2_rndpo.hybrids.HybridCache`, with
    the hybrids of ``case_ids`` (default all) made where missing (no forward pass: they are cut from the
    cached proposals)."""
    if settings.hybrids is None:
        return cache
    hybrids = HybridCache(cache, settings.hybrids)
    made = generate_hybrids(hybrids, pool, case_ids, progress=progress)
    log(f"RN-DPO: hybrids in {hybrids.folder} ({made} cases new)")
    return hybrids


def cached_proposals(base: BaseModel, pool, settings: ProposalSettings, progress: bool = True,
                     ) -> ProposalCache | HybridCache:
    """The cached proposals of every pool case (and their hybrids, made here if missing), for the commands
    that read proposals (judge, mine).

    Raises:
        FileNotFoundError: a case has no current proposals (run nnUNetv2_rndpo_proposals first).
    """
    cache = proposal_cache(base, settings)[0]
    require_complete(cache, pool)
    return ensure_hybrids(cache, pool, settings, progress=progress, log=lambda _: None)


def open_pool(
    base: BaseModel, settings: ProposalSettings, unlabeled_dir: str | None = None, *, generate: bool = False,
    num_parts: int = 1, part_id: int = 0, progress: bool = True, on_bad_case: str = "stop", log=print,
    barrier=lambda: None, name_large_cases: bool = False,
) -> tuple[PreprocessedPool, ProposalCache | HybridCache]:
    """The unlabeled pool (preprocessed where missing) and its proposals: the one way the commands that read
    proposals and the preference phase open them.

    Args:
        generate: make the proposals (and hybrids) that are missing, as the trainer does; without it they must
            exist (``nnUNetv2_rndpo_judge`` and ``_mine`` read what ``nnUNetv2_rndpo_proposals`` made).
        num_parts, part_id: preprocess and generate only this part (:func:`split_cases`; one part per DDP rank);
            ``barrier()`` is called after each step whose parts the next step reads (``torch.distributed``'s
            barrier under DDP, nothing in one process).
        on_bad_case, log: as for :func:`prepare_pool`.
        name_large_cases: name the cases of unusually large images in ``log`` before their proposals are made
            (:func:`~nnunetv2_rndpo.messages.large_case_notes`).

    Raises:
        FileNotFoundError: without ``generate``, a case has no current proposals.
    """
    from nnunetv2_rndpo.messages import large_case_notes

    pool = prepare_pool(base, unlabeled_dir, num_parts, part_id, progress, on_bad_case, log)
    barrier()
    if not generate:
        return pool, cached_proposals(base, pool, settings, progress)
    if name_large_cases:
        shapes = {c: tuple(pool.image(c).shape[1:]) for c in pool.case_ids}
        for note in large_case_notes(shapes, tuple(base.configuration_manager.patch_size)):
            log(note)
    if num_parts > 1:  # each part fills its share of the one cache (nnUNetv2_predict's split), then all read it
        ensure_proposals(base, pool, settings, split_cases(pool.case_ids, num_parts, part_id), progress, log)
        barrier()
    return pool, ensure_proposals(base, pool, settings, progress=progress, log=log)


def require_complete(cache: ProposalCache, pool: PreprocessedPool) -> None:
    """Raises a clear error if some pool case has no proposals yet."""
    missing = [c for c in pool.case_ids if not cache.has_case(c, pool.source_digest(c))]
    if missing:
        raise FileNotFoundError(
            f"No current proposals for {len(missing)} of {len(pool.case_ids)} pool cases (e.g. {missing[:3]}: "
            f"missing, or made from an older version of the image) in "
            f"{cache.folder}. Run nnUNetv2_rndpo_proposals with the same -d -c -f -tr -p -chk, sources, -n and "
            "--seed first (every -part_id if you split it).")


# ---------------------------------------------------------------------------------------------- judge


@dataclass(frozen=True)
class JudgeSettings:
    """Which judge and its knobs; mirrors ``judge``, ``judge_sigma``, ``judge_size_bias``,
    ``judge_scores``, ``learned_judge``, ``seed`` and ``judge_pair_accuracy`` (``pair_accuracy``: the oracle's
    σ is calibrated to it on the cases it scores, see :func:`oracle_sigma`)."""

    judge: str = "agreement"
    sigma: float = 0.0
    size_bias: float = 0.0
    scores_file: str | None = None
    learned_judge: str | None = None
    seed: int = 12345
    pair_accuracy: float | None = None

    @classmethod
    def from_config(cls, config) -> JudgeSettings:
        return cls(config.judge, config.judge_sigma, config.judge_size_bias, config.judge_scores,
                   config.learned_judge, config.seed, config.judge_pair_accuracy)


def oracle_sigma(base: BaseModel, pool, cache: ProposalCache, settings: JudgeSettings,
                 dice: dict[str, np.ndarray] | None = None) -> float:
    """The oracle judge's noise σ: ``settings.sigma``, or, with ``settings.pair_accuracy``, the σ at which its
    expected within-case pair accuracy (with the size bias) on these cases is that target
    (:func:`~nnunetv2_rndpo.reliability.calibrate_judge_sigma`; 0 if the target is above what σ = 0 reaches).

    Assumption: the simulated judge is calibrated on the cases it scores (their hidden labels are what it
    simulates anyway), so "weak judge at 0.70" means 0.70 on exactly these proposals. ``dice``: the cases' true
    Dice if already known (:func:`hidden_true_dice`).
    """
    if settings.pair_accuracy is None:
        return settings.sigma
    from nnunetv2_rndpo.judges import foreground_voxels
    from nnunetv2_rndpo.reliability import calibrate_judge_sigma

    dice = hidden_true_dice(base, pool, cache) if dice is None else dice
    sizes = {c: foreground_voxels(cache.masks(c), base.classes) for c in pool.case_ids}
    return calibrate_judge_sigma(dice, sizes, settings.pair_accuracy, settings.size_bias)


def hidden_true_dice(base: BaseModel, pool: PreprocessedPool, cache: ProposalCache) -> dict[str, np.ndarray] | None:
    """``{case: (K,) true Dice}`` from ``labelsUnlabeled/``, or None unless every case has a hidden label."""
    if not pool.has_labels:
        return None
    ignore = base.label_manager.ignore_label
    return {c: true_dice(cache.masks(c), pool.label(c), base.classes, ignore) for c in pool.case_ids}


def score_pool(
    base: BaseModel, pool: PreprocessedPool, cache: ProposalCache, settings: JudgeSettings, progress: bool = True,
    dice: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """``{case: (K,) scores}`` of every pool case from the chosen judge (higher = better).

    ``dice``: the cases' true Dice if the caller already has it (:func:`hidden_true_dice`); the oracle uses it
    instead of computing it again.

    Raises:
        FileNotFoundError: oracle without hidden labels, learned judge not trained, external file missing.
        ValueError: unknown judge or an invalid external file.
    """
    judge = settings.judge
    if judge not in JUDGES:
        raise ValueError(f"unknown judge {judge!r}; valid: {', '.join(JUDGES)}")
    require_complete(cache, pool)
    if judge == "external":
        if not settings.scores_file:
            raise ValueError("judge 'external' needs a scores CSV (judge_scores / --scores) with columns "
                             "case_id,proposal,score")
        return read_external_scores(settings.scores_file, {c: len(cache.masks(c)) for c in pool.case_ids})
    if judge == "oracle" and not pool.has_labels:
        raise FileNotFoundError(
            "judge 'oracle' needs hidden ground truth for every pool case in labelsUnlabeled/ next to the "
            "unlabeled images; use 'agreement', 'uncertainty', 'learned' or 'external' for real unlabeled data")
    learned = None
    if judge == "learned":
        from nnunetv2_rndpo.learned_judge import load_learned_judge

        learned = load_learned_judge(settings.learned_judge or base.fold_folder / LEARNED_JUDGE_FILE, base.device)
    rng = np.random.default_rng(settings.seed)
    sigma = oracle_sigma(base, pool, cache, settings, dice) if judge == "oracle" else settings.sigma
    scores = {}
    for case_id in tqdm(pool.case_ids, desc=f"judge {judge}", disable=not progress):
        masks = cache.masks(case_id)
        if judge == "agreement":  # hybrids are compared with the base proposals only
            references = cache.num_base(case_id) if isinstance(cache, HybridCache) else None
            scores[case_id] = agreement_scores(masks, base.classes, references)
        elif judge == "uncertainty":
            scores[case_id] = uncertainty_scores(masks, cache.probabilities(case_id), base.classes,
                                                 base.label_manager.has_regions)
        elif judge == "learned":
            scores[case_id] = learned.score(np.asarray(pool.image(case_id)), masks)
        elif judge == "oracle":
            scores[case_id], _ = oracle_scores(masks, pool.label(case_id), base.classes, sigma, rng,
                                               settings.size_bias, base.label_manager.ignore_label,
                                               None if dice is None else dice[case_id])
        else:
            raise ValueError(f"judge {judge!r} has no per-case scoring here; valid: {', '.join(JUDGES)}")
    return scores


# ---------------------------------------------------------------------------------------------- labeled reliability

# rDPO's loss needs ε < 0.5 and is flat at 0.5; an estimate from a handful of validation cases is noisy
MAX_AUTO_LABEL_SMOOTHING = 0.4


def labeled_proposals(base: BaseModel, settings: ProposalSettings, progress: bool = True, log=print,
                      ) -> tuple[LabeledPool, ProposalCache]:
    """The fold's labeled validation cases and the base model's proposals for them (generated if missing).

    Cached in ``<cache_folder>/labeled_proposals/<key>`` (with their hybrids when ``settings.hybrids``).

    Raises:
        ValueError: the fold has no validation cases.
    """
    cases, _, val_ids = labeled_cases(base, base.fold)
    if not val_ids:
        raise ValueError(f"fold {base.fold} of {base.dataset_name} has no validation cases (splits_final.json); "
                         "this needs the base model of a cross-validation fold, not fold 'all'")
    pool = LabeledPool(cases, val_ids)
    cache, specs, extra = proposal_cache(base, settings, "labeled_proposals")
    generated = generate_proposals(cache, pool, base.predictor(), specs, base.label_manager, base.mirror_axes,
                                   base.device, progress, seed=settings.seed, extra_weights=extra,
                                   cascade_labels=base.cascade_labels)
    log(f"RN-DPO: proposals for {len(val_ids)} labeled validation cases in {cache.folder} ({generated} new)")
    return pool, ensure_hybrids(cache, pool, settings, progress=progress, log=log)


def labeled_reliability(
    base: BaseModel, settings: ProposalSettings, judge: JudgeSettings, mining: MiningParams,
    progress: bool = True, log=print,
) -> dict[str, float]:
    """A judge's reliability measured on labeled cases, without hidden labels for the pool.

    The base model of fold f never saw its fold's validation cases, so its proposals for them are made
    like those for unlabeled cases, and their true Dice is known. They are cached in
    ``<cache_folder>/labeled_proposals/<key>``, scored by the judge and compared with the true Dice
    (:func:`~nnunetv2_rndpo.reliability.judge_reliability`); ``labeled/mined_pair_acc`` is the share of
    pairs that ``mining`` mines there whose chosen mask really is better, and ``labeled/flip_rate`` is
    1 − that (the ε the robust loss assumes; see :func:`auto_label_smoothing`).

    Raises:
        ValueError: no validation cases in the fold, or the ``external`` judge (it cannot score them).
    """
    from nnunetv2_rndpo.reliability import judge_reliability

    if judge.judge == "external":
        raise ValueError("the external judge cannot score the labeled validation cases; measure its reliability with "
                         "--report on a pool with hidden labels, or set label_smoothing to a number")
    pool, cache = labeled_proposals(base, settings, progress, log)
    val_ids = pool.case_ids
    with cache.remembering():
        dice = hidden_true_dice(base, pool, cache)
        scores = score_pool(base, pool, cache, judge, progress, dice)
        _, stats = mine_pool(cache, val_ids, scores, mining, judge.seed, dice)
    ranked = judge_reliability(base_scores(cache, scores), base_scores(cache, dice))
    report = {f"labeled/{k}": v for k, v in ranked.items()}
    report["labeled/mined_pairs"] = stats["pairs/count"]
    report["labeled/mined_pair_acc"] = stats.get("pairs/oracle_acc", float("nan"))
    report["labeled/flip_rate"] = auto_label_smoothing(report)
    return report


def auto_label_smoothing(report: dict[str, float]) -> float:
    """ε for ``label_smoothing: "auto"``: 1 − accuracy of the mined pairs on labeled cases.

    Falls back to 1 − pairwise accuracy when no pair was mined, and to 0 when neither is known; clipped to
    [0, ``MAX_AUTO_LABEL_SMOOTHING``]. Assumption: the flip rate of the pairs mined on the fold's
    validation cases is the flip rate of the pairs mined on the pool (same base model, same judge).
    """
    import math

    accuracy = report.get("labeled/mined_pair_acc", math.nan)
    if math.isnan(accuracy):
        accuracy = report.get("labeled/pairwise/accuracy", math.nan)
    if math.isnan(accuracy):
        return 0.0
    return float(min(max(1.0 - accuracy, 0.0), MAX_AUTO_LABEL_SMOOTHING))


# ---------------------------------------------------------------------------------------------- headroom


def plain_prediction_dice(base: BaseModel, pool, progress: bool = True) -> dict[str, float]:
    """``{case: true Dice}`` of nnU-Net's own prediction of every case of ``pool`` (which must have labels).

    The prediction is what ``nnUNetv2_predict`` makes, in preprocessed space: the sliding-window logits
    averaged over every allowed mirror flip (nnU-Net averages logits, not probabilities), then the label
    manager's argmax or region threshold. Costs one TTA prediction per case (not cached).
    """
    predictor = base.predictor()
    predictor.use_mirroring = bool(base.mirror_axes)
    ignore = base.label_manager.ignore_label
    dice = {}
    with torch.inference_mode():
        for case_id in tqdm(pool.case_ids, desc="plain TTA prediction", disable=not progress):
            image = torch.from_numpy(np.array(pool.image(case_id))).to(base.device)
            logits = predictor.predict_sliding_window_return_logits(image).float().cpu()
            prediction = np.asarray(base.label_manager.convert_logits_to_segmentation(logits))
            dice[case_id] = float(true_dice(prediction[None], pool.label(case_id), base.classes, ignore)[0])
    return dice


def headroom_report(base: BaseModel, pool, cache: ProposalCache, settings: ProposalSettings, mining: MiningParams,
                    progress: bool = True, plain_dice: dict[str, float] | None = None) -> dict[str, float]:
    """The proposals' headroom on cases with known labels (the pool's hidden ones, or labeled cases).

    :func:`~nnunetv2_rndpo.reliability.headroom_summary` of the proposals' and the plain prediction's true
    Dice, plus: ``headroom/proposals`` (K), ``headroom/forwards_per_case`` (forward passes per tile,
    :func:`~nnunetv2_rndpo.proposals.forward_passes`), and for the pairs ``mining`` mines with a perfect
    judge (the true Dice as scores): ``headroom/oracle_pairs``, ``headroom/region_size_mean`` (mean |D|),
    ``headroom/chosen_right_in_region`` and ``headroom/chosen_right_where_decidable``
    (:func:`~nnunetv2_rndpo.reliability.region_label_accuracy`). ``plain_dice``: the plain prediction's Dice
    if already known (:func:`plain_prediction_dice`; it does not depend on the proposals).

    Raises:
        FileNotFoundError: some case has no label, or no current proposals.
    """
    from nnunetv2_rndpo.proposals import forward_passes
    from nnunetv2_rndpo.reliability import headroom_summary, region_label_accuracy

    require_complete(cache, pool)
    with cache.remembering():
        dice = hidden_true_dice(base, pool, cache)
        if dice is None:
            raise FileNotFoundError("the headroom report needs the true label of every case: hidden labels in "
                                    "labelsUnlabeled/ next to the unlabeled images, or use --report-labeled")
        pairs, _ = mine_pool(cache, pool.case_ids, dice, mining, settings.seed, dice)
        shares = region_label_accuracy(pairs, cache, pool, base.label_manager.ignore_label)
    report = headroom_summary(dice, plain_dice or plain_prediction_dice(base, pool, progress))
    report["headroom/proposals"] = settings.num_proposals
    report["headroom/forwards_per_case"] = forward_passes(proposal_specs(base, settings), base.mirror_axes)
    report["headroom/oracle_pairs"] = len(pairs)
    report["headroom/region_size_mean"] = float(np.mean([p.region_size for p in pairs])) if pairs else float("nan")
    for key in ("chosen_right_in_region", "chosen_right_where_decidable"):
        report[f"headroom/{key}"] = shares.get(f"pairs/{key}", float("nan"))
    return report
