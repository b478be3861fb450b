"""The paper's two claims, per judge, from a study's ``results.json``: the numbers each verdict rests on.

The paper (abstract, ../shared/seed/) makes two claims; the study reads them as follows.

Claim 1, mining: "selecting the judge's top-ranked proposal can improve peak performance when the judge is
reliable, but can amplify harmful errors under weaker judges". Read per judge from

- the Δ peak over the base of the ``top_bottom`` arms (the judge's top proposal chosen against its bottom one),
  RN-DPO and DPO, with the number of seeds on which it is above the base, and their worst drop below it;
- ``top_bottom`` − ``top_random`` and ``local`` − ``top_bottom`` at peak, RN-DPO, paired, where the judge has
  both arms (the cpu2 protocols run the minings under the oracle and ``weak62`` only).

Assumption: both ``top_bottom`` and ``top_random`` take the judge's top proposal as the chosen mask, so the
mining differences compare rejected masks; "top pick helps / harms" is the sign of Δ peak over the base.

Claim 2, objective: "RN-DPO improves sustained performance and stabilizes preference-based fine-tuning,
outperforming standard DPO and strong baselines". Read per judge from the paired sustained differences
RN-DPO − DPO and RN-DPO − the strongest baseline (among pseudo-label under the same judge, the continued
supervised control and each self-training model: the one with the highest mean sustained Dice over the seeds
paired with RN-DPO; choosing the hardest opponent on the test set can only make the claim harder to hold).
Its verdict: ``held`` when both differences are held and positive, ``over DPO only`` when only the first is,
``reversed`` when RN-DPO − DPO is held and negative, ``not held`` otherwise. Pure functions, no files.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from nnunetv2_rndpo.comparison import (
    DEFAULT_RESAMPLES,
    PairedDifference,
    compare_arms,
    seed_differences,
    seeds_with_both,
    self_training_arm,
)
from nnunetv2_rndpo.study_protocol import Arm, protocol_arms


def _arm(method: str, judge: str, mining: str = "top_bottom") -> str:
    return Arm(method, "", judge, mining).name


def baselines(results: Mapping, judge: str) -> list[str]:
    """The baseline arms RN-DPO under ``judge`` is compared with: pseudo-label (same judge), the control and
    every self-training model the results hold."""
    control = next(a.name for a in protocol_arms((), False) if a.judge is None)
    self_training = sorted({name for s in results["seeds"].values() for name in s.get("self_training", {})})
    return [_arm("pseudo-label", judge), control, *(self_training_arm(name) for name in self_training)]


def strongest_baseline(results: Mapping, judge: str) -> str | None:
    """The baseline with the highest mean sustained Dice on the seeds it shares with RN-DPO (``top_bottom``):
    the one whose mean RN-DPO − baseline is smallest. None when RN-DPO shares no seed with any."""
    rn_dpo = _arm("RN-DPO", judge)
    paired = {b: np.mean(seed_differences(results, rn_dpo, b)) for b in baselines(results, judge)
              if seeds_with_both(results, rn_dpo, b)}
    return min(paired, key=paired.get) if paired else None


def claim2_verdict(versus_dpo: PairedDifference | None, versus_baseline: PairedDifference | None) -> str:
    """``held``, ``over DPO only``, ``reversed`` or ``not held`` (module docstring); ``–`` without a DPO pair."""
    if versus_dpo is None:
        return "–"
    if versus_dpo.held and versus_dpo.mean < 0:
        return "reversed"
    if not (versus_dpo.held and versus_dpo.mean > 0):
        return "not held"
    beats_baseline = versus_baseline is not None and versus_baseline.held and versus_baseline.mean > 0
    return "held" if beats_baseline else "over DPO only"


def _over_base(results: Mapping, name: str) -> dict | None:
    """Δ peak over the base and worst drop of one arm, per seed that ran it."""
    runs = [s["arms"][name]["summary"] for s in results["seeds"].values() if name in s.get("arms", {})]
    if not runs:
        return None
    return {"delta_peak": [r["delta_peak"] for r in runs], "worst_drop": [r["worst_drop"] for r in runs]}


def judge_claims(results: Mapping, judge: str, resamples: int = DEFAULT_RESAMPLES) -> dict | None:
    """The numbers of both claims under ``judge`` (module docstring); None when it has no RN-DPO arm.

    Returns:
        ``pair_accuracy`` (mean within-case pair accuracy of the judge over seeds, None if unreported),
        ``top_pick`` (per method, ``{"delta_peak", "worst_drop"}`` lists over seeds), ``mining`` (the paired
        peak differences ``top_bottom − top_random`` and ``local − top_bottom`` of RN-DPO, present where run),
        ``versus_dpo``, ``baseline`` (its name), ``versus_baseline`` (paired sustained differences or None) and
        ``claim2`` (the verdict).
    """
    rn_dpo, dpo = _arm("RN-DPO", judge), _arm("DPO", judge)
    if not any(rn_dpo in s.get("arms", {}) for s in results["seeds"].values()):
        return None
    accuracy = [s["judges"][judge].get("pairwise/accuracy") for s in results["seeds"].values()
                if judge in s.get("judges", {})]
    accuracy = [a for a in accuracy if a is not None]
    top_pick = {m: row for m in ("RN-DPO", "DPO") if (row := _over_base(results, _arm(m, judge))) is not None}
    mining = {}
    for label, a, b in (("top_bottom − top_random", rn_dpo, _arm("RN-DPO", judge, "top_random")),
                        ("local − top_bottom", _arm("RN-DPO", judge, "local"), rn_dpo)):
        if seeds_with_both(results, a, b):
            mining[label] = compare_arms(results, a, b, "peak", resamples)
    versus_dpo = compare_arms(results, rn_dpo, dpo, "sustained", resamples) if seeds_with_both(results, rn_dpo, dpo) \
        else None
    baseline = strongest_baseline(results, judge)
    versus_baseline = None if baseline is None else compare_arms(results, rn_dpo, baseline, "sustained", resamples)
    return {"pair_accuracy": float(np.mean(accuracy)) if accuracy else None, "top_pick": top_pick,
            "mining": mining, "versus_dpo": versus_dpo, "baseline": baseline, "versus_baseline": versus_baseline,
            "claim2": claim2_verdict(versus_dpo, versus_baseline)}
