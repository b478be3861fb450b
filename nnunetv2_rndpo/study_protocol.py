"""The study's protocol: its datasets, arms, scales and the settings every arm is pinned to.

Read by the runner (:mod:`nnunetv2_rndpo.study`) and the report (:mod:`nnunetv2_rndpo.study_report`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

PROPOSALS = {"num_proposals": 8, "proposal_sources": ["mirror", "threshold", "temperature"], "seed": 12345}
# The weak judge is calibrated the way DPO uses it: on within-case pair accuracy, not on a pooled Spearman,
# which differences between cases alone reach (docs/study.md says what that did to the earlier results).
# Each weak judge: its name → the within-case pair accuracy its σ is calibrated to, all with WEAK_SIZE_BIAS. ``weak``
# is the first round's (its scores_weak.csv and weak_calibration); the second round brackets it with a more and a
# less reliable level (docs/study.md, "Second round").
WEAK_JUDGES = {"weak": 0.70, "weak75": 0.75, "weak62": 0.62}
WEAK_TARGET_PAIR_ACCURACY = WEAK_JUDGES["weak"]
WEAK_SIZE_BIAS = 0.05
# judges whose reliability every study reports beside the scale's arm judges (cheap: no arms, no training)
REPORTED_JUDGES = ("uncertainty",)
# the judge whose top-scored proposals are the pseudo-labels of self-training ``top_proposal`` (--self-training):
# the label-free default a user without hidden labels would take
SELF_TRAINING_JUDGE = "agreement"


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
    tunes: str | None = None  # a tuning arm (TUNING_GRID): the method whose β and learning rate it helps choose

    @property
    def name(self) -> str:
        return " | ".join(x for x in (self.method, self.judge, self.mining if self.judge else None) if x)

    @property
    def hybrids(self) -> int:
        """Hybrids per case the judge must score for this arm (``local`` mining pairs proposals with them); 0 else."""
        return self.overrides.get("mining_max_pairs_per_case", LOCAL_HYBRIDS) if self.mining == "local" else 0

    @property
    def folder_name(self) -> str:
        return "".join(c if c.isalnum() else "_" for c in self.name)


# ``local`` mining: hybrids per case, each one pair (benchmarks/headroom.py's HYBRIDS_PER_CASE; the config's
# local_part_voxels and local_min_part_voxels defaults, 64 and 10, are headroom's "local" parts)
LOCAL_HYBRIDS = 16


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


# The second round (docs/study.md, "Second round"): the mining comparison under the reliable and the least
# reliable weak judge; the anchored and pseudo-label arms under the reliable and the label-free default judge.
ROUND2_MINING_JUDGES = ("oracle", "weak62")
ROUND2_MININGS = ("top_random", "local")
ROUND2_BASELINE_JUDGES = ("oracle", SELF_TRAINING_JUDGE)


def round2_arms(judges: tuple[str, ...], full: bool, mining_judges: tuple[str, ...] = ROUND2_MINING_JUDGES,
                minings: tuple[str, ...] = ROUND2_MININGS,
                baseline_judges: tuple[str, ...] = ROUND2_BASELINE_JUDGES) -> list[Arm]:
    """The second round's arms: the control, and per judge DPO and RN-DPO (``top_bottom``); under the
    ``mining_judges`` also both with each of the ``minings`` (``local``: LOCAL_HYBRIDS hybrids per case); under
    the ``baseline_judges`` RN-DPO + sft and pseudo-label. ``full=True`` (gpu2): all of it under every judge. The
    arms' names and settings are those of :func:`arms_for`, so that the comparisons read both rounds alike;
    self-training runs beside them (``Scale.self_training``). A scale chooses the three tuples
    (:class:`Scale`; ``cpu2lean`` runs fewer arms)."""
    dpo = {"sft_weight": 0.0, "beta": PROTOCOL_BETA["none"]}
    rn_dpo = {"sft_weight": 0.0, "beta": PROTOCOL_BETA["region"]}
    local = {"mining_max_pairs_per_case": LOCAL_HYBRIDS}
    arms = [Arm("control (continued supervised)", "nnUNetTrainerContinuedSFT", None)]
    for judge in judges:
        arms += [Arm("DPO", "nnUNetTrainerDPO", judge, overrides=dpo),
                 Arm("RN-DPO", "nnUNetTrainerRNDPO", judge, overrides=rn_dpo)]
        if full or judge in mining_judges:
            for mining in minings:
                extra = local if mining == "local" else {}
                arms += [Arm("DPO", "nnUNetTrainerDPO", judge, mining, {**dpo, **extra}),
                         Arm("RN-DPO", "nnUNetTrainerRNDPO", judge, mining, {**rn_dpo, **extra})]
        if full or judge in baseline_judges:
            arms += [Arm("RN-DPO + sft", "nnUNetTrainerRNDPO", judge, overrides={**rn_dpo, "sft_weight": 1.0}),
                     Arm("pseudo-label", "nnUNetTrainerPseudoLabel", judge, overrides={"sft_weight": 1.0})]
    return arms


def protocol_arms(judges: tuple[str, ...], full: bool, protocol_round: int = 1, tuning: bool = False,
                  **choice: tuple[str, ...]) -> list[Arm]:
    """The arms of a scale's protocol: :func:`arms_for` (first round) or :func:`round2_arms` (with ``choice``:
    its ``mining_judges``, ``minings``, ``baseline_judges``); with ``tuning`` the :func:`tuning_arms` first (they
    choose the β and learning rate of the others, :func:`tuned_arm`)."""
    if protocol_round not in (1, 2):
        raise ValueError(f"unknown protocol round {protocol_round}; valid: 1, 2")
    arms = arms_for(judges, full) if protocol_round == 1 else round2_arms(judges, full, **choice)
    return (tuning_arms() if tuning else []) + arms


# the fields of a Scale (and of a results.json "protocol") that choose round2_arms' arms beyond its judges
ROUND2_CHOICE = ("mining_judges", "minings", "baseline_judges")


def scale_arms(protocol: Scale | dict, tuning: bool) -> list[Arm]:
    """:func:`protocol_arms` of a :class:`Scale` or of a ``results.json`` ``"protocol"`` (which holds the scale's
    fields; a file from before a field existed gets the field's default, the arms it ran)."""
    p = asdict(protocol) if isinstance(protocol, Scale) else protocol
    return protocol_arms(tuple(p.get("judges", ())), p.get("full_arms", False), p.get("protocol_round", 1), tuning,
                         **{k: tuple(p[k]) for k in ROUND2_CHOICE if k in p})


# Honest tuning (the second round; docs/study.md, "Honest tuning"). Per seed, DPO and RN-DPO are run under
# TUNING_JUDGE at every point of TUNING_GRID: factors (of β, of the learning rate) on the protocol's β
# (PROTOCOL_BETA) and the scale's learning rate. The point with the best *validation* sustained Dice (on the
# dataset's imagesVal/labelsVal: cases held out of the pool and of the test set) is the β and learning rate that
# every other arm of that method (TUNED_METHODS) runs with on that seed. The test set plays no part in the choice.
# Assumption: tuned under the reliable judge (where the pairs carry information, so the step size matters) and
# used under every judge; the control and pseudo-label keep the scale's learning rate.
TUNING_JUDGE = "oracle"
TUNING_GRID = ((0.25, 1.0), (1.0, 1.0), (4.0, 1.0), (1.0, 3.0))
TUNED_METHODS = {"DPO": "DPO", "RN-DPO": "RN-DPO", "RN-DPO + sft": "RN-DPO"}  # arm method → the method it is tuned as
TUNING_TRAINERS = {"DPO": ("nnUNetTrainerDPO", PROTOCOL_BETA["none"]),
                   "RN-DPO": ("nnUNetTrainerRNDPO", PROTOCOL_BETA["region"])}


def tuning_arms() -> list[Arm]:
    """DPO and RN-DPO under TUNING_JUDGE (``top_bottom``, no supervised anchor) at every TUNING_GRID point; the
    learning rate is given as a factor (``learning_rate_factor``) of the scale's, which the runner resolves."""
    return [Arm(f"{method} (tuning: β {beta * b:g}, lr ×{lr:g})", trainer, TUNING_JUDGE,
                overrides={"sft_weight": 0.0, "beta": beta * b, "learning_rate_factor": lr}, tunes=method)
            for method, (trainer, beta) in TUNING_TRAINERS.items() for b, lr in TUNING_GRID]


def tuned_settings(arms: dict[str, dict]) -> dict[str, dict]:
    """Per tuned method, the tuning arm with the best validation sustained Dice among a seed's finished ``arms``
    (``results.json`` records): ``{method: {"arm", "beta", "learning_rate", "validation_sustained"}}``.

    Raises:
        ValueError: a method's tuning arms are not all finished, or one has no validation curve (its dataset
            has no imagesVal/labelsVal: make it with ``--validation``).
    """
    chosen = {}
    for method in TUNING_TRAINERS:
        names = [a.name for a in tuning_arms() if a.tunes == method]
        missing = [n for n in names if n not in arms]
        if missing:
            raise ValueError(f"tuning arms not finished yet: {', '.join(missing)}")
        blind = [n for n in names if not arms[n].get("validation_summary")]
        if blind:
            raise ValueError(f"tuning arms without a validation curve: {', '.join(blind)}; the dataset needs "
                             "imagesVal/labelsVal (nnUNetv2_rndpo_make_dataset --validation V)")
        best = max(names, key=lambda n: arms[n]["validation_summary"]["sustained"])  # first on a tie: grid order
        chosen[method] = {"arm": best, "beta": arms[best]["config"]["beta"],
                          "learning_rate": arms[best]["config"]["learning_rate"],
                          "validation_sustained": arms[best]["validation_summary"]["sustained"]}
    return chosen


def tuned_arm(arm: Arm, tuned: dict[str, dict]) -> Arm:
    """``arm`` with the β and learning rate chosen for its method (:func:`tuned_settings`); other arms unchanged."""
    method = TUNED_METHODS.get(arm.method)
    if arm.tunes or method is None:
        return arm
    choice = tuned[method]
    return replace(arm, overrides={**arm.overrides, "beta": choice["beta"], "learning_rate": choice["learning_rate"]})


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
    protocol_round: int = 1  # whose arms: 1 = arms_for, 2 = round2_arms (protocol_arms)
    self_training: tuple[str, ...] = ()  # self-training sources run per seed unless --self-training says otherwise
    num_validation: int = 0  # cases held out of the pool with labels (imagesVal/labelsVal): the tuning's validation
    tuning: bool = False  # run tuning_arms first and the tuned methods' arms at the chosen β and learning rate
    # the second round's arms beyond the judges (round2_arms) and the judges only reported (reliability, no arms)
    mining_judges: tuple[str, ...] = ROUND2_MINING_JUDGES
    minings: tuple[str, ...] = ROUND2_MININGS
    baseline_judges: tuple[str, ...] = ROUND2_BASELINE_JUDGES
    reported_judges: tuple[str, ...] = ()


SCALES = {
    # its time per dataset: docs/study.md, "Time". Learning rate 1e-5, the config default: at 1e-4 the label-free
    # anchors alone let the model fall before it recovered (docs/results/anchors_hippocampus_cpu.md); at 1e-5
    # RN-DPO with every anchor (sft too) stayed above its base, while the study arms without sft fell on
    # Hippocampus (docs/study.md).
    "cpu": Scale("nnUNetTrainer_cpuBase", 5, 20, 1e-5, (0, 1), ("oracle", "weak", "agreement", "learned"), max_pool=60),
    # paper-sized: nnU-Net's 250-epoch schedule for the base, 3 seeds, every arm under every judge.
    "gpu": Scale("nnUNetTrainer_250epochs", 10, 100, 1e-5, (0, 1, 2), ("oracle", "weak", "agreement", "learned"),
                 full_arms=True),
    # the second round on CPU (docs/study.md, "Second round"): 2x the cpu scale's fine-tuning in 8 epochs of 25
    # iterations (8 evaluation points), 4 seeds, the weak judge at two levels, self-training beside the fine-tuning
    # arms, β and learning rate chosen on 20 validation cases held out of the pool (tuning_arms).
    "cpu2": Scale("nnUNetTrainer_cpuBase", 8, 25, 1e-5, (0, 1, 2, 3),
                  ("oracle", "weak75", "weak62", "agreement", "uncertainty", "learned"), max_pool=60,
                  protocol_round=2, self_training=("tta", "top_proposal"), num_validation=20, tuning=True),
    # cpu2 for a dataset whose arms take ~2.4x HC18's (Hippocampus, 3D): the same schedule, tuning and
    # self-training in 11 arms instead of 25, so that one seed fits about 2.5 h on 2 cores (docs/study.md,
    # "Hippocampus, second round"). DPO and RN-DPO under the reliable judge, the less reliable weak judge and the
    # label-free default; local mining under the reliable judge; RN-DPO + sft and pseudo-label under the label-free
    # default, the judge of self-training's top proposals. weak75, uncertainty and learned: reliability only.
    "cpu2lean": Scale("nnUNetTrainer_cpuBase", 8, 25, 1e-5, (0, 1, 2), ("oracle", "weak62", SELF_TRAINING_JUDGE),
                      max_pool=60, protocol_round=2, self_training=("tta", "top_proposal"), num_validation=20,
                      tuning=True, mining_judges=("oracle",), minings=("local",),
                      baseline_judges=(SELF_TRAINING_JUDGE,), reported_judges=("weak75", "uncertainty", "learned")),
    # its paper-sized counterpart: 2x the gpu scale's fine-tuning, every round-2 arm under every judge.
    "gpu2": Scale("nnUNetTrainer_250epochs", 20, 100, 1e-5, (0, 1, 2, 3),
                  ("oracle", "weak75", "weak62", "agreement", "uncertainty", "learned"), full_arms=True,
                  protocol_round=2, self_training=("tta", "top_proposal"), num_validation=20, tuning=True),
    # the second round's machinery in minutes on the synthetic dataset (tests): validation split and tuning
    "smoke2": Scale("nnUNetTrainer_rndpoSmoke", 2, 5, 1e-4, (0,), ("oracle",), num_labeled=8, protocol_round=2,
                    num_validation=4, tuning=True),
    # a minutes-long run of the machinery on the synthetic dataset (tests)
    "smoke": Scale("nnUNetTrainer_rndpoSmoke", 2, 5, 1e-4, (0,), ("oracle",), num_labeled=8),
}
