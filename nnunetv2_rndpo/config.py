"""One validated configuration for the preference fine-tuning phase.

nnU-Net trainers take no command-line arguments and must keep ``nnUNetTrainer.__init__``'s signature,
so every knob lives in :class:`RNDPOConfig`. A trainer preset fixes a few fields; a JSON file named by
the environment variable ``nnUNet_rndpo_config`` overrides any of them::

    export nnUNet_rndpo_config=/path/to/rndpo.json     # {"beta": 0.5, "judge": "oracle"}
    nnUNetv2_train 4 3d_fullres 0 -tr nnUNetTrainerRNDPO

The effective configuration is saved as ``rndpo_config.json`` in the fold folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunetv2_rndpo.judges import JUDGES
from nnunetv2_rndpo.mining import MININGS
from nnunetv2_rndpo.objective import LOSS_TYPES, NORMALIZATIONS
from nnunetv2_rndpo.proposals import PROPOSAL_SOURCES

CONFIG_ENV_VAR = "nnUNet_rndpo_config"
OPTIMIZERS = ("adamw", "sgd")
BAD_CASE_ACTIONS = ("stop", "skip")

# Assumption: β's scale depends on the normaliser (Δ sums |D| voxels under "none" but is a per-voxel
# mean under "region"); these defaults make h = β·u of order 1 for a typical disagreement of a few
# hundred voxels in a patch of ~10^4-10^5 voxels with per-voxel log-ratio gaps of order 0.1-1.
# "region" is 4, set by the study (docs/study.md, "Defaults"; docs/objective.md): at 1, RN-DPO drifted further
# from its base than DPO at 0.01 and lost more; at 4 its drift matched DPO's.
DEFAULT_BETA = {"none": 0.01, "region": 4.0, "sqrt_region": 0.1, "volume": 100.0}


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class RNDPOConfig:
    """Every knob of the preference fine-tuning phase, with defaults for a GPU fine-tuning run."""

    # schedule
    num_epochs: int = _help("epochs of the preference phase (not nnU-Net's 1000)", default=50)
    num_iterations_per_epoch: int = _help("training iterations per epoch", default=100)
    num_val_iterations_per_epoch: int = _help(
        "nnU-Net's pseudo-Dice validation iterations on the labeled validation split per epoch", default=50
    )
    learning_rate: float = _help("initial learning rate; larger moves further from the base model", default=1e-5)
    optimizer: str = _help(f"optimizer: one of {OPTIMIZERS}; adamw suits fine-tuning", default="adamw")
    grad_clip: float = _help("max gradient norm (nnU-Net clips at 12); smaller steps are safer", default=1.0)
    batch_size: int | None = _help(
        "samples per step (pairs, plus labeled samples when sft_weight > 0, see sft_batch_fraction); "
        "None = the batch size nnU-Net planned", default=None,
    )
    # Assumption: a few % of the phase, linear (docs/performance.md, "Warm-up": measured on the demo)
    warmup_fraction: float = _help(
        "share of the phase's iterations (num_epochs × num_iterations_per_epoch) over which the learning rate "
        "rises linearly to nnU-Net's scheduled rate, per iteration; 0 = no warm-up", default=0.05,
    )
    # objective
    beta: float | None = _help(
        "inverse temperature; larger sharpens preferences. None = per-normalisation default "
        f"{DEFAULT_BETA}",
        default=None,
    )
    loss_type: str = _help(f"preference loss: one of {LOSS_TYPES}", default="sigmoid")
    normalization: str = _help(
        f"margin normaliser: one of {NORMALIZATIONS}; 'region' is RN-DPO, 'none' is DPO", default="region"
    )
    min_region_voxels: int = _help(
        "pairs whose patch has fewer disagreeing voxels are skipped; larger ignores tiny disagreements",
        default=10,
    )
    label_smoothing: float | str = _help(
        "ε in [0, 0.5): cDPO smoothing for 'sigmoid', flip rate for 'robust'; larger trusts the judge less. "
        "'auto' = the flip rate of the judge's mined pairs on the fold's labeled validation cases",
        default=0.0,
    )
    # Anchors default to on: without them preference fine-tuning destroyed a real model (docs/results/).
    sft_weight: float = _help(
        "weight of nnU-Net's supervised loss on labeled patches in the same step (anchor); 0 = off",
        default=1.0,
    )
    sft_batch_fraction: float | None = _help(
        "share of the step's batch that is labeled samples when sft_weight > 0 (the pairs get the rest, so a step "
        "costs about nnU-Net's); at least 1 of each. None = a full labeled batch beside a full batch of pairs "
        "(twice nnU-Net's batch, as before this key existed)", default=0.5,
    )
    consistency_weight: float = _help(
        "weight of KL(reference ‖ policy) averaged over voxels outside D (label-free anchor); 0 = off",
        default=1.0,
    )
    agreement_weight: float = _help(
        "weight of cross-entropy to the label chosen and rejected agree on, outside D (anchor); 0 = off",
        default=1.0,
    )
    disagreement_oversample: float = _help(
        "probability that a patch is centred on a voxel where the pair disagrees; the rest are random",
        default=0.9,
    )
    guard_num_cases: int = _help(
        "pool cases held out of mining to measure drift KL(reference ‖ policy) each epoch; 0 = no guard",
        default=2,
    )
    guard_max_kl: float | None = _help(
        "drift bound: above it the epoch is rolled back and the lr decayed; None = only measure", default=None
    )
    guard_lr_decay: float = _help("learning-rate factor applied at each rollback", default=0.5)
    # proposals
    num_proposals: int = _help("masks proposed per unlabeled case (≥ 2)", default=8)
    proposal_sources: list[str] = _help(
        f"where proposals come from, any of {PROPOSAL_SOURCES} (docs/toolkit.md: definitions and costs)",
        default_factory=lambda: ["mirror", "threshold"],
    )
    proposal_models: list[str] = _help(
        "extra models for the 'model' source, 'FOLD/CHECKPOINT' in the base model's results folder "
        "(e.g. '1/checkpoint_final.pth', '0/checkpoint_best.pth'); one proposal each",
        default_factory=list,
    )
    perturb_sigma: float = _help(
        "'perturb' source: σ of the multiplicative weight noise w·(1 + σ·ε); larger = more diverse, worse masks",
        default=0.2,
    )
    # judge and mining
    judge: str = _help(f"who ranks the proposals: one of {JUDGES}", default="agreement")
    judge_scores: str | None = _help(
        "CSV 'case_id,proposal,score' from a QC system; required for judge='external'", default=None
    )
    judge_sigma: float = _help("Gaussian noise on the oracle judge's Dice; larger = less reliable", default=0.0)
    judge_pair_accuracy: float | None = _help(
        "oracle judge: calibrate its noise σ so that it orders this share of within-case proposal pairs right "
        "(with the size bias), e.g. 0.7 for a weak judge; None = use judge_sigma",
        default=None,
    )
    judge_size_bias: float = _help(
        "oracle judge's size bias B: adds B·(v_k − v̄)/v̄ (v = foreground voxels, v̄ = case mean); "
        "> 0 prefers larger masks, < 0 smaller",
        default=0.0,
    )
    learned_judge: str | None = _help(
        "file of the learned judge (nnUNetv2_rndpo_train_judge); None = rndpo_judge.pth beside the base checkpoint",
        default=None,
    )
    mining: str = _help(f"how pairs are mined from scores: one of {MININGS}", default="top_bottom")
    mining_tau: float = _help("'margin' mining: minimum score gap of a pair; larger = fewer, clearer pairs",
                              default=0.05)
    mining_min_margin: float = _help("drop pairs whose judge margin is below this (every strategy)", default=0.0)
    mining_min_region: int = _help("drop pairs whose masks differ in fewer voxels (whole case)", default=1)
    mining_max_region: int | None = _help(
        "drop pairs whose masks differ in more voxels (whole case); None = no limit", default=None
    )
    mining_max_pairs_per_case: int = _help(
        "at most this many pairs per case; larger = more, correlated pairs ('local': also the hybrids made per case)",
        default=1)
    local_part_voxels: int = _help(
        "'local' mining: largest part of a disagreement region that a hybrid swaps; smaller = more local verdicts, "
        "fewer voxels per pair", default=64)
    local_min_part_voxels: int = _help(
        "'local' mining: smaller parts make no hybrid; keep it >= min_region_voxels or their pairs are skipped",
        default=10)
    local_split_by_change: bool = _help(
        "'local' mining: split the disagreement region by change (label a -> label b) before its connected parts, so "
        "that a part is one kind of change (a bulge and a dent next to it, or a moved class border and a grown "
        "class, are two parts)", default=False)
    pairs_file: str | None = _help(
        "pairs written by nnUNetv2_rndpo_mine; None = judge and mine inside the trainer", default=None
    )
    # inputs
    base_trainer: str = _help("trainer whose results folder holds the base model", default="nnUNetTrainer")
    base_checkpoint: str | None = _help(
        "path of the base checkpoint; None = <base_trainer>__<plans>__<config>/fold_X/checkpoint_final.pth",
        default=None,
    )
    unlabeled_dir: str | None = _help(
        "folder of unlabeled images CASE_0000.ext; None = $nnUNet_raw/DatasetXXX/imagesUnlabeled", default=None
    )
    on_bad_case: str = _help(
        f"a pool case that cannot be read or does not match the dataset: one of {BAD_CASE_ACTIONS}; "
        "'stop' = error naming the file, 'skip' = leave it out with a warning and a count (docs/reliability.md)",
        default="stop",
    )
    # evaluation and reproducibility
    eval_every: int = _help("evaluate test Dice on imagesTs/labelsTs (and validation Dice on imagesVal/labelsVal "
                          "where the dataset has them) every N epochs; 0 = off", default=0)
    final_validation: bool = _help(
        "after training, run nnU-Net's validation of the fold's validation cases as nnUNetv2_train does; false "
        "skips it (at fold 'all' those are training cases); nnUNetv2_train ... --val still runs it", default=True,
    )
    overwrite_finished_fold: bool = _help(
        "a fresh run (without --c) into a fold that holds checkpoint_final.pth: false = stop with an error and leave "
        "the fold as it is; true = train it again and overwrite it (what nnU-Net itself does)", default=False,
    )
    save_every: int = _help(
        "write checkpoint_latest.pth every N epochs, from which --c resumes; smaller loses less work when killed",
        default=5,
    )
    seed: int = _help("seed of proposals, judge noise, mining and patch sampling", default=12345)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        _check_choice("loss_type", self.loss_type, LOSS_TYPES)
        _check_choice("normalization", self.normalization, NORMALIZATIONS)
        _check_choice("judge", self.judge, JUDGES)
        _check_choice("mining", self.mining, MININGS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if not self.proposal_sources:
            raise ValueError(f"proposal_sources must name at least one of {PROPOSAL_SOURCES}")
        for source in self.proposal_sources:
            _check_choice("proposal_sources", source, PROPOSAL_SOURCES)
        _check_range("num_epochs", self.num_epochs, low=1)
        _check_range("num_iterations_per_epoch", self.num_iterations_per_epoch, low=1)
        _check_range("num_val_iterations_per_epoch", self.num_val_iterations_per_epoch, low=1)
        _check_range("learning_rate", self.learning_rate, low=0, low_open=True)
        _check_range("grad_clip", self.grad_clip, low=0, low_open=True)
        if self.batch_size is not None:
            _check_range("batch_size", self.batch_size, low=1)
        if self.beta is not None:
            _check_range("beta", self.beta, low=0, low_open=True)
        _check_range("min_region_voxels", self.min_region_voxels, low=1)
        if isinstance(self.label_smoothing, str):
            if self.label_smoothing != "auto":
                raise ValueError(f"config key 'label_smoothing': {self.label_smoothing!r} is not allowed; valid: a "
                                 "number in [0, 0.5) or 'auto'")
        else:
            _check_range("label_smoothing", self.label_smoothing, low=0, high=0.5, high_open=True)
        _check_range("sft_weight", self.sft_weight, low=0)
        if self.sft_batch_fraction is not None:
            _check_range("sft_batch_fraction", self.sft_batch_fraction, low=0, high=1, low_open=True, high_open=True)
        _check_range("warmup_fraction", self.warmup_fraction, low=0, high=1, high_open=True)
        _check_range("consistency_weight", self.consistency_weight, low=0)
        _check_range("agreement_weight", self.agreement_weight, low=0)
        _check_range("guard_num_cases", self.guard_num_cases, low=0)
        if self.guard_max_kl is not None:
            _check_range("guard_max_kl", self.guard_max_kl, low=0, low_open=True)
        _check_range("guard_lr_decay", self.guard_lr_decay, low=0, high=1, low_open=True)
        _check_range("disagreement_oversample", self.disagreement_oversample, low=0, high=1)
        _check_range("num_proposals", self.num_proposals, low=2)
        _check_range("perturb_sigma", self.perturb_sigma, low=0, low_open=True)
        _check_range("judge_sigma", self.judge_sigma, low=0)
        if self.judge_pair_accuracy is not None:
            _check_range("judge_pair_accuracy", self.judge_pair_accuracy, low=0.5, high=1, low_open=True)
            if self.judge_sigma:
                raise ValueError("judge_sigma and judge_pair_accuracy both set: the oracle's σ is either given "
                                 "(judge_sigma) or calibrated to a pair accuracy (judge_pair_accuracy); drop one")
        _check_range("mining_tau", self.mining_tau, low=0)
        _check_range("mining_min_region", self.mining_min_region, low=1)
        if self.mining_max_region is not None:
            _check_range("mining_max_region", self.mining_max_region, low=self.mining_min_region)
        _check_range("mining_max_pairs_per_case", self.mining_max_pairs_per_case, low=1)
        _check_range("local_min_part_voxels", self.local_min_part_voxels, low=1)
        _check_range("local_part_voxels", self.local_part_voxels, low=self.local_min_part_voxels)
        if self.label_smoothing == "auto" and self.judge == "external":
            raise ValueError(
                "label_smoothing='auto' measures the judge on the labeled validation cases, which the external "
                "judge cannot score; set label_smoothing to a number (e.g. 1 − its pairwise accuracy)"
            )
        if "model" in self.proposal_sources and not self.proposal_models:
            raise ValueError(
                "proposal_sources has 'model' but proposal_models is empty: list the extra models, e.g. "
                '"proposal_models": ["1/checkpoint_final.pth", "0/checkpoint_best.pth"]'
            )
        _check_range("eval_every", self.eval_every, low=0)
        _check_range("save_every", self.save_every, low=1)
        _check_choice("on_bad_case", self.on_bad_case, BAD_CASE_ACTIONS)
        if self.judge == "external" and not self.judge_scores:
            raise ValueError(
                "judge='external' needs judge_scores: set \"judge_scores\": \"/path/to/scores.csv\" "
                f"(columns case_id,proposal,score) in the file named by ${CONFIG_ENV_VAR}"
            )

    @property
    def effective_beta(self) -> float:
        """β, or the default for the chosen normalisation when ``beta`` is None."""
        return DEFAULT_BETA[self.normalization] if self.beta is None else self.beta

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """``{key: one-line help}`` for every field, in declaration order."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}


def vocabularies() -> dict[str, tuple[str, ...]]:
    """``{key: valid values}`` of every config key that takes one of a fixed set of names."""
    return {"loss_type": LOSS_TYPES, "normalization": NORMALIZATIONS, "judge": JUDGES, "mining": MININGS,
            "optimizer": OPTIMIZERS, "proposal_sources": PROPOSAL_SOURCES, "on_bad_case": BAD_CASE_ACTIONS}


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"config key {key!r}: {value!r} is not allowed; valid: {', '.join(allowed)}")


def _check_range(
    key: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        bounds = " and ".join(filter(None, (lo, hi)))
        raise ValueError(f"config key {key!r}: {value!r} is out of range; must be {bounds}")


def _check_type(key: str, value: Any, annotation: str) -> None:
    """Checks a field against its annotation string (``int``, ``float | None``, ``list[str]`` ...)."""
    expected = typing.get_type_hints(RNDPOConfig)[key]
    options = typing.get_args(expected) if isinstance(expected, types.UnionType) else (expected,)
    for option in options:
        if option is type(None) and value is None:
            return
        if option is bool and isinstance(value, bool):
            return
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if option is str and isinstance(value, str):
            return
        if typing.get_origin(option) is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return
    valid = vocabularies().get(key)
    if key == "label_smoothing":
        raise ValueError(f"config key {key!r}: {value!r} has the wrong type; expected a number in [0, 0.5) or 'auto'")
    raise ValueError(f"config key {key!r}: {value!r} has the wrong type; expected {annotation}"
                     + (f" ({'a list of any of' if 'list' in str(annotation) else 'one of'} {', '.join(valid)})"
                        if valid else ""))


def load_config(preset: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> RNDPOConfig:
    """Builds the effective configuration: defaults, then a trainer's ``preset``, then the JSON file.

    The file named by ``$nnUNet_rndpo_config`` (if set) is a JSON object whose keys are fields of
    :class:`RNDPOConfig`; its values win over the preset's.

    Args:
        preset: field values fixed by a trainer class.
        environ: environment to read ``nnUNet_rndpo_config`` from (default ``os.environ``).

    Returns:
        The validated :class:`RNDPOConfig`.

    Raises:
        FileNotFoundError: the variable names a file that does not exist.
        ValueError: invalid JSON, not an object, unknown keys or bad values (naming key and allowed values).
    """
    environ = os.environ if environ is None else environ
    values = dict(preset or {})
    path = environ.get(CONFIG_ENV_VAR)
    if path:
        values.update(read_config_file(path))
    valid = [f.name for f in dataclasses.fields(RNDPOConfig)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, valid, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        source = f" in {path} (${CONFIG_ENV_VAR})" if path else ""
        raise ValueError(f"unknown config key(s) {', '.join(hints)}{source}; valid keys: {', '.join(valid)}")
    try:
        return RNDPOConfig(**values)
    except ValueError as error:
        if path:
            raise ValueError(f"{error} (from {path}, named by ${CONFIG_ENV_VAR})") from None
        raise


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a JSON config file into a dict, with errors that name the file and the variable."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"${CONFIG_ENV_VAR} points at {path}, which is a directory; it must name a JSON file (e.g. "
            f"{path / 'rndpo.json'}) holding an object of config keys")
    if not path.is_file():
        raise FileNotFoundError(
            f"${CONFIG_ENV_VAR} points at {path}, which does not exist. Create it (a JSON object of "
            f"config keys) or unset the variable to use the defaults."
        )
    try:
        values = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} (named by ${CONFIG_ENV_VAR}) is not UTF-8 text ({error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} (named by ${CONFIG_ENV_VAR}) is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} (named by ${CONFIG_ENV_VAR}) must hold a JSON object, got {type(values).__name__}")
    return values
