"""The paired comparison of two study arms: mean Δ over seeds, a hierarchical bootstrap CI, the sign count.

Two arms of one seed start from the same base model and are evaluated on the same test cases, so they are
compared case by case. For a statistic (peak, sustained or final, :func:`~nnunetv2_rndpo.metrics.curve_summary`)
each arm's Dice per test case is read at the evaluation point(s) that statistic picks on the arm's own mean
curve (:func:`statistic_per_case`); the paired difference of a case is d_{s,c} = Dice_A(s, c) − Dice_B(s, c).

    Δ_s    = mean_c d_{s,c}                   (one seed's difference; for peak and final = the curve summary's)
    Δ      = mean_s Δ_s                       (the reported difference)
    95% CI = the 2.5th and 97.5th percentile of Δ over R hierarchical bootstrap resamples: draw S seeds with
             replacement, then, for each drawn seed, its n_s test cases with replacement, the same cases for
             both arms (the difference d is resampled, so the pairing is kept); Δ* = mean over drawn seeds of
             the mean of the drawn d
    same sign = the number of seeds whose Δ_s has the sign of Δ (a Δ_s of exactly 0 has no sign)

A claim is held when the CI excludes 0. Pure functions over ``results.json``'s records: no files, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

STATISTICS = ("peak", "sustained", "final")
DEFAULT_RESAMPLES = 2000
SELF_TRAINING = "self-training"  # an arm name "self-training (<name>)" reads results["seeds"][s]["self_training"][name]


def self_training_arm(name: str) -> str:
    """The comparison's name of a self-training record (``"tta"`` → ``"self-training (tta)"``)."""
    return f"{SELF_TRAINING} ({name})"


@dataclass(frozen=True)
class PairedDifference:
    """Arm A − arm B on one statistic: Δ, its bootstrap CI, and the per-seed differences."""

    statistic: str
    mean: float
    ci_low: float
    ci_high: float
    per_seed: tuple[float, ...]
    cases: int  # paired test cases, summed over seeds

    @property
    def seeds(self) -> int:
        return len(self.per_seed)

    @property
    def same_sign(self) -> int:
        """Seeds whose Δ_s has the sign of Δ."""
        sign = np.sign(self.mean)
        return int(sum(sign != 0 and np.sign(d) == sign for d in self.per_seed))

    @property
    def held(self) -> bool:
        """Whether the CI excludes 0."""
        return self.ci_low > 0 or self.ci_high < 0


def statistic_points(curve: Sequence[float], statistic: str) -> list[int]:
    """The evaluation points (indices into ``curve``, 0 = base) a statistic of :func:`curve_summary` reads.

    peak: the argmax of d_1 … d_T (the first on ties); sustained: the last ⌈T/2⌉ points; final: T.

    Raises:
        ValueError: an unknown statistic or a curve without a point after the base.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; valid: {', '.join(STATISTICS)}")
    last = len(curve) - 1
    if last < 1:
        raise ValueError(f"a curve needs the base and at least one more point, got {list(curve)}")
    if statistic == "peak":
        return [1 + int(np.argmax(np.asarray(curve[1:], dtype=float)))]
    if statistic == "sustained":
        return list(range(last - math.ceil(last / 2) + 1, last + 1))
    return [last]


def statistic_per_case(record: Mapping, statistic: str) -> dict[str, float] | None:
    """One arm of one seed: each test case's Dice under ``statistic``, or None without per-case Dice.

    ``record`` is an arm of ``results.json`` (``curve``, ``curve_per_case``) or a self-training record
    (``dice``, ``dice_per_case``: a flat curve, whose peak = sustained = final = its Dice).

    Assumption: the evaluation point(s) are chosen on the arm's mean curve of that seed, the way
    :func:`~nnunetv2_rndpo.metrics.curve_summary` chooses them, and the per-case Dice is read there: the peak is
    the model a user would have kept by test Dice, not a per-case maximum over points (which would
    favour the arm with the noisier curve); sustained averages each case over the last ⌈T/2⌉ points.
    """
    if "dice_per_case" in record:
        return dict(record["dice_per_case"])
    rows = record.get("curve_per_case")
    if not rows:
        return None
    if len(rows) != len(record["curve"]):
        raise ValueError(f"curve_per_case has {len(rows)} rows but curve {len(record['curve'])}: they must be aligned "
                         "(row 0 = base); rerun the arm")
    points = [rows[t] for t in statistic_points(record["curve"], statistic)]
    return {case: float(np.mean([p[case] for p in points])) for case in points[0]}


def statistic_value(record: Mapping, statistic: str) -> float:
    """One arm of one seed: its mean test Dice under ``statistic`` (no per-case Dice needed; a self-training
    record's ``dice``). Equals :func:`curve_summary`'s value, and the mean of :func:`statistic_per_case` when no
    case is NaN."""
    if "dice" in record:
        return float(record["dice"])
    curve = record["curve"]
    return float(np.mean([curve[t] for t in statistic_points(curve, statistic)]))


def case_differences(a: Mapping[str, float], b: Mapping[str, float]) -> np.ndarray:
    """d_c = a_c − b_c over the cases both have with a finite Dice (sorted by case id), shape ``(n,)``.

    Raises:
        ValueError: no such case (the arms were not evaluated on the same test set).
    """
    cases = sorted(c for c in a.keys() & b.keys() if math.isfinite(a[c]) and math.isfinite(b[c]))
    if not cases:
        raise ValueError(f"no test case with a Dice in both arms (cases {sorted(a)[:3]}… vs {sorted(b)[:3]}…): a "
                         "paired comparison needs both arms evaluated on the same test set")
    return np.array([a[c] - b[c] for c in cases], dtype=float)


def paired_difference(per_seed_a: Sequence[Mapping[str, float]], per_seed_b: Sequence[Mapping[str, float]],
                      statistic: str = "sustained", resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                      confidence: float = 0.95) -> PairedDifference:
    """A − B with the hierarchical bootstrap CI of the module docstring.

    Args:
        per_seed_a: per seed, arm A's ``{case_id: Dice}`` (:func:`statistic_per_case`); S seeds.
        per_seed_b: the same seeds of arm B, in the same order.
        statistic: the name the result carries (the per-case values are already that statistic's).
        resamples: R, the number of bootstrap resamples (more: a steadier interval, slower).
        seed: the bootstrap's random seed (the same inputs give the same interval).
        confidence: the interval's coverage.

    Raises:
        ValueError: no seed, a different number of seeds per arm, fewer than 1 resample, or a seed without a
            shared test case.
    """
    if not per_seed_a or len(per_seed_a) != len(per_seed_b):
        raise ValueError(f"a paired comparison needs the same seeds in both arms, got {len(per_seed_a)} and "
                         f"{len(per_seed_b)}")
    if resamples < 1:
        raise ValueError(f"resamples {resamples}: the bootstrap needs at least 1 resample")
    differences = [case_differences(a, b) for a, b in zip(per_seed_a, per_seed_b, strict=True)]
    per_seed = np.array([d.mean() for d in differences])
    rng = np.random.default_rng(seed)
    num_seeds = len(differences)
    drawn_seeds = rng.integers(0, num_seeds, size=(resamples, num_seeds))  # (R, S): which seed fills each slot
    # every slot draws its own cases for every seed, so a seed drawn twice gets two independent case draws
    case_means = np.stack([np.stack([d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
                                     for d in differences]) for _ in range(num_seeds)])  # (slot, S, R)
    slots, replicate = np.arange(num_seeds)[None, :], np.arange(resamples)[:, None]
    bootstrap = case_means[slots, drawn_seeds, replicate].mean(axis=1)  # (R,)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(bootstrap, [tail, 100 - tail])
    return PairedDifference(statistic, float(per_seed.mean()), float(low), float(high),
                            tuple(float(d) for d in per_seed), int(sum(d.size for d in differences)))


def seed_arm(seed_record: Mapping, name: str) -> Mapping | None:
    """A seed's record of arm ``name``: ``arms[name]``, or ``self_training[<x>]`` for ``"self-training (<x>)"``."""
    if name.startswith(f"{SELF_TRAINING} (") and name.endswith(")"):
        return seed_record.get("self_training", {}).get(name[len(SELF_TRAINING) + 2:-1])
    return seed_record.get("arms", {}).get(name)


def seeds_with_both(results: Mapping, arm_a: str, arm_b: str) -> list[Mapping]:
    """The seed records of ``results`` that hold both arms."""
    return [s for s in results["seeds"].values() if seed_arm(s, arm_a) is not None and seed_arm(s, arm_b) is not None]


def seed_differences(results: Mapping, arm_a: str, arm_b: str, statistic: str = "sustained") -> tuple[float, ...]:
    """Δ_s of the mean curves (:func:`statistic_value`) per seed that ran both arms: the per-seed differences
    of results without per-case Dice (no interval from them)."""
    return tuple(statistic_value(seed_arm(s, arm_a), statistic) - statistic_value(seed_arm(s, arm_b), statistic)
                 for s in seeds_with_both(results, arm_a, arm_b))


def compare_arms(results: Mapping, arm_a: str, arm_b: str, statistic: str = "sustained",
                 resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> PairedDifference | None:
    """:func:`paired_difference` of two arms of a study's ``results.json`` over the seeds that ran both.

    Returns None when no seed ran both or a seed that ran both has no per-case Dice for one of them (results
    written before ``curve_per_case`` was kept).
    """
    per_seed_a, per_seed_b = [], []
    for seed_record in seeds_with_both(results, arm_a, arm_b):
        a, b = seed_arm(seed_record, arm_a), seed_arm(seed_record, arm_b)
        case_a, case_b = statistic_per_case(a, statistic), statistic_per_case(b, statistic)
        if case_a is None or case_b is None:
            return None
        per_seed_a.append(case_a)
        per_seed_b.append(case_b)
    if not per_seed_a:
        return None
    return paired_difference(per_seed_a, per_seed_b, statistic, resamples, seed)
