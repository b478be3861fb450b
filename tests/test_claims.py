"""The paper's two claims per judge: the verdict rule and the numbers it is read from, on known results (fast)."""

import numpy as np
import pytest

from nnunetv2_rndpo.claims import claim2_verdict, judge_claims, strongest_baseline
from nnunetv2_rndpo.comparison import PairedDifference, self_training_arm
from nnunetv2_rndpo.metrics import curve_summary
from nnunetv2_rndpo.study_report import _claims_lines

CONTROL = "control (continued supervised)"
BASE = {f"c{i}": 0.5 + 0.01 * i for i in range(12)}


def _arm(gain: float, method: str, judge: str | None, mining: str = "top_bottom", noise: float = 0.0) -> dict:
    """An arm whose curve goes base → base + gain (three points), each case off by ±noise alternately."""
    shifted = {c: d + gain + (noise if i % 2 else -noise) for i, (c, d) in enumerate(BASE.items())}
    rows = [BASE, shifted, shifted]
    curve = [float(np.mean(list(r.values()))) for r in rows]
    return {"method": method, "judge": judge, "mining": mining if judge else None, "curve": curve,
            "curve_per_case": rows, "summary": curve_summary(curve)}


def _seed(gains: dict[str, float], self_training: float | None = None, accuracy: float = 0.8) -> dict:
    arms = {}
    for name, gain in gains.items():
        method, *rest = name.split(" | ")
        judge, mining = (rest + ["top_bottom"])[:2] if rest else (None, None)
        arms[name] = _arm(gain, method, judge, mining or "top_bottom", noise=0.002)
    record = {"arms": arms, "judges": {"oracle": {"pairwise/accuracy": accuracy}}}
    if self_training is not None:
        record["self_training"] = {"tta": {"dice": float(np.mean(list(BASE.values()))) + self_training,
                                           "dice_per_case": {c: d + self_training for c, d in BASE.items()}}}
    return record


def _difference(mean: float, low: float, high: float) -> PairedDifference:
    return PairedDifference("sustained", mean, low, high, (mean,), 10)


def test_claim2_is_held_only_when_rn_dpo_beats_dpo_and_the_strongest_baseline_with_intervals_excluding_zero():
    held, unsure = _difference(0.01, 0.005, 0.015), _difference(0.01, -0.002, 0.02)
    worse = _difference(-0.01, -0.015, -0.005)
    assert claim2_verdict(held, held) == "held"
    assert claim2_verdict(held, unsure) == "over DPO only"
    assert claim2_verdict(held, worse) == "over DPO only"
    assert claim2_verdict(held, None) == "over DPO only"
    assert claim2_verdict(unsure, held) == "not held"
    assert claim2_verdict(worse, held) == "reversed"
    assert claim2_verdict(None, held) == "–"


def test_the_strongest_baseline_is_the_one_rn_dpo_leads_least_on_the_seeds_they_share():
    gains = {"RN-DPO | oracle | top_bottom": 0.03, "DPO | oracle | top_bottom": 0.01,
             "pseudo-label | oracle | top_bottom": 0.02, CONTROL: 0.005}
    results = {"seeds": {"0": _seed(gains, self_training=0.025), "1": _seed(gains, self_training=0.025)}}
    assert strongest_baseline(results, "oracle") == self_training_arm("tta")
    results = {"seeds": {"0": _seed(gains), "1": _seed(gains)}}
    assert strongest_baseline(results, "oracle") == "pseudo-label | oracle | top_bottom"
    assert strongest_baseline(results, "agreement") is None


def test_judge_claims_reads_both_claims_from_the_arms_the_judge_has():
    gains = {"RN-DPO | oracle | top_bottom": 0.03, "DPO | oracle | top_bottom": 0.01,
             "RN-DPO | oracle | top_random": 0.02, CONTROL: 0.005}
    results = {"seeds": {"0": _seed(gains, accuracy=0.9), "1": _seed(gains, accuracy=0.7)}}
    claims = judge_claims(results, "oracle", resamples=200)
    assert claims["pair_accuracy"] == pytest.approx(0.8)
    assert claims["top_pick"]["RN-DPO"]["delta_peak"] == pytest.approx([0.03, 0.03])
    assert claims["top_pick"]["DPO"]["worst_drop"] == pytest.approx([-0.01, -0.01])
    assert list(claims["mining"]) == ["top_bottom − top_random"]  # no local arm: no local difference
    assert claims["mining"]["top_bottom − top_random"].mean == pytest.approx(0.01)
    assert claims["versus_dpo"].mean == pytest.approx(0.02) and claims["versus_dpo"].held
    assert claims["baseline"] == CONTROL and claims["versus_baseline"].mean == pytest.approx(0.025)
    assert claims["claim2"] == "held"
    assert judge_claims(results, "agreement") is None  # no RN-DPO arm under that judge


def test_rn_dpo_behind_dpo_reads_reversed_and_the_report_says_so():
    gains = {"RN-DPO | weak62 | top_bottom": -0.01, "DPO | weak62 | top_bottom": 0.01, CONTROL: 0.0}
    results = {"seeds": {"0": _seed(gains), "1": _seed(gains)}, "protocol": {"protocol_round": 2}}
    assert judge_claims(results, "weak62", resamples=200)["claim2"] == "reversed"
    lines = _claims_lines(results, 200)
    row = next(line for line in lines if line.startswith("| weak62 |"))
    assert row.endswith("| reversed |") and "-0.0200 [" in row and "-0.0100 (0/2) / +0.0100 (2/2)" in row
