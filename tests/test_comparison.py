"""The paired comparison of two arms: known answers for Δ, the bootstrap CI and the sign count (fast)."""

import math

import numpy as np
import pytest

from nnunetv2_rndpo.comparison import (
    STATISTICS,
    compare_arms,
    paired_difference,
    self_training_arm,
    statistic_per_case,
    statistic_points,
)
from nnunetv2_rndpo.metrics import curve_summary

CASES = [f"case_{i}" for i in range(20)]


def _cases(values):
    return dict(zip(CASES, values, strict=False))


def test_a_constant_difference_gives_a_zero_width_interval_at_that_value():
    rng = np.random.default_rng(0)
    b = [_cases(rng.uniform(0.5, 0.9, 20)) for _ in range(3)]
    a = [{c: d + 0.02 for c, d in seed.items()} for seed in b]
    result = paired_difference(a, b, resamples=500)
    assert result.mean == pytest.approx(0.02)
    assert result.ci_low == pytest.approx(0.02) and result.ci_high == pytest.approx(0.02)
    assert result.same_sign == result.seeds == 3 and result.held and result.cases == 60


def test_cases_of_both_signs_give_an_interval_containing_zero():
    b = [_cases([0.7] * 20)] * 2
    a = [_cases([0.8, 0.6] * 10), _cases([0.6, 0.8] * 10)]
    result = paired_difference(a, b, resamples=1000)
    assert result.mean == pytest.approx(0.0, abs=1e-12)
    assert result.ci_low < 0 < result.ci_high and not result.held


def test_the_sign_count_counts_seeds_with_the_sign_of_the_mean():
    b = [_cases([0.5] * 20)] * 4
    a = [_cases([0.5 + d] * 20) for d in (0.03, 0.02, -0.01, 0.0)]
    result = paired_difference(a, b, resamples=200)
    assert result.per_seed == pytest.approx((0.03, 0.02, -0.01, 0.0))
    assert result.mean == pytest.approx(0.01) and result.same_sign == 2 and result.seeds == 4
    # the interval comes from resampling seeds: it spans the per-seed differences' range at most
    assert -0.01 - 1e-12 <= result.ci_low <= result.mean <= result.ci_high <= 0.03 + 1e-12


def test_resampling_seeds_and_cases_widens_the_interval_against_cases_alone():
    rng = np.random.default_rng(1)
    b = [_cases(rng.uniform(0.5, 0.9, 20)) for _ in range(4)]
    shifts = (0.0, 0.04, 0.01, 0.03)
    a = [{c: d + shift + rng.normal(0, 0.01) for c, d in seed.items()} for seed, shift in zip(b, shifts, strict=True)]
    hierarchical = paired_difference(a, b, resamples=2000)
    one_seed = paired_difference(a[:1], b[:1], resamples=2000)
    assert hierarchical.ci_high - hierarchical.ci_low > 0.02  # seeds disagree by up to 0.04
    assert one_seed.ci_high - one_seed.ci_low < 0.02  # one seed: only the case noise (sd 0.01)


def test_the_bootstrap_is_seeded_and_its_resamples_are_a_knob():
    rng = np.random.default_rng(2)
    b = [_cases(rng.uniform(0.5, 0.9, 20)) for _ in range(2)]
    a = [{c: d + rng.normal(0.01, 0.05) for c, d in seed.items()} for seed in b]
    first, again = paired_difference(a, b, seed=3), paired_difference(a, b, seed=3)
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    assert paired_difference(a, b, seed=4).ci_low != first.ci_low
    with pytest.raises(ValueError, match="at least 1 resample"):
        paired_difference(a, b, resamples=0)


def test_cases_missing_or_nan_in_one_arm_are_left_out_of_the_pairing():
    a = [{"x": 0.9, "y": math.nan, "z": 0.5}]
    b = [{"x": 0.8, "y": 0.7, "w": 0.1}]
    result = paired_difference(a, b, resamples=100)
    assert result.cases == 1 and result.mean == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same test set"):
        paired_difference([{"x": 0.9}], [{"y": 0.9}])
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference(a, [])


@pytest.mark.parametrize("curve, expected", [
    ([0.5, 0.6, 0.7, 0.65], {"peak": [2], "sustained": [2, 3], "final": [3]}),
    ([0.5, 0.6, 0.7, 0.65, 0.62], {"peak": [2], "sustained": [3, 4], "final": [4]}),
    ([0.5, 0.4], {"peak": [1], "sustained": [1], "final": [1]}),
])
def test_the_points_each_statistic_reads_are_the_curve_summarys(curve, expected):
    for statistic in STATISTICS:
        points = statistic_points(curve, statistic)
        assert points == expected[statistic]
        assert np.mean([curve[t] for t in points]) == pytest.approx(curve_summary(curve)[statistic])
    with pytest.raises(ValueError, match="valid: peak, sustained, final"):
        statistic_points(curve, "best")


def test_per_case_dice_is_read_at_the_points_of_the_arms_mean_curve():
    rows = [{"a": 0.5, "b": 0.5}, {"a": 0.9, "b": 0.3}, {"a": 0.6, "b": 0.8}, {"a": 0.7, "b": 0.6}]
    arm = {"curve": [0.5, 0.6, 0.7, 0.65], "curve_per_case": rows}
    assert statistic_per_case(arm, "peak") == rows[2]  # the mean curve's peak, not case a's best point
    assert statistic_per_case(arm, "sustained") == pytest.approx({"a": 0.65, "b": 0.7})
    assert statistic_per_case(arm, "final") == rows[3]
    assert statistic_per_case({"curve": arm["curve"]}, "peak") is None  # results from before curve_per_case
    flat = {"dice": 0.7, "dice_per_case": {"a": 0.6, "b": 0.8}, "seconds": {"total": 10}}
    assert all(statistic_per_case(flat, s) == {"a": 0.6, "b": 0.8} for s in STATISTICS)
    with pytest.raises(ValueError, match="aligned"):
        statistic_per_case({"curve": [0.5, 0.6], "curve_per_case": rows}, "peak")


def _seed(shift, per_case=True, self_training=None):
    base = {f"c{i}": 0.5 + 0.01 * i for i in range(10)}
    rows = [base, {c: d + shift for c, d in base.items()}, {c: d + shift for c, d in base.items()}]

    def arm(rows):
        record = {"curve": [float(np.mean(list(r.values()))) for r in rows]}
        return {**record, "curve_per_case": rows} if per_case else record

    record = {"arms": {"RN-DPO | oracle | top_bottom": arm(rows), "DPO | oracle | top_bottom": arm([base] * 3)}}
    if self_training is not None:
        record["self_training"] = {"tta": {"dice": float(np.mean(list(base.values()))) + self_training,
                                           "dice_per_case": {c: d + self_training for c, d in base.items()}}}
    return record


def test_compare_arms_pairs_the_seeds_that_ran_both_and_reads_self_training_records():
    results = {"seeds": {"0": _seed(0.02, self_training=0.05), "1": _seed(0.01, self_training=0.05),
                         "2": {"arms": {"DPO | oracle | top_bottom": _seed(0.0)["arms"]["DPO | oracle | top_bottom"]}}}}
    result = compare_arms(results, "RN-DPO | oracle | top_bottom", "DPO | oracle | top_bottom", "sustained", 300)
    assert result.seeds == 2 and result.mean == pytest.approx(0.015) and result.held
    versus = compare_arms(results, "RN-DPO | oracle | top_bottom", self_training_arm("tta"), "peak", 300)
    assert versus.per_seed == pytest.approx((-0.03, -0.04)) and versus.same_sign == 2
    assert compare_arms(results, "RN-DPO | oracle | top_bottom", self_training_arm("top_proposal")) is None
    old = {"seeds": {"0": _seed(0.02, per_case=False)}}
    assert compare_arms(old, "RN-DPO | oracle | top_bottom", "DPO | oracle | top_bottom") is None
